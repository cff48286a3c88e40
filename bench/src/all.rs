//! `vbin bench all`: every benchmark, one after another, each in its own `vbin bench ...`
//! process (a clean start for each), plus the common baselines of this machine measured in the
//! same run (Redis GET rate, a no-op HTTP handler); one report as JSON and markdown.

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `vbin bench all` options.
#[derive(clap::Args, Debug)]
pub struct AllArgs {
    /// Where the report (`report.json`, `report.md`) and each benchmark's JSON go.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Run only these benchmarks (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Smaller sizes (minutes instead of tens of minutes), for a quick check.
    #[arg(long)]
    pub quick: bool,
    /// With `--only`: keep the other benchmarks' figures from the report already in `--out`
    /// (to re-run one that failed without running the others again).
    #[arg(long, requires = "only")]
    pub reuse: bool,
    /// Redis URL for the baseline.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Postgres server (without database) for the INSERT baseline.
    #[arg(
        long,
        env = "VBIN_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg: String,
    /// Also write the summary into this markdown file, between the lines
    /// `<!-- bench-all:begin -->` and `<!-- bench-all:end -->` (docs/benchmarks.md).
    #[arg(long)]
    pub docs: Option<PathBuf>,
}

/// The benchmarks and their arguments (full, quick).
fn plan() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        ("commands", vec![], vec!["--duration-secs", "5"]),
        (
            "reads",
            vec![],
            vec!["--duration-secs", "3", "--calls", "1,100,1000"],
        ),
        (
            "lag",
            vec![],
            vec!["--duration-secs", "5", "--calibrate-secs", "4"],
        ),
        ("replay", vec![], vec!["--events", "200000"]),
        ("relay", vec![], vec!["--events", "50000"]),
        (
            "campaign",
            vec!["--targets", "1000,10000,100000"],
            vec!["--targets", "500,1000,2000"],
        ),
        (
            "webhooks",
            vec!["--curve", "20000,50000"],
            vec!["--calls", "2000", "--curve", "5000"],
        ),
        (
            "ws",
            vec![],
            vec!["--connections", "1000,5000", "--secs", "5"],
        ),
        ("media", vec![], vec!["--secs", "1"]),
        ("conference", vec![], vec!["--secs", "1"]),
        ("bridge", vec![], vec!["--secs", "1"]),
        (
            "flows",
            vec![],
            vec![
                "--calls",
                "200",
                "--window-secs",
                "2",
                "--baseline-secs",
                "2",
            ],
        ),
        (
            "sip",
            vec![],
            vec![
                "--calls",
                "100",
                "--window-secs",
                "2",
                "--baseline-secs",
                "2",
            ],
        ),
        ("stt", vec![], vec!["--prompts", "15"]),
        ("ai", vec![], vec!["--calls", "2", "--turns", "2"]),
    ]
}

/// Runs the benchmarks and writes the report.
pub async fn run(a: &AllArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let exe = std::env::current_exe()?;
    let mut results = Map::new();
    let mut failed = Vec::new();
    let earlier = if a.reuse {
        Some(earlier_report(&a.out.join("report.json"))?)
    } else {
        None
    };
    let earlier_results = earlier
        .as_ref()
        .and_then(|r| r["benchmarks"].as_object().cloned())
        .unwrap_or_default();
    for (name, full, quick) in plan() {
        if !a.only.is_empty() && !a.only.iter().any(|o| o == name) {
            if let Some(v) = earlier_results.get(name) {
                results.insert(name.to_string(), v.clone());
            } else if earlier
                .as_ref()
                .and_then(|r| r["failed"].as_array())
                .is_some_and(|f| f.iter().any(|n| n == name))
            {
                // Failed in the earlier run and not re-run: still failed.
                failed.push(name);
            }
            continue;
        }
        let json_path = a.out.join(format!("{name}.json"));
        let args = if a.quick { quick } else { full };
        eprintln!("== vbin bench {name} {}", args.join(" "));
        let t = Instant::now();
        let status = tokio::process::Command::new(&exe)
            .arg("bench")
            .arg(name)
            .args(&args)
            .arg("--json")
            .arg(&json_path)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .with_context(|| format!("running bench {name}"))?;
        let secs = t.elapsed().as_secs_f64().round();
        match std::fs::read(&json_path).ok().filter(|_| status.success()) {
            Some(bytes) => {
                let mut v: Value = serde_json::from_slice(&bytes)?;
                v["command"] = json!(format!("vbin bench {name} {}", args.join(" ")).trim_end());
                v["seconds"] = json!(secs);
                results.insert(name.to_string(), v);
            }
            None => {
                eprintln!("bench {name} failed ({status})");
                failed.push(name);
            }
        }
    }
    // A report that reuses an earlier one keeps that run's common baselines and date: most of
    // its figures come from it.
    let today = json!(chrono::Utc::now().format("%Y-%m-%d").to_string());
    let (baselines, date, rerun) = match &earlier {
        Some(r) => (
            r["baselines"].clone(),
            r["date"].clone(),
            json!({"benchmarks": a.only.clone(), "date": today}),
        ),
        None => (
            json!({
                "pg_inserts_per_sec": pg_inserts(&a.pg).await.ok(),
                "redis_get_per_sec": redis_gets(&a.redis_url).await.ok(),
                "noop_http_requests_per_sec": noop_http().await.ok(),
            }),
            today,
            Value::Null,
        ),
    };
    let report = json!({
        "date": date,
        "rerun": rerun,
        "machine": machine(),
        "quick": a.quick,
        "baselines": baselines,
        "benchmarks": Value::Object(results),
        "failed": failed,
    });
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    // The charts sit in `bench-plots/` beside both the report and the docs, so the summary's
    // links work in either.
    crate::plot::write_all(&report, &a.out.join(PLOTS))?;
    std::fs::write(a.out.join("report.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    if let Some(docs) = &a.docs {
        let dir = docs.parent().unwrap_or(std::path::Path::new("."));
        crate::plot::write_all(&report, &dir.join(PLOTS))?;
        write_docs(docs, &summary(&report))?;
        eprintln!("summary and charts written into {}", docs.display());
    }
    if !failed.is_empty() {
        bail!("benchmarks failed: {failed:?}");
    }
    Ok(())
}

/// The report already in `--out` (`--reuse`).
fn earlier_report(path: &std::path::Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("--reuse: reading {path:?}"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model})
}

/// Every numeric figure of a benchmark's JSON, flattened (`runs.0.latency_p99_ms`, ...).
fn figures(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        Value::Object(m) => {
            for (k, x) in m {
                if k == "samples" || k == "command" {
                    continue;
                }
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                figures(&p, x, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                figures(&format!("{prefix}.{i}"), x, out);
            }
        }
        _ => {}
    }
}

/// One headline figure of a benchmark beside its same-run baseline.
struct Headline {
    figure: String,
    value: Option<f64>,
    baseline: &'static str,
    baseline_value: Option<f64>,
}

/// The figures that matter of each benchmark, each with the baseline it is judged against:
/// the benchmark's own (measured inside it, in the same process and run) or one of the common
/// baselines of this report.
fn headlines(name: &str, v: &Value, common: &Value) -> Vec<Headline> {
    let f = |k: &str| v[k].as_f64();
    let h = |figure: &str, value, baseline, baseline_value| Headline {
        figure: figure.to_string(),
        value,
        baseline,
        baseline_value,
    };
    match name {
        "commands" => {
            let raw = f("baseline_pg_inserts_per_sec");
            // Each HTTP run against the baselines measured right before and after it (reports
            // from before these existed have only the overall one).
            let platform_raw = f("baseline_platform_pg_inserts_per_sec").or(raw);
            let api_raw = f("baseline_api_pg_inserts_per_sec").or(raw);
            let raw_p99 = f("baseline_insert_p99_ms");
            let store = |k: &str| v["stores"][k]["events_per_sec"].as_f64();
            vec![
                h(
                    "commands/s, whole platform",
                    f("commands_per_sec"),
                    "raw Postgres INSERT/s, before and after",
                    platform_raw,
                ),
                h(
                    "commands/s, command API alone",
                    f("api_commands_per_sec"),
                    "raw Postgres INSERT/s, before and after",
                    api_raw,
                ),
                h(
                    "command p99 ms, whole platform",
                    f("command_p99_ms"),
                    "raw INSERT p99 ms",
                    raw_p99,
                ),
                h(
                    "command p99 ms, command API alone",
                    f("api_command_p99_ms"),
                    "raw INSERT p99 ms",
                    raw_p99,
                ),
                h(
                    "events/s appended by vbin's store",
                    store("vbin_store"),
                    "raw Postgres INSERT/s",
                    raw,
                ),
                h(
                    "events/s appended by postgres-es (peer)",
                    store("postgres_es"),
                    "raw Postgres INSERT/s",
                    raw,
                ),
                h(
                    "events/s, plain INSERT per event",
                    store("plain_insert_per_event"),
                    "raw Postgres INSERT/s",
                    raw,
                ),
                h(
                    "commands/s, command API alone",
                    f("api_commands_per_sec"),
                    "no-op HTTP requests/s",
                    common["noop_http_requests_per_sec"].as_f64(),
                ),
            ]
        }
        "reads" => v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                h(
                    &format!("cached GET /v1.0/calls/{{id}}/s, {} calls", r["calls"]),
                    r["cached_get"]["per_sec"].as_f64(),
                    "GET /healthz/s, same server",
                    r["healthz"]["per_sec"].as_f64(),
                )
            })
            .collect(),
        "lag" => vec![h(
            &format!(
                "write-to-read lag p99 ms at {} commands/s",
                v["offered_commands_per_sec"]
            ),
            f("lag_p99_ms"),
            "target p99 ms",
            f("target_p99_ms"),
        )],
        "replay" => vec![h(
            "replayed events/s",
            f("replay_events_per_sec"),
            "COPY of the log, events/s",
            f("baseline_copy_events_per_sec"),
        )],
        "relay" => vec![h(
            "relay events/s draining a backlog",
            f("relay_events_per_sec"),
            "raw JetStream publishes/s",
            f("baseline_jetstream_publishes_per_sec"),
        )],
        "campaign" => match v["runs"].as_array() {
            Some(runs) => runs
                .iter()
                .flat_map(|r| {
                    let mut out = vec![h(
                        &format!("campaign calls dialed/s, {} targets", r["targets"]),
                        r["calls_dialed_per_sec"].as_f64(),
                        "target calls/s (issue 23)",
                        f("target_calls_dialed_per_sec"),
                    )];
                    // Past the first round a call is dialed only as another ends.
                    if let Some(steady) = r["steady_calls_dialed_per_sec"].as_f64() {
                        out.push(h(
                            &format!(
                                "campaign calls dialed/s after the first round, {} targets",
                                r["targets"]
                            ),
                            Some(steady),
                            "target calls/s (issue 23)",
                            f("target_calls_dialed_per_sec"),
                        ));
                    }
                    out
                })
                .collect(),
            // A report from before the growth curve.
            None => vec![h(
                "campaign calls dialed/s",
                f("calls_dialed_per_sec"),
                "raw Postgres INSERT/s",
                f("baseline_pg_inserts_per_sec"),
            )],
        },
        "webhooks" => {
            let mut out = vec![
                h(
                    "signed deliveries/s",
                    f("deliveries_per_sec"),
                    "raw HTTP POST/s to the same receiver",
                    f("baseline_http_posts_per_sec"),
                ),
                h(
                    "dispatch delay p99 ms",
                    f("dispatch_delay_p99_ms"),
                    "",
                    None,
                ),
            ];
            // The growth curve, each size against the base size's rate.
            for r in v["curve"].as_array().into_iter().flatten() {
                out.push(h(
                    &format!("signed deliveries/s, backlog of {}", r["deliveries"]),
                    r["deliveries_per_sec"].as_f64(),
                    "deliveries/s of the base backlog",
                    f("deliveries_per_sec"),
                ));
            }
            out
        }
        "ws" => v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| {
                let c = &r["connections"];
                [
                    h(
                        &format!("pushes/s, {c} connections"),
                        r["pushes_per_sec"].as_f64(),
                        "bare broadcast server pushes/s",
                        r["baseline_pushes_per_sec"].as_f64(),
                    ),
                    h(
                        &format!("push p99 ms, {c} connections"),
                        r["latency_p99_ms"].as_f64(),
                        "bare broadcast server p99 ms",
                        r["baseline_latency_p99_ms"].as_f64(),
                    ),
                ]
            })
            .collect(),
        "media" => vec![
            h(
                "G.711 µ-law encode, G samples/s",
                v["g711"]["buffer_1048576_samples"]["ulaw_encode_gsamples_per_sec"].as_f64(),
                "memcpy of samples, G/s",
                v["g711"]["buffer_1048576_samples"]["baseline_copy_gsamples_per_sec"].as_f64(),
            ),
            h(
                "8->16 kHz resampling, real-time streams per core",
                v["resample"]["8000_to_16000"]["realtime_streams_per_core"].as_f64(),
                "",
                None,
            ),
            h(
                "AudioSocket real-time sessions per core",
                v["audiosocket_server"]["realtime_sessions_per_core"].as_f64(),
                "",
                None,
            ),
        ],
        "conference" => v["mix"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| matches!(m["members"].as_u64(), Some(2 | 8 | 64)))
            .map(|m| {
                h(
                    &format!(
                        "conference of {}: members mixed per core",
                        m["members"].as_u64().unwrap_or(0)
                    ),
                    m["realtime_members_per_core"].as_f64(),
                    "AudioSocket sessions per core",
                    v["baseline_audiosocket_server"]["realtime_sessions_per_core"].as_f64(),
                )
            })
            .collect(),
        "bridge" => vec![
            h(
                "bridged call pairs per core",
                v["bridge"]["bridged_pairs_per_core"].as_f64(),
                "the same sessions unbridged, per core",
                v["bridge"]["unbridged_sessions_per_core"].as_f64(),
            ),
            h(
                "bridged pairs per core",
                v["bridge"]["bridged_pairs_per_core"].as_f64(),
                "AudioSocket sessions per core",
                v["baseline_audiosocket_server"]["realtime_sessions_per_core"].as_f64(),
            ),
        ],
        "flows" => vec![
            h(
                &format!(
                    "IVR media sessions per core, {} calls",
                    v["calls"].as_u64().unwrap_or(0)
                ),
                v["sessions_per_core"].as_f64(),
                "AudioSocket sessions per core",
                v["baseline_audiosocket_sessions_per_core"].as_f64(),
            ),
            h(
                "frame pacing jitter p99 ms, all sessions playing",
                v["tick_lateness_ms"]["steady_p99"].as_f64(),
                "",
                None,
            ),
            h(
                "key -> next talk p99 ms",
                v["digit_to_talk_ms"]["p99"].as_f64(),
                "",
                None,
            ),
        ],
        "sip" => vec![
            h(
                &format!(
                    "SIP calls with media per core, {} calls",
                    v["calls"].as_u64().unwrap_or(0)
                ),
                v["calls_per_core"].as_f64(),
                "AudioSocket sessions per core",
                v["baseline_audiosocket_sessions_per_core"].as_f64(),
            ),
            h(
                "SIP call set-up, calls/s",
                v["setup"]["calls_per_sec"].as_f64(),
                "sipp calling sipp, calls/s",
                v["setup"]["baseline_sipp_against_sipp_calls_per_sec"].as_f64(),
            ),
            h(
                "RTP not echoed back (share)",
                v["rtp"]["not_back"].as_f64(),
                "",
                None,
            ),
        ],
        "stt" => {
            let of = |p: &str, k: &str| {
                v["providers"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["provider"] == p))
                    .and_then(|x| x[k].as_f64())
            };
            vec![
                h(
                    "Whisper tiny.en word error rate",
                    of("whisper", "wer"),
                    "",
                    None,
                ),
                h(
                    "Whisper tiny.en real-time factor",
                    of("whisper", "rtf"),
                    "",
                    None,
                ),
                h(
                    "PocketSphinx word error rate",
                    of("pocketsphinx", "wer"),
                    "",
                    None,
                ),
                h(
                    "Piper voice heard by Whisper at 8 kHz, word error rate",
                    v["tts_intelligibility"]
                        .as_array()
                        .and_then(|a| a.iter().find(|x| x["voice"] == "piper"))
                        .and_then(|x| x["wer"].as_f64()),
                    "human recordings, word error rate",
                    of("whisper", "wer"),
                ),
            ]
        }
        "ai" => vec![
            h(
                &format!(
                    "AI voice-to-voice p50 ms, {} conversations, zero-latency model",
                    v["calls"]
                ),
                v["voice_to_voice_ms"]["p50"].as_f64(),
                "pipecat/LiveKit anchor (cloud models), ms",
                Some(800.0),
            ),
            h(
                "AI voice-to-voice p95 ms",
                v["voice_to_voice_ms"]["p95"].as_f64(),
                "",
                None,
            ),
            h(
                "AI conversations per core",
                f("conversations_per_core"),
                "",
                None,
            ),
        ],
        _ => vec![],
    }
}

fn num(x: Option<f64>) -> String {
    match x {
        None => "—".into(),
        Some(x) if x.abs() >= 100.0 => {
            let s = format!("{:.0}", x);
            let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
            let mut out = String::new();
            for (i, ch) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            format!("{sign}{out}")
        }
        // `+ 0.0` turns a negative zero (a share rounded from -0.00005) into 0.
        Some(x) => format!("{}", (x * 1000.0).round() / 1000.0 + 0.0),
    }
}

/// The headline table: every benchmark's figures beside their same-run baselines and ratios,
/// with the command that produced them.
fn summary(r: &Value) -> String {
    let b = &r["baselines"];
    let mut md = format!(
        "Generated by `vbin bench all{}` on {} ({} CPUs, {}){}. Common baselines of this run: \
         raw Postgres INSERT {} /s, Redis GET {} /s, no-op HTTP handler {} requests/s \
         (16 clients each).\n\n\
         | Benchmark | Figure | Value | Same-run baseline | Baseline | Ratio |\n|---|---|---|---|---|---|\n",
        if r["quick"] == json!(true) { " --quick" } else { "" },
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cpus"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        match r["rerun"]["benchmarks"].as_array() {
            Some(names) => {
                let names = names.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(",");
                format!(
                    "; {names} re-run on its own on {} (`--only {names} --reuse`)",
                    r["rerun"]["date"].as_str().unwrap_or("")
                )
            }
            None => String::new(),
        },
        num(b["pg_inserts_per_sec"].as_f64()),
        num(b["redis_get_per_sec"].as_f64()),
        num(b["noop_http_requests_per_sec"].as_f64()),
    );
    let empty = Map::new();
    let benches = r["benchmarks"].as_object().unwrap_or(&empty);
    for (name, v) in benches {
        for h in headlines(name, v, b) {
            let ratio = match (h.value, h.baseline_value) {
                (Some(x), Some(y)) if y != 0.0 => Some(x / y),
                _ => None,
            };
            md += &format!(
                "| {name} | {} | {} | {} | {} | {} |\n",
                h.figure,
                num(h.value),
                if h.baseline.is_empty() {
                    "—"
                } else {
                    h.baseline
                },
                num(h.baseline_value),
                ratio
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "—".into()),
            );
        }
    }
    md += "\nCommands (each benchmark ran in its own process, release build):\n\n";
    for (name, v) in benches {
        md += &format!(
            "- {name}: `{}` ({} s)\n",
            v["command"].as_str().unwrap_or(""),
            v["seconds"]
        );
    }
    let charts = crate::plot::charts(r);
    if !charts.is_empty() {
        md += "\nGrowth curves (SVG drawn by the bench from this run's figures):\n\n";
        for c in charts {
            md += &format!("![{}]({PLOTS}/{})\n", c.title, c.file);
        }
    }
    if let Some(f) = r["failed"].as_array().filter(|f| !f.is_empty()) {
        md += &format!("\nFailed: {f:?}\n");
    }
    md
}

/// Where the charts go, beside the report and the docs.
const PLOTS: &str = "bench-plots";

const BEGIN: &str = "<!-- bench-all:begin -->";
const END: &str = "<!-- bench-all:end -->";

/// Replaces the text between the markers in `path` with `summary`.
fn write_docs(path: &std::path::Path, summary: &str) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        bail!("{} lacks the lines {BEGIN} and {END}", path.display());
    };
    if e < b {
        bail!("{}: {END} before {BEGIN}", path.display());
    }
    let out = format!("{}{BEGIN}\n{summary}{}", &doc[..b], &doc[e..]);
    std::fs::write(path, out)?;
    Ok(())
}

fn markdown(r: &Value) -> String {
    let mut md = format!("# vbin benchmark report\n\n{}", summary(r));
    md += "\n## Every figure\n";
    if let Some(b) = r["benchmarks"].as_object() {
        for (name, v) in b {
            md += &format!(
                "\n### {name}\n\n`{}` ({} s)\n\n| Figure | Value |\n|---|---|\n",
                v["command"].as_str().unwrap_or(""),
                v["seconds"]
            );
            let mut f = Vec::new();
            figures("", v, &mut f);
            for (k, x) in f.into_iter().filter(|(k, _)| k != "seconds") {
                md += &format!("| {k} | {x} |\n");
            }
        }
    }
    md
}

/// Raw single-row INSERTs per second by 16 clients for 3 s, on a throwaway database.
async fn pg_inserts(server: &str) -> anyhow::Result<f64> {
    let db = format!("vbin_bench_baseline_{}", std::process::id());
    let url = format!("{}/{db}", server.trim_end_matches('/'));
    vbin_migrations::connect_and_migrate(&url, 1)
        .await?
        .close()
        .await;
    let load = super::pg_insert_baseline(&url, 16, Duration::from_secs(3)).await;
    super::drop_database(server, &db).await;
    Ok(super::rate(&load?).round())
}

/// GETs per second of one key by 16 clients for 3 s.
async fn redis_gets(url: &str) -> anyhow::Result<f64> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg("vbin:bench:key")
        .arg("v")
        .query_async(&mut conn)
        .await?;
    let load = super::drive(16, Duration::from_secs(3), move || {
        let mut conn = conn.clone();
        async move {
            let t = Instant::now();
            let _: Option<String> = redis::cmd("GET")
                .arg("vbin:bench:key")
                .query_async(&mut conn)
                .await?;
            Ok(vec![t.elapsed()])
        }
    })
    .await;
    Ok(super::rate(&load).round())
}

/// Requests per second to an axum handler that does nothing, by 16 clients for 3 s.
async fn noop_http() -> anyhow::Result<f64> {
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let http = reqwest::Client::new();
    let load = super::drive(16, Duration::from_secs(3), move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let t = Instant::now();
            http.get(&url).send().await?.error_for_status()?;
            Ok(vec![t.elapsed()])
        }
    })
    .await;
    server.abort();
    Ok(super::rate(&load).round())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real report of every benchmark (samples stripped): each headline must find its figure
    /// and, where it names one, its baseline — a benchmark that renames a field fails here.
    #[test]
    fn every_headline_finds_its_figures_in_a_real_report() {
        let r: Value = serde_json::from_str(include_str!("testdata/report.json")).unwrap();
        let benches = r["benchmarks"].as_object().unwrap();
        let names: Vec<&str> = plan().iter().map(|p| p.0).collect();
        assert_eq!(
            benches.len(),
            names.len(),
            "the fixture has every benchmark"
        );
        for (name, v) in benches {
            let rows = headlines(name, v, &r["baselines"]);
            assert!(!rows.is_empty(), "{name} has no headline");
            for h in rows {
                assert!(h.value.is_some(), "{name}: {} missing", h.figure);
                assert_eq!(
                    h.baseline.is_empty(),
                    h.baseline_value.is_none(),
                    "{name}: {} baseline {}",
                    h.figure,
                    h.baseline
                );
            }
        }
        let md = summary(&r);
        assert!(
            md.contains("| ws | pushes/s, 10000 connections | 99,898 |"),
            "{md}"
        );
    }

    #[test]
    fn the_summary_replaces_only_the_text_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("vbin-docs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.md");
        std::fs::write(&p, format!("head\n{BEGIN}\nold\n{END}\ntail\n")).unwrap();
        write_docs(&p, "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("head\n{BEGIN}\nnew\n{END}\ntail\n")
        );
        std::fs::write(&p, "no markers").unwrap();
        assert!(write_docs(&p, "x").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_summary_says_which_benchmarks_were_re_run_on_their_own() {
        let mut r = json!({"date": "2026-12-01", "machine": {"cpus": 2, "cpu": "x"},
                           "baselines": {}, "benchmarks": {}});
        assert!(!summary(&r).contains("re-run"));
        r["rerun"] = json!({"benchmarks": ["sip"], "date": "2026-12-03"});
        assert!(summary(&r).contains(
            "on 2026-12-01 (2 CPUs, x); sip re-run on its own on 2026-12-03 (`--only sip --reuse`)."
        ));
    }

    #[test]
    fn numbers_are_grouped_and_rounded() {
        assert_eq!(num(Some(1234567.4)), "1,234,567");
        assert_eq!(num(Some(-12345.0)), "-12,345");
        assert_eq!(num(Some(0.8451)), "0.845");
        assert_eq!(num(None), "—");
        assert_eq!(num(Some(-0.00004)), "0");
    }
}
