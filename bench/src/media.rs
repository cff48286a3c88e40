//! `vbin bench media`: the media path's costs on one core.
//!
//! - G.711 encode/decode of 20 ms frames and of large buffers, samples/s, against a plain
//!   copy of the same samples (the memory-bound ceiling) as baseline.
//! - Resampling 8k->16k, 16k->8k and 48k->16k in 20 ms frames: frames/s and how many
//!   real-time streams one core carries.
//! - The AudioSocket server on a one-thread runtime: sessions streaming 8 kHz audio as fast as
//!   the server takes it, decoded and resampled to 16 kHz (the transcription path's work per
//!   frame); frames/s / 50 = real-time sessions per core.

use anyhow::Context;
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};
use vbin_media::{audiosocket, g711, resample::Resampler};

/// `vbin bench media` options.
#[derive(clap::Args, Debug)]
pub struct MediaArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2)]
    pub secs: u64,
    /// Concurrent AudioSocket sessions in the server measurement.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Runs `f` (which handles `per_call` samples) repeatedly for `secs`; returns samples/s.
fn rate(secs: u64, per_call: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < Duration::from_secs(secs) {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    (n as f64 * per_call as f64) / t.elapsed().as_secs_f64()
}

fn g(x: f64) -> f64 {
    (x / 1e7).round() / 100.0
}

fn codec(secs: u64) -> Value {
    let mut out = serde_json::Map::new();
    for len in [160usize, 1 << 20] {
        let pcm: Vec<i16> = (0..len).map(|i| ((i * 7919) % 65536) as i16).collect();
        let mut codes = vec![0u8; len];
        let mut back = vec![0i16; len];
        g711::ulaw_encode_slice(&pcm, &mut codes);
        let mut copy = vec![0i16; len];
        let baseline = rate(secs, len, || {
            copy.copy_from_slice(black_box(&pcm));
            black_box(&copy);
        });
        let ulaw_enc = rate(secs, len, || {
            g711::ulaw_encode_slice(black_box(&pcm), &mut codes);
            black_box(&codes);
        });
        let ulaw_dec = rate(secs, len, || {
            g711::ulaw_decode_slice(black_box(&codes), &mut back);
            black_box(&back);
        });
        let alaw_enc = rate(secs, len, || {
            g711::alaw_encode_slice(black_box(&pcm), &mut codes);
            black_box(&codes);
        });
        let alaw_dec = rate(secs, len, || {
            g711::alaw_decode_slice(black_box(&codes), &mut back);
            black_box(&back);
        });
        out.insert(
            format!("buffer_{len}_samples"),
            json!({
                "ulaw_encode_gsamples_per_sec": g(ulaw_enc),
                "ulaw_decode_gsamples_per_sec": g(ulaw_dec),
                "alaw_encode_gsamples_per_sec": g(alaw_enc),
                "alaw_decode_gsamples_per_sec": g(alaw_dec),
                "baseline_copy_gsamples_per_sec": g(baseline),
                "ratio_ulaw_encode": (ulaw_enc / baseline * 1000.0).round() / 1000.0,
            }),
        );
    }
    Value::Object(out)
}

fn resampling(secs: u64) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for (from, to) in [(8_000, 16_000), (16_000, 8_000), (48_000, 16_000)] {
        let mut r = Resampler::new(from, to)?;
        let frame: Vec<i16> = (0..r.input_frame_len())
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect();
        let mut buf = Vec::with_capacity(r.output_frame_len() * 2);
        let t = Instant::now();
        let mut frames = 0u64;
        while t.elapsed() < Duration::from_secs(secs) {
            for _ in 0..100 {
                buf.clear();
                r.process(black_box(&frame), &mut buf)?;
                black_box(&buf);
            }
            frames += 100;
        }
        let per_sec = frames as f64 / t.elapsed().as_secs_f64();
        out.insert(
            format!("{from}_to_{to}"),
            json!({
                "frames_per_sec": per_sec.round(),
                "us_per_frame": (1e6 / per_sec * 100.0).round() / 100.0,
                "realtime_streams_per_core": (per_sec / 50.0).round(),
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Sessions stream 20 ms frames of 8 kHz audio as fast as the server reads them; the server
/// decodes each frame and resamples it to 16 kHz. One-thread runtime = one core.
pub(crate) fn server(secs: u64, sessions: usize) -> anyhow::Result<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use tokio::io::AsyncWriteExt;
        let listener = audiosocket::bind("127.0.0.1:0".parse()?)?;
        let addr = listener.local_addr()?;
        let frames = Arc::new(AtomicU64::new(0));
        let counted = frames.clone();
        tokio::spawn(audiosocket::serve(
            listener,
            audiosocket::ServerSettings::default(),
            move |mut s| {
                let counted = counted.clone();
                async move {
                    let Ok(mut up) = Resampler::new(8_000, 16_000) else {
                        return;
                    };
                    let mut out = Vec::with_capacity(640);
                    while let Some(Ok(audiosocket::Inbound::Audio { samples, .. })) = s.next().await
                    {
                        out.clear();
                        if up.process(&samples, &mut out).is_ok() {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            },
        ));
        let mut frame = vec![0x10u8, 0x01, 0x40];
        frame.extend((0..160i16).flat_map(|i| (i * 50).to_le_bytes()));
        let burst: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * 50)
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for _ in 0..sessions {
            let (burst, stop) = (burst.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let mut hello = vec![0x01, 0x00, 0x10];
                hello.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
                if c.write_all(&hello).await.is_err() {
                    return;
                }
                while !stop.load(Ordering::Relaxed) {
                    if c.write_all(&burst).await.is_err() {
                        return;
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (n0, t0) = (frames.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let per_sec = (frames.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        anyhow::Ok(json!({
            "sessions": sessions,
            "frames_per_sec": per_sec.round(),
            "realtime_sessions_per_core": (per_sec / 50.0).round(),
            "note": "clients share the core: a lower bound for the server alone",
        }))
    })
}

/// Runs the benchmark.
pub fn run(a: &MediaArgs) -> anyhow::Result<()> {
    let r = json!({
        "benchmark": "media",
        "g711": codec(a.secs),
        "resample": resampling(a.secs)?,
        "audiosocket_server": server(a.secs, a.sessions)?,
        "target_g711_gsamples_per_sec": 1.0,
    });
    println!("{}", serde_json::to_string_pretty(&r)?);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?).context("writing the JSON")?;
    }
    Ok(())
}
