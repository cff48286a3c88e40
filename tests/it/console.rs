//! The web console in a real browser: Debian's Chromium, headless, driven over WebDriver
//! (ChromeDriver), against the real binary, Postgres, NATS and Redis. Each test works through
//! the pages as a person would (typing, clicking, reading what is shown) and checks what the
//! API then holds.

use crate::support::{free_port, id_of, wait_until, Env};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The login page's operator form.
const OPERATOR: &str = "form[aria-label='Operator login']";

/// A headless Chromium behind its own ChromeDriver.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Self {
        assert!(
            std::path::Path::new("/usr/bin/chromedriver").exists(),
            "chromium and chromium-driver must be installed (scripts/services installs them)"
        );
        let port = free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--autoplay-policy=no-user-gesture-required"]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = wait_until(
            "chromedriver to take a session",
            Duration::from_secs(20),
            || {
                let caps = caps.clone();
                let url = url.clone();
                async move {
                    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                    ClientBuilder::new(connector)
                        .capabilities(caps)
                        .connect(&url)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
        Browser { client, driver }
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("script runs")
    }

    /// Waits until `script` returns something truthy; returns it.
    async fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        wait_until(what, Duration::from_secs(20), || {
            let args = args.clone();
            async move {
                let v = self.js(script, args).await;
                match &v {
                    Value::Null | Value::Bool(false) => Err(v),
                    Value::String(s) if s.is_empty() => Err(v),
                    _ => Ok(v),
                }
            }
        })
        .await
    }

    /// Waits for an element matching `css`.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// Clicks the button or link whose text is `text` (within `scope`).
    async fn press(&self, scope: &str, text: &str) {
        let found = self
            .until(
                &format!("a control {text:?} in {scope}"),
                "const [scope, text] = arguments; \
                 const el = [...document.querySelectorAll(`${scope} button, ${scope} a`)] \
                   .find(e => e.textContent.trim() === text && !e.disabled && !e.hidden); \
                 if (!el) return null; el.click(); return true;",
                vec![json!(scope), json!(text)],
            )
            .await;
        assert_eq!(found, json!(true));
    }

    /// The text of `css` once it contains `want`.
    async fn text_with(&self, css: &str, want: &str) -> String {
        self.until(
            &format!("{css} to show {want:?}"),
            "const el = document.querySelector(arguments[0]); \
             return el && el.textContent.includes(arguments[1]) ? el.textContent : null;",
            vec![json!(css), json!(want)],
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
    }

    /// Submits the login page's operator form (behind its disclosure) with `token`.
    async fn operator_login(&self, token: &str) {
        self.js("document.querySelector('details').open = true;", vec![])
            .await;
        self.type_into(&format!("{OPERATOR} input[name=token]"), token)
            .await;
        self.press(OPERATOR, "Log in as operator").await;
    }

    async fn login(&self, env: &Env, username: &str) {
        self.client.goto(&env.url("/console/")).await.unwrap();
        self.type_into("input[name=username]", username).await;
        self.type_into("input[name=password]", "password123").await;
        self.press("main form", "Log in").await;
        self.text_with("main h1", "Dashboard").await;
    }
}

#[tokio::test]
async fn a_call_placed_in_the_console_is_watched_live_and_its_recording_played() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let flow = env
        .client(&tok)
        .create(
            "/v1.0/flows",
            json!({"name": "greeting", "actions": [
                {"type": "recording_start", "option": {"beep_start": false}},
                {"type": "talk", "option": {"text": "thank you for calling", "language": "en-US"}}
            ]}),
        )
        .await;
    let flow_id = flow["id"].as_str().unwrap().to_string();
    let b = Browser::start().await;
    b.login(&env, &user).await;
    b.press("nav", "Calls").await;
    b.text_with("main h1", "Calls").await;
    // Every status a call row shows is noted, in order, by the page itself: a reload would
    // lose the notes.
    b.js(
        "window.seen = []; \
         new MutationObserver(() => { \
           for (const s of document.querySelectorAll('#calls [data-status]')) { \
             const last = window.seen[window.seen.length - 1]; \
             if (last !== s.dataset.status) window.seen.push(s.dataset.status); } \
         }).observe(document.getElementById('calls'), {subtree: true, childList: true});",
        vec![],
    )
    .await;
    // The API's error envelope is shown at the form.
    b.type_into("input[name=source]", "not-a-number").await;
    b.type_into("input[name=destinations]", "+15550007001")
        .await;
    b.press("form[aria-label='Place a call']", "Place call")
        .await;
    let err = b
        .text_with("form[aria-label='Place a call'] .error", "source")
        .await;
    assert!(err.contains("E.164") || err.contains("source"), "{err}");
    b.type_into("input[name=source]", "+15550001000").await;
    b.find("select[name=flow_id]")
        .await
        .select_by_value(&flow_id)
        .await
        .unwrap();
    b.press("form[aria-label='Place a call']", "Place call")
        .await;
    b.text_with("#calls [data-status='completed']", "completed")
        .await;
    let seen = b.js("return window.seen;", vec![]).await;
    let seen: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let order: Vec<&str> = ["ringing", "progressing", "completed"]
        .into_iter()
        .filter(|s| seen.contains(s))
        .collect();
    assert_eq!(order, ["ringing", "progressing", "completed"], "{seen:?}");
    let at = |s: &str| seen.iter().position(|x| *x == s).unwrap();
    assert!(
        at("ringing") < at("progressing") && at("progressing") < at("completed"),
        "{seen:?}"
    );

    // Its page: the timeline from the audit log, the recording played in the page.
    b.click("#calls tbody a").await;
    b.text_with("#call", "completed").await;
    let timeline = b.text_with("#timeline", "call_hungup").await;
    for e in [
        "call_created",
        "call_ringing",
        "call_progressing",
        "call_hungup",
    ] {
        assert!(timeline.contains(e), "{timeline}");
    }
    b.press("#recordings", "Load audio").await;
    let seconds = b
        .until(
            "the recording to load in the player",
            "const a = document.querySelector('#recordings audio'); \
             return a && a.readyState >= 1 && a.src.startsWith('blob:') ? a.duration : null;",
            vec![],
        )
        .await;
    assert!(seconds.as_f64().unwrap() > 0.5, "{seconds}");
    let executed = b.text_with("#executed", "talk").await;
    assert!(executed.contains("recording_start"), "{executed}");
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn a_flow_with_a_bad_action_shows_the_error_at_that_action() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let b = Browser::start().await;
    b.login(&env, &user).await;
    b.press("nav", "Flows").await;
    b.press("main", "New flow").await;
    b.type_into("input[name=name]", "menu").await;
    // The second action becomes a play without the URLs it needs.
    b.find("select[name=type-1]")
        .await
        .select_by_value("play")
        .await
        .unwrap();
    b.type_into("textarea[name=option-1]", "{}").await;
    b.press("main", "Save flow").await;
    let err = b
        .text_with("li.action.invalid[data-index='1'] .error", "")
        .await;
    assert!(err.contains("stream_urls"), "{err}");
    // The first action is not marked.
    let marked = b
        .js(
            "return document.querySelectorAll('li.action.invalid').length;",
            vec![],
        )
        .await;
    assert_eq!(marked, json!(1));
    // Invalid JSON is caught at its action before asking the API.
    b.type_into("textarea[name=option-1]", "{oops").await;
    b.press("main", "Save flow").await;
    b.text_with("li.action.invalid[data-index='1'] .error", "JSON")
        .await;
    // Fixed, it saves and the API holds it.
    b.type_into(
        "textarea[name=option-1]",
        r#"{"stream_urls": ["https://example.com/a.wav"]}"#,
    )
    .await;
    b.press("main", "Save flow").await;
    b.text_with("#flash", "Flow saved").await;
    let flows = env
        .client(&tok)
        .wait_get("/v1.0/flows", Duration::from_secs(10), |_, v| {
            v["result"][0]["name"] == "menu"
        })
        .await;
    assert_eq!(flows["result"][0]["actions"][1]["type"], "play", "{flows}");
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn webhook_secrets_rotate_failed_deliveries_are_retried_and_other_customers_see_none_of_it() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let api = env.client(&tok);
    let b = Browser::start().await;
    b.login(&env, &user).await;
    b.press("nav", "Webhooks").await;
    // Loopback but not allowed: every delivery fails at once.
    b.type_into("input[name=webhook_uri]", "http://127.0.0.2:9/hook")
        .await;
    b.press("main form", "Save settings").await;
    b.text_with("#flash", "saved").await;
    let me = api
        .wait_get("/v1.0/customer", Duration::from_secs(10), |_, v| {
            v["webhook_uri"] == "http://127.0.0.2:9/hook"
        })
        .await;
    let before = me["webhook_secret"].as_str().unwrap().to_string();
    // The secret is hidden until asked for.
    let hidden = b.text_with("#webhook-secret", "•").await;
    assert!(!hidden.contains(&before));
    b.press("main", "Show secret").await;
    b.text_with("#webhook-secret", &before).await;
    b.press("main", "Rotate secret").await;
    b.press("main", "Yes, rotate it").await;
    b.text_with("#flash", "rotated").await;
    let me = api
        .wait_get("/v1.0/customer", Duration::from_secs(10), |_, v| {
            v["webhook_secret"] != before.as_str()
        })
        .await;
    let after = me["webhook_secret"].as_str().unwrap().to_string();
    b.text_with("#webhook-secret", &after).await;

    // Something to deliver, which fails; retried from the list.
    api.create(
        "/v1.0/flows",
        json!({"name": "x", "actions": [{"type": "answer"}]}),
    )
    .await;
    wait_until("a failed delivery", Duration::from_secs(20), || async {
        let (_, v) = api.get("/v1.0/webhook_deliveries?status=failed").await;
        v["result"]
            .as_array()
            .filter(|r| !r.is_empty())
            .map(|_| ())
            .ok_or(v)
    })
    .await;
    b.find("select[name=status]")
        .await
        .select_by_value("failed")
        .await
        .unwrap();
    b.press("#deliveries", "Retry").await;
    b.text_with("#flash", "retried").await;
    let (_, pending) = api.get("/v1.0/webhook_deliveries?status=pending").await;
    let (_, failed) = api.get("/v1.0/webhook_deliveries?status=failed").await;
    assert!(
        !pending["result"].as_array().unwrap().is_empty()
            || failed["result"][0]["attempts"].as_i64() > Some(1),
        "the retried delivery was sent again: {pending} {failed}"
    );

    // Another customer, in the same browser after logging out, sees none of it.
    let (_, _, other) = env.customer().await;
    b.press("header", "Log out").await;
    b.text_with("main", "logged out").await;
    b.login(&env, &other).await;
    b.press("nav", "Webhooks").await;
    b.text_with("#deliveries", "No deliveries").await;
    b.press("nav", "Calls").await;
    b.text_with("#calls", "No calls").await;
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn a_revoked_session_goes_back_to_the_login_page_with_a_message() {
    let env = Env::start().await;
    let (_, tok, _) = env.customer().await;
    let api = env.client(&tok);
    let user = format!("a{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (s, agent) = api.create_agent(&user, "password123", json!({})).await;
    assert_eq!(s, 200, "{agent}");
    let b = Browser::start().await;
    b.login(&env, &user).await;
    let (s, _) = api.delete_agent(agent["id"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    // The next request the console makes is refused: the login page says why.
    wait_until(
        "the console to return to its login page",
        Duration::from_secs(20),
        || async {
            // Navigate (each page load makes a request) until the console is at its login
            // page; then only look: the message is shown once, and navigating away from the
            // login page would render it again without the message (a 401 slower than the
            // look below made this test flaky).
            let _ = b
                .js(
                    "if (location.hash !== '#/login') \
                     location.hash = location.hash === '#/calls' ? '#/flows' : '#/calls';",
                    vec![],
                )
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let main = b
                .js("return document.querySelector('main').textContent;", vec![])
                .await;
            main.as_str()
                .is_some_and(|t| t.contains("expired or was revoked"))
        },
    )
    .await;
    assert_eq!(
        b.client.current_url().await.unwrap().fragment(),
        Some("/login")
    );
    // Shown again before the next login (here: a page asked for while logged out, as a
    // navigation under way when the session expired does), the login page still says why.
    b.js("location.hash = '#/calls';", vec![]).await;
    wait_until(
        "the login page to be shown again with its message",
        Duration::from_secs(10),
        || async {
            let at_login = b.js("return location.hash;", vec![]).await == json!("#/login");
            let main = b
                .js("return document.querySelector('main').textContent;", vec![])
                .await;
            at_login
                && main
                    .as_str()
                    .is_some_and(|t| t.contains("expired or was revoked"))
        },
    )
    .await;
    b.client.clone().close().await.unwrap();
}

/// Every page renders for a customer with some traffic, without an error; with
/// `VBIN_CONSOLE_SCREENSHOTS=<dir>` each is saved there as a PNG (docs/console.md's pictures:
/// `VBIN_CONSOLE_SCREENSHOTS=$PWD/docs/console cargo nextest run --workspace -E 'binary(it) &
/// test(/console::every_page/)'`), the dashboard also at a phone's width.
#[tokio::test]
async fn every_page_renders_and_can_be_pictured() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let api = env.client(&tok);
    let flow = api
        .create(
            "/v1.0/flows",
            json!({"name": "greeting", "actions": [
                {"type": "recording_start", "option": {"beep_start": false}},
                {"type": "talk", "option": {"text": "thank you for calling", "language": "en-US"}}
            ]}),
        )
        .await;
    let calls = env
        .calls(
            &tok,
            &["+15550007001", "+15550000486"],
            json!({"flow_id": flow["id"]}),
        )
        .await;
    for c in &calls {
        env.wait_call_end(*c, Duration::from_secs(20)).await;
    }
    api.create("/v1.0/accesskeys", json!({"name": "ci"})).await;
    api.create("/v1.0/conferences", json!({"name": "standup"}))
        .await;
    api.create(
        "/v1.0/trunks",
        json!({"name": "carrier", "host": "sip.carrier.example", "username": "acme", "password": "s3cret"}),
    )
    .await;
    let dir = std::env::var_os("VBIN_CONSOLE_SCREENSHOTS").map(std::path::PathBuf::from);
    if let Some(d) = &dir {
        std::fs::create_dir_all(d).unwrap();
    }
    let b = Browser::start().await;
    let shoot = |name: &'static str| {
        let b = &b;
        let dir = dir.clone();
        async move {
            // Settled: no request in flight.
            b.until(
                "the page to settle",
                "return document.getElementById('progress').hidden;",
                vec![],
            )
            .await;
            let errors = b
                .js(
                    "return [...document.querySelectorAll('main .error')].map(e => e.textContent.trim()).filter(Boolean).join(' ');",
                    vec![],
                )
                .await;
            assert_eq!(errors, json!(""), "{name} shows an error");
            // Nothing the page built from data shows as a programming artefact.
            let artefact = b
                .js(
                    "const m = /\\b(null|undefined|NaN)\\b|\\[object Object\\]/.exec(document.querySelector('main').textContent); return m ? m[0] : '';",
                    vec![],
                )
                .await;
            assert_eq!(artefact, json!(""), "{name} shows a programming artefact");
            // Every control is labelled (a label, aria-label, or a button's own text).
            let unlabelled = b
                .js(
                    "return [...document.querySelectorAll('main input, main select, main textarea, main button')] \
                       .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.closest('label') || \
                                      (e.tagName === 'BUTTON' && e.textContent.trim()))) \
                       .map(e => e.outerHTML.slice(0, 80));",
                    vec![],
                )
                .await;
            assert_eq!(unlabelled, json!([]), "{name} has unlabelled controls");
            if let Some(d) = dir {
                let png = b.client.screenshot().await.unwrap();
                std::fs::write(d.join(format!("{name}.png")), png).unwrap();
            }
        }
    };
    b.client.goto(&env.url("/console/")).await.unwrap();
    b.find("input[name=username]").await;
    shoot("login").await;
    b.login(&env, &user).await;
    b.text_with("#live-calls", "No live calls").await;
    shoot("dashboard").await;
    b.press("nav", "Calls").await;
    b.text_with("#calls", "completed").await;
    shoot("calls").await;
    // The status filter asks the API (which filters every page).
    let busy = api
        .wait_get(
            "/v1.0/calls?status=busy",
            Duration::from_secs(10),
            |_, v| v["result"].as_array().is_some_and(|r| r.len() == 1),
        )
        .await;
    assert_eq!(busy["result"][0]["id"], calls[1].to_string(), "{busy}");
    let (s, v) = api.get("/v1.0/calls?status=nope").await;
    assert_eq!(s, 400, "{v}");
    b.find("select[name=status]")
        .await
        .select_by_value("busy")
        .await
        .unwrap();
    b.until(
        "only the busy call to be listed",
        "const s = [...document.querySelectorAll('#calls [data-status]')].map(e => e.dataset.status); \
         return s.length === 1 && s[0] === 'busy';",
        vec![],
    )
    .await;
    b.find("select[name=status]")
        .await
        .select_by_value("")
        .await
        .unwrap();
    b.text_with("#calls", "completed").await;
    b.js(&format!("location.hash = '#/calls/{}';", calls[0]), vec![])
        .await;
    b.text_with("#timeline", "call_hungup").await;
    b.press("#recordings", "Load audio").await;
    b.find("#recordings audio").await;
    shoot("call").await;
    b.press("nav", "Flows").await;
    b.text_with("main table", "greeting").await;
    shoot("flows").await;
    b.press("main table", "greeting").await;
    b.find("li.action").await;
    shoot("flow-editor").await;
    b.press("nav", "Access keys").await;
    b.text_with("#accesskeys", "ci").await;
    shoot("access-keys").await;
    // (link, what the page shows once loaded, picture)
    for (link, shown, name) in [
        ("Campaigns", "#campaign-list", "campaigns"),
        ("Webhooks", "#deliveries", "webhooks"),
        ("Queues", "#queue-list", "queues"),
        ("Conferences", "#conference-list table", "conferences"),
        ("Numbers", "#number-list", "numbers"),
        ("Trunks", "#trunk-list table", "trunks"),
        ("AI", "#ai-list", "ais"),
    ] {
        b.press("nav", link).await;
        b.find(shown).await;
        shoot(name).await;
    }
    b.press("nav", "Dashboard").await;
    b.text_with("main h1", "Dashboard").await;
    b.client.set_window_size(390, 844).await.unwrap();
    shoot("dashboard-phone").await;
    b.client.set_window_size(1280, 1000).await.unwrap();
    b.press("header", "Log out").await;
    b.operator_login(&env.admin).await;
    b.text_with("#customers", "acme").await;
    shoot("operator-customers").await;
    b.press("nav", "Platform").await;
    b.text_with("main", "Projections").await;
    shoot("operator-platform").await;
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn targets_upload_from_csv_with_an_error_per_bad_row_and_a_campaign_runs_live() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let b = Browser::start().await;
    b.login(&env, &user).await;
    b.press("nav", "Campaigns").await;
    b.text_with("main h1", "Campaigns").await;
    let plan = "form[aria-label='New outplan']";
    b.type_into(&format!("{plan} input[name=name]"), "plan")
        .await;
    b.type_into(&format!("{plan} input[name=source]"), "+15550001000")
        .await;
    b.press(plan, "Create outplan").await;
    b.text_with("#flash", "Outplan created").await;
    let dial = "form[aria-label='New outdial']";
    b.type_into(&format!("{dial} input[name=name]"), "list")
        .await;
    b.press(dial, "Create outdial").await;
    b.text_with("main h1", "Outdial list").await;

    // Three rows, the second one's number is not E.164.
    let csv = std::env::temp_dir().join(format!("vbin-targets-{}.csv", uuid::Uuid::new_v4()));
    std::fs::write(
        &csv,
        "destination,name\r\n+15550007101,ann\r\nnot-a-number,\"bob, jr\"\r\n+15550007102,cy\r\n",
    )
    .unwrap();
    b.find("input[type=file]")
        .await
        .send_keys(csv.to_str().unwrap())
        .await
        .unwrap();
    b.press("form[aria-label='Upload targets']", "Upload targets")
        .await;
    b.text_with("#upload-report", "2 target(s) added, 1 row(s) refused")
        .await;
    let bad = b
        .text_with("#upload-report li[data-line='3']", "Line 3")
        .await;
    assert!(
        bad.contains("not-a-number") || bad.contains("E.164"),
        "{bad}"
    );
    let targets = b.text_with("#targets", "+15550007102").await;
    assert!(
        targets.contains("name=ann") && targets.contains("+15550007101"),
        "{targets}"
    );
    let _ = std::fs::remove_file(&csv);

    // A campaign over them, started here; its counters move on the page.
    b.press("main", "All campaigns").await;
    let new = "form[aria-label='New campaign']";
    b.find(&format!("{new} input[name=name]")).await;
    b.type_into(&format!("{new} input[name=name]"), "spring")
        .await;
    for select in ["outplan_id", "outdial_id"] {
        b.js(
            &format!(
                "const s = document.querySelector(\"{new} select[name={select}]\"); \
                 s.selectedIndex = 1; s.dispatchEvent(new Event('change'));"
            ),
            vec![],
        )
        .await;
    }
    b.press(new, "Create campaign").await;
    b.text_with("#campaign-list", "spring").await;
    b.press("#campaign-list", "Start").await;
    b.text_with("#campaign-list [data-counter='dialed']", "2")
        .await;
    b.text_with("#campaign-list [data-counter='answered']", "2")
        .await;
    let (_, cs) = env.client(&tok).get("/v1.0/campaigns").await;
    assert_eq!(cs["result"][0]["total_targets"], 2, "{cs}");
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn the_operator_sees_customers_tops_one_up_and_sees_the_platforms_health() {
    let env = Env::start().await;
    let (customer, tok, _) = env.customer().await;
    let b = Browser::start().await;
    b.client.goto(&env.url("/console/")).await.unwrap();
    b.find("input[name=username]").await;
    // A customer's token is not an admin token.
    b.operator_login(&tok).await;
    b.text_with(
        &format!("{OPERATOR} .error"),
        "not the platform's admin token",
    )
    .await;
    b.operator_login(&env.admin).await;
    b.text_with("main h1", "Customers").await;
    let balance = format!("[data-balance='{customer}']");
    b.text_with(&balance, "$100.00").await;
    let top_up = format!("#customers tr[data-id='{customer}'] form");
    b.type_into(&format!("{top_up} input[name=amount]"), "2.5")
        .await;
    b.press(&format!("#customers tr[data-id='{customer}']"), "Add")
        .await;
    b.text_with("#flash", "Added $2.50").await;
    b.text_with(&balance, "$102.50").await;
    let account = env
        .client(&tok)
        .wait_get("/v1.0/billing_account", Duration::from_secs(10), |_, v| {
            v["balance_micros"] == 102_500_000
        })
        .await;
    assert_eq!(account["balance_micros"], 102_500_000);
    // A bad amount is explained, and nothing is added.
    b.type_into(&format!("{top_up} input[name=amount]"), "ten")
        .await;
    b.press(&format!("#customers tr[data-id='{customer}']"), "Add")
        .await;
    b.text_with("#flash", "Enter an amount").await;

    b.press("nav", "Platform").await;
    b.text_with("#readiness", "postgres").await;
    let ready = b
        .js(
            "return [...document.querySelectorAll('#readiness .status')].map(s => s.textContent);",
            vec![],
        )
        .await;
    assert_eq!(ready, json!(["up", "up", "up"]));
    b.text_with("main", "Projections").await;
    let behind = b
        .js(
            "return document.querySelectorAll('[data-position]').length;",
            vec![],
        )
        .await;
    assert!(behind.as_i64() >= Some(1), "{behind}");
    let relays = b
        .js(
            "return document.querySelectorAll('table[aria-label=\"Relay positions\"] tbody tr').length;",
            vec![],
        )
        .await;
    assert!(relays.as_i64() >= Some(1), "{relays}");
    b.client.clone().close().await.unwrap();
}

/// Puts `n` finished calls (and their billing records), created over the last `n` seconds, in
/// `customer`'s read models: what the console reads (the log is not involved in showing them).
async fn seed_calls(env: &Env, customer: uuid::Uuid, n: usize) {
    let now = chrono::Utc::now();
    let mut ids = Vec::with_capacity(n);
    let mut calls = Vec::with_capacity(n);
    let mut bills = Vec::with_capacity(n);
    let mut bill_ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::now_v7();
        let at = now - chrono::Duration::seconds((n - i) as i64);
        ids.push(id);
        calls.push(json!({"id": id, "type": "call", "customer_id": customer,
            "direction": "outgoing", "source": "+15550001000",
            "destination": format!("+1555{:07}", i), "status": "completed", "hangup_by": "remote",
            "hangup_cause": "normal_clearing", "duration": 2, "tm_create": at, "tm_ringing": at,
            "tm_progressing": at, "tm_hangup": at, "tm_update": at}));
        let bid = uuid::Uuid::now_v7();
        bill_ids.push(bid);
        bills.push(
            json!({"id": bid, "type": "billing", "customer_id": customer,
            "reference_type": "call", "reference_id": id, "billable_units": 1,
            "rate_micros_per_unit": 10000, "amount_micros": 10000,
            "balance_after_micros": 0, "tm_create": at}),
        );
    }
    for (table, ids, bodies) in [
        ("rm_calls", &ids, &calls),
        ("rm_billings", &bill_ids, &bills),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, customer_id, aggregate_id, body, version) \
             SELECT id, $1, id, body, 1 FROM unnest($2::uuid[], $3::jsonb[]) AS t(id, body)"
        )))
        .bind(customer)
        .bind(ids)
        .bind(bodies)
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

/// The dashboard's timings for `user` (ms): a cold load of the console (navigation to load
/// end), then `rounds` visits of the dashboard from another page: until its data is drawn, and
/// until today's calls and spend are counted.
async fn dashboard_timings(b: &Browser, env: &Env, user: &str, rounds: usize) -> Value {
    b.client.goto(&env.url("/console/")).await.unwrap();
    let cold = b
        .until(
            "the console to load",
            "const n = performance.getEntriesByType('navigation')[0]; \
             return n && n.loadEventEnd > 0 ? n.loadEventEnd : null;",
            vec![],
        )
        .await;
    b.login(env, user).await;
    let mut drawn = vec![];
    let mut counted = vec![];
    for _ in 0..rounds {
        b.js(
            "performance.clearMeasures(); location.hash = '#/flows';",
            vec![],
        )
        .await;
        b.text_with("main h1", "Flows").await;
        b.js("location.hash = '#/dashboard';", vec![]).await;
        let m = b
            .until(
                "the dashboard's measures",
                "const d = performance.getEntriesByName('vbin:page:dashboard'); \
                 const t = performance.getEntriesByName('vbin:dashboard:today'); \
                 return d.length && t.length ? [d[0].duration, t[0].duration] : null;",
                vec![],
            )
            .await;
        drawn.push(m[0].as_f64().unwrap());
        counted.push(m[1].as_f64().unwrap());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let max = |v: &Vec<f64>| v.iter().cloned().fold(0.0, f64::max);
    json!({"cold_load_ms": cold, "drawn_median_ms": median(&mut drawn), "drawn_max_ms": max(&drawn),
           "today_median_ms": median(&mut counted), "today_max_ms": max(&counted)})
}

/// The console's benchmark (docs/benchmarks.md): the dashboard with 10,000 calls in the account
/// against the same with none, same run, same browser. Opt-in:
/// `cargo nextest run --workspace --run-ignored only -E 'binary(it) & test(/console::bench_/)' --no-capture`.
#[tokio::test]
#[ignore = "benchmark: run with --run-ignored only (docs/benchmarks.md)"]
async fn bench_the_dashboard_with_10000_calls() {
    let env = Env::start().await;
    let (_, _, empty) = env.customer().await;
    let (customer, _, busy) = env.customer().await;
    seed_calls(&env, customer, 10_000).await;
    let b = Browser::start().await;
    // Warm: the first load compiles the modules.
    dashboard_timings(&b, &env, &empty, 1).await;
    let baseline = dashboard_timings(&b, &env, &empty, 15).await;
    let loaded = dashboard_timings(&b, &env, &busy, 15).await;
    let ratio = loaded["drawn_median_ms"].as_f64().unwrap()
        / baseline["drawn_median_ms"].as_f64().unwrap().max(0.1);
    println!(
        "{}",
        json!({"benchmark": "console dashboard", "calls": 10_000, "baseline_no_calls": baseline,
               "with_10000_calls": loaded, "drawn_ratio": ratio})
    );
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn agents_and_queues_are_made_in_the_console_and_their_status_moves_live() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let api = env.client(&tok);
    let b = Browser::start().await;
    b.login(&env, &user).await;
    b.press("nav", "Queues").await;
    b.text_with("main h1", "Queues and agents").await;
    let agent = "form[aria-label='New agent']";
    b.type_into(&format!("{agent} input[name=username]"), "ann")
        .await;
    b.type_into(&format!("{agent} input[name=password]"), "password123")
        .await;
    b.type_into(&format!("{agent} input[name=addresses]"), "+15550020000")
        .await;
    b.press(agent, "Create agent").await;
    b.text_with("#agent-list", "+15550020000").await;
    // Made available here; the API agrees.
    b.js(
        "const s = document.querySelector('select[aria-label=\"Status of ann\"]'); \
         s.value = 'available'; s.dispatchEvent(new Event('change'));",
        vec![],
    )
    .await;
    b.text_with("#agent-list [data-status='available']", "available")
        .await;
    let agents = api
        .wait_get("/v1.0/agents", Duration::from_secs(10), |_, v| {
            v["result"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|a| a["username"] == "ann" && a["status"] == "available")
            })
        })
        .await;
    let ann = agents["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["username"] == "ann")
        .cloned()
        .expect("ann");
    assert_eq!(ann["status"], "available", "{ann}");
    // A queue with her; the page reloads its agent choices only on a visit, so come back.
    b.press("nav", "Dashboard").await;
    b.press("nav", "Queues").await;
    let queue = "form[aria-label='New queue']";
    b.type_into(&format!("{queue} input[name=name]"), "support")
        .await;
    b.until(
        "ann's box in the new queue's agents",
        "const box = [...document.querySelectorAll(\"input[name=agent_ids]\")] \
           .find(i => i.closest('label').textContent.trim() === 'ann'); \
         if (!box) return null; box.click(); return box.checked;",
        vec![],
    )
    .await;
    b.press(queue, "Create queue").await;
    b.text_with("#queue-list", "support").await;
    let qs = api
        .wait_get("/v1.0/queues", Duration::from_secs(10), |_, v| {
            v["result"][0]["name"] == "support"
        })
        .await;
    let qid = qs["result"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(qs["result"][0]["agent_ids"][0], ann["id"], "{qs}");
    // A caller joins; ann's phone answers: the page's counters move without a reload.
    env.calls(
        &tok,
        &["+15550003000"],
        json!({"actions": [{"type": "queue_join", "option": {"queue_id": qid}}],
               "sandbox": {"script": [{"at_ms": 20000, "hangup": true}]}}),
    )
    .await;
    b.text_with("#queue-list [data-stat='served']", "1").await;

    // Numbers: one added with a flow, then deleted.
    api.create(
        "/v1.0/flows",
        json!({"name": "inbound", "actions": [{"type": "answer"}]}),
    )
    .await;
    api.wait_get("/v1.0/flows", Duration::from_secs(10), |_, v| {
        v["result"][0]["name"] == "inbound"
    })
    .await;
    b.press("nav", "Numbers").await;
    b.text_with("main h1", "Numbers").await;
    let number = "form[aria-label='New number']";
    b.type_into(&format!("{number} input[name=number]"), "+15550009001")
        .await;
    b.press(number, "Add number").await;
    b.text_with("#number-list", "inbound").await;
    api.wait_get("/v1.0/numbers", Duration::from_secs(10), |_, v| {
        v["result"][0]["number"] == "+15550009001"
    })
    .await;
    b.press("#number-list", "Delete").await;
    b.text_with("#number-list", "No numbers").await;
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn the_console_works_with_the_keyboard_alone() {
    // WebDriver's key codes.
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    let env = Env::start().await;
    let (_, _, user) = env.customer().await;
    let b = Browser::start().await;
    b.client.goto(&env.url("/console/")).await.unwrap();
    // The login page puts the focus in its first field; Tab moves on, Enter submits.
    let first = b.find("input[name=username]").await;
    b.until(
        "the username field to have the focus",
        "return document.activeElement?.name === 'username';",
        vec![],
    )
    .await;
    first.send_keys(&user).await.unwrap();
    first.send_keys(TAB).await.unwrap();
    let active = b.js("return document.activeElement.name;", vec![]).await;
    assert_eq!(active, json!("password"));
    b.find("input[name=password]")
        .await
        .send_keys(&format!("password123{ENTER}"))
        .await
        .unwrap();
    b.text_with("main h1", "Dashboard").await;
    // Tab from the top of the page reaches the skip link, then the navigation; Enter follows a
    // link.
    b.js(
        "document.activeElement.blur(); document.body.focus();",
        vec![],
    )
    .await;
    let mut reached = false;
    for _ in 0..12 {
        b.client
            .active_element()
            .await
            .unwrap()
            .send_keys(TAB)
            .await
            .unwrap();
        let text = b
            .js("return document.activeElement.textContent.trim();", vec![])
            .await;
        if text == json!("Calls") {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached the Calls link");
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(ENTER)
        .await
        .unwrap();
    b.text_with("main h1", "Calls").await;
    b.client.clone().close().await.unwrap();
}

#[tokio::test]
async fn conferences_trunks_assistants_and_agents_are_run_and_changed_in_the_console() {
    let env = Env::start().await;
    let (_, tok, user) = env.customer().await;
    let api = env.client(&tok);
    let b = Browser::start().await;
    b.login(&env, &user).await;

    // A conference made here; its members join and leave on the page without a reload.
    b.press("nav", "Conferences").await;
    let new = "form[aria-label='New conference']";
    b.type_into(&format!("{new} input[name=name]"), "standup")
        .await;
    b.press(new, "Create conference").await;
    b.text_with("#members", "No member has joined yet").await;
    let cid = b
        .js("return location.hash.split('/')[2];", vec![])
        .await
        .as_str()
        .unwrap()
        .to_string();
    let join = |hangup_ms: u32| {
        json!({"actions": [{"type": "conference_join", "option": {"conference_id": cid}}],
               "sandbox": {"script": [{"at_ms": 1500, "say": "hello everyone"},
                                      {"at_ms": hangup_ms, "hangup": true}]}})
    };
    let stays = env.calls(&tok, &["+15550006101"], join(60000)).await[0];
    let leaves = env.calls(&tok, &["+15550006102"], join(6000)).await[0];
    b.until(
        "two members joined",
        "return document.querySelectorAll('#members [data-status=joined]').length === 2;",
        vec![],
    )
    .await;
    b.text_with("#conference", "2 member(s) now").await;
    b.press("#conference", "Start recording").await;
    b.text_with("#recordings [data-status]", "recording").await;
    // The one who hangs up is shown as left, by hangup.
    b.text_with("#members", "(hangup)").await;
    b.text_with("#conference", "1 member(s) now").await;
    let left = api
        .wait_get(
            &format!("/v1.0/conferencecalls?conference_id={cid}"),
            Duration::from_secs(10),
            |_, v| {
                v["result"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|m| m["status"] == "leaved"))
            },
        )
        .await;
    let gone = left["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["status"] == "leaved")
        .unwrap();
    assert_eq!(gone["call_id"], leaves.to_string(), "{left}");
    b.press("#conference", "Stop recording").await;
    b.press("#recordings", "Load audio").await;
    b.find("#recordings audio").await;
    b.press("#conference", "Stop").await;
    b.text_with("#conference [data-status]", "terminated").await;
    let conf = api
        .wait_get(
            &format!("/v1.0/conferences/{cid}"),
            Duration::from_secs(10),
            |_, v| v["status"] == "terminated",
        )
        .await;
    assert_eq!(conf["call_ids"], json!([]), "{conf}");
    let (_, recs) = api
        .get(&format!("/v1.0/recordings?reference_id={cid}"))
        .await;
    assert_eq!(recs["result"][0]["channels"], 1, "{recs}");
    assert!(
        recs["result"][0]["duration_ms"].as_u64().unwrap() > 1000,
        "{recs}"
    );
    api.post(&format!("/v1.0/calls/{stays}/hangup"), json!({}))
        .await;

    // A trunk: made, changed (the password kept), deleted.
    b.press("nav", "Trunks").await;
    let new = "form[aria-label='New trunk']";
    b.type_into(&format!("{new} input[name=name]"), "carrier")
        .await;
    b.type_into(&format!("{new} input[name=host]"), "sip.carrier.example")
        .await;
    b.type_into(&format!("{new} input[name=username]"), "acme")
        .await;
    b.type_into(&format!("{new} input[name=password]"), "s3cret")
        .await;
    b.press(new, "Create trunk").await;
    b.text_with("#trunk-list", "sip.carrier.example:5060 (udp)")
        .await;
    // A refused setting shows the API's reason in the form.
    b.press("#trunk-list", "Edit").await;
    let edit = "form[aria-label='Edit trunk carrier']";
    b.type_into(&format!("{edit} input[name=host]"), "bad host!")
        .await;
    b.press(edit, "Save").await;
    b.until(
        "the API's reason in the edit form",
        "const e = document.querySelector(\"form[aria-label='Edit trunk carrier'] .error\"); \
         return e && e.textContent.trim();",
        vec![],
    )
    .await;
    b.type_into(&format!("{edit} input[name=host]"), "sip2.carrier.example")
        .await;
    b.type_into(&format!("{edit} input[name=port]"), "5080")
        .await;
    b.press(edit, "Save").await;
    b.text_with("#trunk-list", "sip2.carrier.example:5080 (udp)")
        .await;
    let trunks = api
        .wait_get("/v1.0/trunks", Duration::from_secs(10), |_, v| {
            v["result"][0]["port"] == 5080
        })
        .await;
    let t = &trunks["result"][0];
    assert_eq!(
        (&t["host"], &t["password_set"], &t["username"]),
        (&json!("sip2.carrier.example"), &json!(true), &json!("acme")),
        "{t}"
    );
    b.press("#trunk-list", "Delete").await;
    b.text_with("#trunk-list", "No trunks").await;
    api.wait_get("/v1.0/trunks", Duration::from_secs(10), |_, v| {
        v["result"].as_array().is_some_and(|r| r.is_empty())
    })
    .await;

    // An assistant made with the API, changed here (its key kept), deleted here.
    api.create(
        "/v1.0/ais",
        json!({"name": "helper", "init_prompt": "Be brief.", "engine_model": "local.gemma3-270m",
               "engine_key": "k-123", "tool_names": ["hangup"]}),
    )
    .await;
    api.wait_get("/v1.0/ais", Duration::from_secs(10), |_, v| {
        v["result"][0]["name"] == "helper"
    })
    .await;
    b.press("nav", "AI").await;
    b.press("#ai-list", "Edit").await;
    let edit = "form[aria-label='Edit assistant helper']";
    b.type_into(
        &format!("{edit} textarea[name=init_prompt]"),
        "Be very brief.",
    )
    .await;
    b.press(edit, "Save").await;
    b.text_with("#ai-list", "Be very brief.").await;
    let ais = api
        .wait_get("/v1.0/ais", Duration::from_secs(10), |_, v| {
            v["result"][0]["init_prompt"] == "Be very brief."
        })
        .await;
    let a = &ais["result"][0];
    assert_eq!(
        (&a["engine_key_set"], &a["tool_names"]),
        (&json!(true), &json!(["hangup"])),
        "{a}"
    );
    b.press("#ai-list", "Delete").await;
    b.text_with("#ai-list", "No assistants").await;

    // An agent changed and another deleted; a queue's routing changed.
    for name in ["bob", "cyd"] {
        api.create(
            "/v1.0/agents",
            json!({"username": name, "password": "password123", "permission": "agent"}),
        )
        .await;
    }
    api.wait_get("/v1.0/agents", Duration::from_secs(10), |_, v| {
        v["result"].as_array().is_some_and(|r| r.len() >= 3)
    })
    .await;
    let q = api
        .create(
            "/v1.0/queues",
            json!({"name": "sales", "routing_method": "ringall"}),
        )
        .await;
    let qid = id_of(&q);
    api.wait_get(
        &format!("/v1.0/queues/{qid}"),
        Duration::from_secs(10),
        |s, _| s == 200,
    )
    .await;
    b.press("nav", "Queues").await;
    b.click("button[aria-label='Edit agent bob']").await;
    let edit = "form[aria-label='Edit agent bob']";
    b.type_into(&format!("{edit} input[name=name]"), "Bo Diaz")
        .await;
    b.type_into(&format!("{edit} input[name=addresses]"), "+15550020011")
        .await;
    b.press(edit, "Save").await;
    b.text_with("#agent-list", "Bo Diaz (bob)").await;
    b.click("button[aria-label='Delete agent cyd']").await;
    b.text_with("#flash", "Agent cyd deleted").await;
    b.click("button[aria-label='Edit queue sales']").await;
    let edit = "form[aria-label='Edit queue sales']";
    b.find(&format!("{edit} select[name=routing_method]"))
        .await
        .select_by_value("linear")
        .await
        .unwrap();
    b.until(
        "bob's box in the queue's agents",
        "const box = [...document.querySelectorAll(\"form[aria-label='Edit queue sales'] input[name=agent_ids]\")] \
           .find(i => i.closest('label').textContent.trim() === 'bob'); \
         if (!box) return null; box.click(); return box.checked;",
        vec![],
    )
    .await;
    b.press(edit, "Save").await;
    let agents = api
        .wait_get("/v1.0/agents", Duration::from_secs(10), |_, v| {
            v["result"].as_array().is_some_and(|r| {
                r.iter().any(|a| a["name"] == "Bo Diaz")
                    && !r.iter().any(|a| a["username"] == "cyd")
            })
        })
        .await;
    let bo = agents["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["username"] == "bob")
        .unwrap();
    assert_eq!(bo["addresses"][0]["target"], "+15550020011", "{bo}");
    let q = api
        .wait_get(
            &format!("/v1.0/queues/{qid}"),
            Duration::from_secs(10),
            |_, v| v["routing_method"] == "linear",
        )
        .await;
    assert_eq!(q["agent_ids"], json!([bo["id"]]), "{q}");
    b.client.clone().close().await.unwrap();
}
