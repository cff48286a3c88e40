//! `vbin bench conference` and `vbin bench bridge`: what connecting people costs the media
//! engine, on one core.
//!
//! - **conference**: one conference's mix ([`vbin_callmedia::mixer::Mix`]) of M members, each
//!   behind its port (jitter queues both ways, as in a live call), ticked as fast as one
//!   core goes: members mixed in real time per core (`M × ticks/s ÷ 50`), for M from 2 to 64.
//! - **bridge**: N pairs of media sessions ([`vbin_callmedia::session::Session`], each with a
//!   far end that speaks every frame) bridged through their ports, ticked as fast as one core
//!   goes: bridged pairs per core at real time; against the same 2N sessions unbridged.
//!
//! Baseline for both, in the same run: the AudioSocket server's real-time sessions per core
//! (`vbin bench media`'s measure).

use anyhow::Context;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vbin_callmedia::far::{FarEnd, Inbound};
use vbin_callmedia::frame::FRAME_SAMPLES;
use vbin_callmedia::mixer::Mix;
use vbin_callmedia::port::{pair, PortEnd};
use vbin_callmedia::session::{Control, Session};
use vbin_event_schema::CallId;

/// Options of both.
#[derive(clap::Args, Debug)]
pub struct MixingArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2)]
    pub secs: u64,
    /// Bridged pairs (bridge only).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Concurrent AudioSocket sessions of the baseline.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A far end that says the same loud frame every tick and forgets what it hears.
struct Speaker(Vec<i16>);

impl FarEnd for Speaker {
    fn next_frame(&mut self, _: tokio::time::Instant) -> Inbound {
        Inbound {
            audio: self.0.clone(),
            dtmf: vec![],
        }
    }
    fn hear(&mut self, frame: &[i16]) {
        black_box(frame);
    }
    fn dtmf(&mut self, _: &str) -> bool {
        true
    }
}

fn speech(seed: usize) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|i| (((i * 37 + seed * 101) % 4000) as i16 - 2000) * 4)
        .collect()
}

/// Ticks per second of `tick` over `secs`.
fn ticks_per_sec(secs: u64, mut tick: impl FnMut()) -> f64 {
    for _ in 0..50 {
        tick();
    }
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        for _ in 0..10 {
            tick();
        }
        n += 10;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn conference(secs: u64) -> Value {
    let mut out = Vec::new();
    for members in [2usize, 4, 8, 16, 32, 64] {
        let mut mix = Mix::default();
        let ends: Vec<(PortEnd, Vec<i16>)> = (0..members)
            .map(|i| {
                let (session, mixer) = pair(format!("m{i}"), "mixer");
                mix.add(CallId::new(), mixer);
                (session, speech(i))
            })
            .collect();
        let per_sec = ticks_per_sec(secs, || {
            // Each member's session: its far end's frame in, the mix out.
            for (port, frame) in &ends {
                port.send(frame);
            }
            mix.tick();
            for (port, _) in &ends {
                black_box(port.recv());
            }
        });
        out.push(json!({
            "members": members,
            "ticks_per_sec": per_sec.round(),
            "us_per_tick": (1e6 / per_sec * 10.0).round() / 10.0,
            "realtime_members_per_core": (members as f64 * per_sec / 50.0).round(),
        }));
    }
    Value::Array(out)
}

fn sessions(n: usize) -> Vec<Session> {
    (0..n)
        .map(|i| {
            let (reports, _) = mpsc::unbounded_channel();
            Session::new(Box::new(Speaker(speech(i))), reports)
        })
        .collect()
}

fn bridge(secs: u64, pairs: usize) -> Value {
    let now = tokio::time::Instant::now();
    let mut alone = sessions(2 * pairs);
    let unbridged = ticks_per_sec(secs, || {
        for s in alone.iter_mut() {
            s.tick(now);
        }
    });
    let mut bridged = sessions(2 * pairs);
    for p in bridged.chunks_mut(2) {
        let (a, b) = pair("a", "b");
        p[0].control(Control::Link(a), now);
        p[1].control(Control::Link(b), now);
    }
    let linked = ticks_per_sec(secs, || {
        for s in bridged.iter_mut() {
            s.tick(now);
        }
    });
    json!({
        "pairs": pairs,
        "bridged_pairs_per_core": (pairs as f64 * linked / 50.0).round(),
        "unbridged_sessions_per_core": (2.0 * pairs as f64 * unbridged / 50.0).round(),
        "ratio_bridged_to_unbridged": ((linked / unbridged) * 1000.0).round() / 1000.0,
    })
}

/// `vbin bench conference`.
pub fn run_conference(a: &MixingArgs) -> anyhow::Result<()> {
    let baseline = crate::media::server(a.secs, a.sessions)?;
    let r = json!({
        "benchmark": "conference",
        "mix": conference(a.secs),
        "baseline_audiosocket_server": baseline,
        "note": "one core; members include their ports' jitter queues; a member costs what a \
                 session's tick does not already",
    });
    write(&r, a)
}

/// `vbin bench bridge`.
pub fn run_bridge(a: &MixingArgs) -> anyhow::Result<()> {
    let baseline = crate::media::server(a.secs, a.sessions)?;
    let r = json!({
        "benchmark": "bridge",
        "bridge": bridge(a.secs, a.pairs),
        "baseline_audiosocket_server": baseline,
        "note": "one core; each session's far end speaks every frame",
    });
    write(&r, a)
}

fn write(r: &Value, a: &MixingArgs) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(r)?);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(r)?).context("writing the JSON")?;
    }
    Ok(())
}
