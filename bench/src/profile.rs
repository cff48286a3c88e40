//! A CPU profile of the benchmark's own process (`perf record` with DWARF call stacks), split
//! by the part of vbin each sample was spent in.
//!
//! A sample belongs to the task whose outermost vbin frame names a part (the relay, the
//! projections, the carrier, ...; the group-commit writers count as `append`). A sample of a
//! command API request is split by its innermost vbin frame: the event store (`append`), the
//! aggregate and the executor (`decide`), authentication (`auth`), the request handler's own
//! code (`handler`); with no vbin frame at all, hyper and axum (`http`). The consumers' own
//! machinery (fetch, decode, ack) is `bus consumers`; the NATS and Postgres clients' own tasks
//! are `nats client` and `postgres client`. The rest is the runtime (scheduler, timers, idle
//! polling) and what has no usable stack.

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Samples per second.
const FREQUENCY: u32 = 499;

/// A `perf record` running against a process.
pub(crate) struct Recording {
    child: tokio::process::Child,
    path: PathBuf,
}

/// Starts recording `pid` for `secs` seconds into `path`.
pub(crate) fn record(pid: u32, secs: u64, path: &Path) -> anyhow::Result<Recording> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let child = tokio::process::Command::new("perf")
        .args(["record", "-q", "-F", &FREQUENCY.to_string()])
        .args(["--call-graph", "dwarf,32768", "-p", &pid.to_string(), "-o"])
        .arg(path)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting perf (install it with: apt-get install linux-perf)")?;
    Ok(Recording {
        child,
        path: path.to_path_buf(),
    })
}

impl Recording {
    /// Waits for the recording to end and splits its samples by part: each part's share of
    /// the process's CPU time, and its CPU time per command (`us_per_command` is the
    /// process's CPU time per command, measured apart).
    pub(crate) async fn split(mut self, us_per_command: f64) -> anyhow::Result<Value> {
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("perf record failed ({status})");
        }
        let out = tokio::process::Command::new("perf")
            .args(["script", "--no-inline", "-F", "ip,sym", "-i"])
            .arg(&self.path)
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "perf script: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut total = 0u64;
        for sample in text.split("\n\n") {
            let frames: Vec<&str> = sample
                .lines()
                .filter_map(|l| l.trim().split_once(char::is_whitespace).map(|(_, s)| s))
                .collect();
            if frames.is_empty() {
                continue;
            }
            *counts.entry(part_of(&frames)).or_default() += 1;
            total += 1;
        }
        if total == 0 {
            bail!("the profile has no samples");
        }
        let parts: serde_json::Map<String, Value> = counts
            .iter()
            .map(|(part, n)| {
                let share = *n as f64 / total as f64;
                (
                    part.to_string(),
                    json!({
                        "share": (share * 1000.0).round() / 1000.0,
                        "us_per_command": (share * us_per_command * 10.0).round() / 10.0,
                    }),
                )
            })
            .collect();
        Ok(json!({
            "samples": total,
            "frequency_hz": FREQUENCY,
            "perf_data": self.path,
            "parts": parts,
        }))
    }
}

/// The part a sample's frames (innermost first) were spent in.
pub(crate) fn part_of(frames: &[&str]) -> &'static str {
    const TASKS: &[(&str, &str)] = &[
        ("vbin_eventlog::relay", "relay"),
        ("vbin_eventlog::group", "append"),
        ("vbin_projections", "projections"),
        ("vbin_carrier", "carrier"),
        ("vbin_processes", "process managers"),
        ("vbin_webhooks", "webhooks"),
        ("vbin_gateway", "gateway"),
        ("vbin_callmedia", "media"),
        ("vbin_read_api", "query API"),
        ("vbin_replica", "query API"),
    ];
    for f in frames.iter().rev() {
        if let Some((_, part)) = TASKS.iter().find(|(pat, _)| f.contains(pat)) {
            return part;
        }
    }
    // The consumers' own machinery (fetching, decoding, acking) below any handler's frame.
    if frames.iter().any(|f| f.contains("vbin_bus")) {
        return "bus consumers";
    }
    for f in frames {
        if f.contains("vbin_eventlog") {
            return "append";
        }
        if f.contains("vbin_domain") || f.contains("vbin_app::executor") {
            return "decide";
        }
        if f.contains("auth") && (f.contains("vbin_http") || f.contains("vbin_commands")) {
            return "auth";
        }
        if f.contains("vbin_") && !f.contains("vbin_http::") && !f.contains("vbin_platform") {
            return "handler";
        }
    }
    if frames
        .iter()
        .any(|f| f.contains("hyper") || f.contains("axum") || f.contains("vbin_http"))
    {
        return "http";
    }
    if frames.iter().any(|f| f.contains("async_nats")) {
        return "nats client";
    }
    if frames.iter().any(|f| f.contains("sqlx")) {
        return "postgres client";
    }
    "runtime and other"
}

#[cfg(test)]
mod tests {
    use super::part_of;

    #[test]
    fn samples_are_split_by_their_task_then_by_what_a_request_was_doing() {
        let relay = [
            "sqlx_postgres::connection::stream::PgStream::recv",
            "vbin_eventlog::relay::Relay::lead::{{closure}}",
            "tokio::runtime::task::raw::poll",
        ];
        assert_eq!(part_of(&relay), "relay");
        let append = [
            "__memmove_avx_unaligned_erms",
            "sqlx_postgres::arguments::PgArguments::add",
            "vbin_eventlog::group::insert_batch::{{closure}}",
            "vbin_eventlog::group::writer::{{closure}}",
        ];
        assert_eq!(part_of(&append), "append");
        let decide = [
            "serde_json::ser::to_value",
            "vbin_app::executor::to_new_events",
            "vbin_app::executor::Executor::run::{{closure}}",
            "vbin_commands::api::calls::create::{{closure}}",
            "hyper::proto::h1::dispatch::Dispatcher::poll",
        ];
        assert_eq!(part_of(&decide), "decide");
        let http = [
            "httparse::parse_headers",
            "hyper::proto::h1::role::Server::parse",
            "hyper::proto::h1::dispatch::Dispatcher::poll",
        ];
        assert_eq!(part_of(&http), "http");
        assert_eq!(
            part_of(&[
                "serde_json::de::from_slice",
                "vbin_bus::handle_message::{{closure}}"
            ]),
            "bus consumers"
        );
        assert_eq!(
            part_of(&["epoll_wait", "tokio::runtime::io::driver::Driver::turn"]),
            "runtime and other"
        );
    }
}
