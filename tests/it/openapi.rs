//! API fuzzing with schemathesis (from PyPI, pinned; `scripts/services` installs it into
//! `~/.cache/vbin/schemathesis`) against the live server's `GET /openapi.json`: generated
//! requests for every operation, valid and invalid (boundary values, wrong types, missing
//! fields, odd strings), checked for server errors (no 5xx), status codes the document lists,
//! content types and response bodies matching the document's schemas.
//!
//! The suite runs a short version (`VBIN_SCHEMATHESIS_EXAMPLES`, default 40 generated cases
//! per operation and phase, about a minute); a long one is the same test with a larger number,
//! see docs/reliability.md. `VBIN_SCHEMATHESIS_SEED` (default fixed) picks other cases,
//! `VBIN_SCHEMATHESIS_PHASES` and `VBIN_SCHEMATHESIS_CHECKS` override schemathesis' `--phases`
//! and `--checks`.

use crate::support::{cache_dir, id_of, Env};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where `scripts/services` installs schemathesis.
fn schemathesis() -> PathBuf {
    let bin = cache_dir().join("schemathesis/bin/schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/services (it installs the pinned schemathesis)",
        bin.display()
    );
    bin
}

/// Every part but media (no AudioSocket needed) and webhooks: the fuzzer sets random webhook
/// URIs, and nothing may be sent to them.
const PARTS: [&str; 7] = [
    "command-api",
    "query-api",
    "relay",
    "projections",
    "carrier",
    "process-managers",
    "gateway",
];

/// The document, as every HTTP process serves it.
#[tokio::test]
async fn openapi_json_is_served_and_every_documented_operation_is_routed() {
    let env = Env::start().await;
    let r = env.http.get(env.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let spec: Value = r.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.0"));
    // Without credentials every documented operation reaches a handler or the authentication
    // check: none is the router's "route not found" or a 405.
    for (path, item) in spec["paths"].as_object().unwrap() {
        let path = path.replace("{id}", "0190b7a0-0000-7000-8000-000000000000");
        for method in item.as_object().unwrap().keys() {
            let m: reqwest::Method = method.to_uppercase().parse().unwrap();
            let (s, v) = env.req(m.clone(), &path, None, None).await;
            assert!(
                s != 405 && v["error"]["message"] != "route not found",
                "{m} {path}: {s} {v}"
            );
        }
    }
    // A process running only the query API serves it too.
    let query = env.spawn_platform_only(&["query-api"]).await;
    let r = env
        .http
        .get(format!("{}/openapi.json", query.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), spec);
}

/// Real ids for the id-taking operations: schemathesis uses them for half of its cases, so the
/// success paths are exercised, not only 404s.
struct Fixtures {
    /// Operation ids and the ids their `{id}` may take.
    paths: Vec<(&'static [&'static str], Vec<String>)>,
    /// (operation id, parameter as schemathesis names it, the ids it may take).
    fields: Vec<(&'static str, &'static str, Vec<String>)>,
}

async fn fixtures(env: &Env, tok: &str, customer: &str) -> Fixtures {
    let api = env.client(tok);
    let talking = api.answered_call("+15550007000", 3600).await.to_string();
    let ended = env.calls(tok, &["+15550000486"], json!({})).await[0].to_string();
    let agent = id_of(
        &api.create(
            "/v1.0/agents",
            json!({"username": format!("fx{}", &customer[..8]), "password": "password123"}),
        )
        .await,
    );
    let key = id_of(&api.create("/v1.0/accesskeys", json!({"name": "k"})).await);
    let plan = id_of(
        &api.create(
            "/v1.0/outplans",
            json!({"name": "p", "source": "+15550001000"}),
        )
        .await,
    );
    let outdial = id_of(&api.create("/v1.0/outdials", json!({"name": "o"})).await);
    api.create(
        &format!("/v1.0/outdials/{outdial}/targets"),
        json!({"destinations": ["+15550002000"]}),
    )
    .await;
    let campaign = id_of(
        &api.create(
            "/v1.0/campaigns",
            json!({"outplan_id": plan, "outdial_id": outdial}),
        )
        .await,
    );
    let queue = id_of(
        &api.create("/v1.0/queues", json!({"name": "q", "agent_ids": [agent]}))
            .await,
    );
    let transcribe = id_of(
        &api.create(
            "/v1.0/transcribes",
            json!({"reference_type": "call", "reference_id": talking, "language": "en-US",
                   "direction": "in"}),
        )
        .await,
    );
    // The reads are eventually consistent: wait until the read models have them.
    for path in [
        format!("/v1.0/calls/{talking}"),
        format!("/v1.0/calls/{ended}"),
        format!("/v1.0/agents/{agent}"),
        format!("/v1.0/accesskeys/{key}"),
        format!("/v1.0/outplans/{plan}"),
        format!("/v1.0/outdials/{outdial}"),
        format!("/v1.0/campaigns/{campaign}"),
        format!("/v1.0/queues/{queue}"),
        format!("/v1.0/transcribes/{transcribe}"),
        "/v1.0/customer".to_string(),
        "/v1.0/billing_account".to_string(),
    ] {
        api.wait_found(&path, Duration::from_secs(20)).await;
    }
    let calls = vec![talking, ended];
    Fixtures {
        paths: vec![
            (&["getCall", "hangupCall"], calls.clone()),
            (
                &["getAgent", "updateAgent", "setAgentStatus", "deleteAgent"],
                vec![agent.clone()],
            ),
            (&["getAccessKey", "deleteAccessKey"], vec![key]),
            (&["getOutplan"], vec![plan.clone()]),
            (
                &["getOutdial", "listTargets", "createTarget"],
                vec![outdial.clone()],
            ),
            (
                &["getCampaign", "setCampaignStatus"],
                vec![campaign.clone()],
            ),
            (
                &["getQueue", "updateQueue", "joinQueue"],
                vec![queue.clone()],
            ),
            (
                &["getTranscribe", "stopTranscribe"],
                vec![transcribe.clone()],
            ),
            (&["addBalance", "setRate"], vec![customer.to_string()]),
        ],
        fields: vec![
            ("joinQueue", "body.call_id", calls.clone()),
            ("createTranscribe", "body.reference_id", calls.clone()),
            ("listBillings", "query.reference_id", calls.clone()),
            ("createCampaign", "body.outplan_id", vec![plan]),
            ("createCampaign", "body.outdial_id", vec![outdial.clone()]),
            ("createCampaign", "body.queue_id", vec![queue.clone()]),
            (
                "createCampaign",
                "body.next_campaign_id",
                vec![campaign.clone()],
            ),
            ("createQueue", "body.agent_ids[*]", vec![agent.clone()]),
            ("updateQueue", "body.agent_ids[*]", vec![agent]),
            ("listCampaigncalls", "query.campaign_id", vec![campaign]),
            ("listQueuecalls", "query.queue_id", vec![queue]),
            ("listTranscripts", "query.transcribe_id", vec![transcribe]),
            ("listTargets", "path.id", vec![outdial]),
        ],
    }
}

fn toml_list(v: &[String]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The schemathesis configuration: the bearer and the real ids.
fn config(bearer: &str, fx: &Fixtures) -> String {
    let mut c = format!("[auth.openapi.bearerAuth]\nbearer = {bearer:?}\n\n");
    let mut n = 0;
    let mut bind = |c: &mut String, ops: &[&str], param: &str, ids: &[String]| {
        n += 1;
        *c += &format!("[dictionaries.ids{n}]\nvalues = {}\n\n", toml_list(ids));
        let ops: Vec<String> = ops.iter().map(|s| s.to_string()).collect();
        *c += &format!(
            "[[operations]]\ninclude-operation-id = {}\nparameters = {{ {param:?} = {{ dictionary = \"ids{n}\", probability = 0.5 }} }}\n\n",
            toml_list(&ops)
        );
    };
    for (ops, ids) in &fx.paths {
        bind(&mut c, ops, "path.id", ids);
    }
    for (op, param, ids) in &fx.fields {
        bind(&mut c, &[op], param, ids);
    }
    c
}

struct Run {
    ok: bool,
    output: String,
    took: Duration,
}

/// Runs schemathesis against the live document with `bearer`, limited to `operations` (ids;
/// empty: all but `exclude`).
fn run_schemathesis(
    env: &Env,
    dir: &std::path::Path,
    name: &str,
    cfg: &str,
    operations: &[&str],
    exclude: &[&str],
) -> Run {
    let examples = std::env::var("VBIN_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("VBIN_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20240601".into());
    let phases = std::env::var("VBIN_SCHEMATHESIS_PHASES")
        .unwrap_or_else(|_| "examples,coverage,fuzzing,stateful".into());
    let checks = std::env::var("VBIN_SCHEMATHESIS_CHECKS").unwrap_or_else(|_| {
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance".into()
    });
    let cfg_path = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut cmd = Command::new(schemathesis());
    cmd.current_dir(dir)
        .arg("--config-file")
        .arg(&cfg_path)
        .arg("--no-color")
        .arg("run")
        .arg(env.url("/openapi.json"))
        .args([
            "--checks",
            &checks,
            "--phases",
            &phases,
            // One worker: CPython 3.11's ast module is not thread-safe, and hypothesis uses it.
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--generation-database",
            "none",
            "--output-truncate",
            "false",
        ]);
    for op in operations {
        cmd.args(["--include-operation-id", op]);
    }
    for op in exclude {
        cmd.args(["--exclude-operation-id", op]);
    }
    let started = Instant::now();
    let out = cmd.output().expect("running schemathesis");
    Run {
        ok: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        took: started.elapsed(),
    }
}

/// The platform-admin operations.
const ADMIN_OPS: [&str; 3] = ["createCustomer", "addBalance", "setRate"];
/// Not fuzzed with the customer's token: the platform admin's operations (their own run) and
/// the WebSocket upgrade (plain HTTP requests can only get its 400; tests/it/gateway.rs covers it).
const EXCLUDED: [&str; 4] = ["createCustomer", "addBalance", "setRate", "websocket"];

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let bin = schemathesis();
    let mut env = Env::start().await;
    env.platform.kill();
    env.platform = env.spawn_platform_only(&PARTS).await;
    let (customer, tok, _) = env.customer().await;
    let fx = fixtures(&env, &tok, &customer.to_string()).await;
    let dir = std::env::temp_dir().join(format!("{}-schemathesis", env.db_name));
    std::fs::create_dir_all(&dir).unwrap();
    println!("schemathesis: {}", bin.display());

    // A customer admin's JWT on every operation but the platform admin's; then the admin token
    // on those.
    let runs = [
        run_schemathesis(&env, &dir, "customer", &config(&tok, &fx), &[], &EXCLUDED),
        run_schemathesis(
            &env,
            &dir,
            "admin",
            &config(&env.admin, &fx),
            &ADMIN_OPS,
            &[],
        ),
    ];
    let mut failed = Vec::new();
    for (name, run) in ["customer", "admin"].iter().zip(&runs) {
        // The whole report (shown by the test runner on failure or with --no-capture).
        println!(
            "--- schemathesis ({name} token) took {:.0?} ---\n{}",
            run.took, run.output
        );
        if !run.ok {
            failed.push(format!(
                "--- schemathesis ({name} token) ---\n{}",
                run.output
            ));
        }
    }
    let log = std::fs::read_to_string(env.platform.log_path()).unwrap_or_default();
    assert!(
        !log.contains("panicked"),
        "the server panicked; log {}",
        env.platform.log_path().display()
    );
    assert!(
        failed.is_empty(),
        "schemathesis failed (server log {}):\n{}",
        env.platform.log_path().display(),
        failed.join("\n")
    );
    let (s, v) = env.client(&tok).get("/readyz").await;
    assert_eq!(s, 200, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
