//! `vbin bench ai`: AI voice conversations on the in-process platform (every part).
//!
//! Each of N sandbox calls runs `ai_talk`; its far end asks `turns` questions (spoken by the
//! platform's text-to-speech, heard by the conversation's speech-to-text), 7 s apart, the
//! callers' questions spread evenly over those 7 s (independent callers), and the assistant
//! answers each. The model is either a zero-latency fake OpenAI-compatible
//! server in this process (`--engine fake`, the default: what is measured is the platform's
//! own path, VAD, speech-to-text, sentences, text-to-speech, pacing) or the embedded model
//! (`--engine local`). Reported, per answered turn (from the messages' latencies):
//! voice-to-voice p50/p95 (end of the caller's speech -> first frame of the answer sent), and
//! the stages' p50 (speech-to-text, the model's first token, the first sentence's audio); and
//! conversations per core: N / (CPU seconds the process used per second) while they run.

use crate::{Bench, Services};
use anyhow::bail;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use vbin_platform::Part;

/// `vbin bench ai` options.
#[derive(clap::Args, Debug)]
pub struct AiArgs {
    /// Concurrent conversations.
    #[arg(long, default_value_t = 4)]
    pub calls: usize,
    /// Questions each caller asks.
    #[arg(long, default_value_t = 3)]
    pub turns: usize,
    /// The model: `fake` (zero latency, in this process) or `local` (the embedded model).
    #[arg(long, default_value = "fake", value_parser = ["fake", "local"])]
    pub engine: String,
    #[command(flatten)]
    pub services: Services,
}

/// What the fake model answers (one short sentence, like a phone assistant), numbered so that
/// text-to-speech never answers from its cache.
const ANSWER: &str = "We open at nine in the morning.";
/// What each caller asks.
const QUESTION: &str = "What time do you open tomorrow?";
/// Between two questions (room for the answer).
const TURN_MS: u64 = 7_000;

/// An OpenAI-compatible server that streams [`ANSWER`] at once.
async fn fake_model() -> anyhow::Result<String> {
    use axum::response::IntoResponse;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ASKED: AtomicUsize = AtomicUsize::new(0);
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            let n = ASKED.fetch_add(1, Ordering::Relaxed) + 1;
            let answer = format!("Answer {n}. {ANSWER}");
            let mut sse = String::new();
            for w in answer.split_inclusive(' ') {
                let c = json!({"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": null}]});
                sse += &format!("data: {c}\n\n");
            }
            let end = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            sse += &format!("data: {end}\n\ndata: [DONE]\n\n");
            ([("content-type", "text/event-stream")], sse).into_response()
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// The p-quantile (0..1) of `v` (sorted here), `None` if empty.
fn quantile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    Some(v[i])
}

/// Runs the benchmark.
pub async fn run(a: &AiArgs) -> anyhow::Result<Value> {
    use reqwest::Method;
    let mut services = a.services.clone();
    // The fake model listens on loopback, which the SSRF guard refuses unless allowed.
    services.platform.webhooks.allow_nets = "127.0.0.1/32".parse().map_err(anyhow::Error::msg)?;
    let b = Bench::start(&services, 8, &Part::ALL).await?;
    let ai = match a.engine.as_str() {
        "local" => json!({"name": "bench", "engine_model": "local.gemma-3-270m",
                          "init_prompt": "You answer the phone for a bakery. It opens at nine."}),
        _ => json!({"name": "bench", "engine_model": "openai.fake",
                    "engine_url": fake_model().await?,
                    "init_prompt": "You answer the phone for a bakery."}),
    };
    let ai = b.send_json(Method::POST, "/v1.0/ais", ai).await?;
    // Independent callers: their questions spread evenly over each turn's period rather than
    // all at the same instant.
    let hangup_at = 5_000 + a.turns as u64 * TURN_MS + 3_000 + TURN_MS;
    let started = Instant::now();
    let (cpu0, t0) = (crate::flows::cpu_seconds()?, Instant::now());
    for i in 0..a.calls {
        let offset = i as u64 * TURN_MS / a.calls.max(1) as u64;
        let mut script: Vec<Value> = (0..a.turns)
            .map(|t| json!({"at_ms": 5_000 + offset + t as u64 * TURN_MS, "say": QUESTION}))
            .collect();
        script.push(
            json!({"at_ms": 5_000 + offset + a.turns as u64 * TURN_MS + 3_000, "hangup": true}),
        );
        b.send_json(
            Method::POST,
            "/v1.0/calls",
            json!({"source": "+15550001000", "destinations": ["+15550002000"],
                   "actions": [{"type": "ai_talk", "option": {"ai_id": ai["id"]}}, {"type": "hangup"}],
                   "sandbox": {"script": script}}),
        )
        .await?;
    }
    // Until every call has ended.
    let deadline = Duration::from_millis(hangup_at + 60_000);
    loop {
        let live = crate::flows::gauge(&crate::flows::metrics(&b).await?, "vbin_media_sessions")
            .unwrap_or(1.0);
        if live <= 0.0 && started.elapsed() > Duration::from_secs(3) {
            break;
        }
        if started.elapsed() > deadline {
            bail!("calls still up {} s after their hangup", deadline.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (cpu, wall) = (
        crate::flows::cpu_seconds()? - cpu0,
        t0.elapsed().as_secs_f64(),
    );
    // Every message (newest first), until the last page.
    let mut messages = Vec::new();
    let mut token = String::new();
    loop {
        let page = b
            .get_json(&format!(
                "/v1.0/aimessages?page_size=100&page_token={token}"
            ))
            .await?;
        messages.extend(page["result"].as_array().cloned().unwrap_or_default());
        match page["next_page_token"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => break,
        }
    }
    let answers: Vec<&Value> = messages
        .iter()
        .filter(|m| m["role"] == "assistant" && m["latency"]["voice_to_voice_ms"].is_u64())
        .collect();
    let users = messages.iter().filter(|m| m["role"] == "user").count();
    let stage = |k: &str| -> Vec<f64> {
        answers
            .iter()
            .filter_map(|m| m["latency"][k].as_f64())
            .collect()
    };
    let (mut v2v, mut stt, mut llm, mut tts) = (
        stage("voice_to_voice_ms"),
        stage("stt_ms"),
        stage("llm_first_token_ms"),
        stage("tts_first_audio_ms"),
    );
    if answers.is_empty() {
        bail!("no answered turn: {} messages", messages.len());
    }
    let cores_used = cpu / wall;
    let r = json!({
        "benchmark": "ai",
        "command": format!("vbin bench ai --engine {} --calls {} --turns {}", a.engine, a.calls, a.turns),
        "engine": a.engine,
        "calls": a.calls,
        "turns_asked": a.calls * a.turns,
        "turns_heard": users,
        "turns_answered": answers.len(),
        "voice_to_voice_ms": {"p50": quantile(&mut v2v, 0.5), "p95": quantile(&mut v2v, 0.95)},
        "stages_p50_ms": {
            "stt": quantile(&mut stt, 0.5),
            "llm_first_token": quantile(&mut llm, 0.5),
            "tts_first_audio": quantile(&mut tts, 0.5),
        },
        "wall_secs": (wall * 10.0).round() / 10.0,
        "cores_used": (cores_used * 1000.0).round() / 1000.0,
        "conversations_per_core": (a.calls as f64 / cores_used.max(1e-9) * 10.0).round() / 10.0,
        "note": "voice-to-voice = end of the caller's speech (VAD) -> first frame of the answer \
                 sent, the end-of-turn silence (500 ms) included; stt = speech-to-text's answer to \
                 the turn's last flush (sent at 200 ms of silence: it decodes while the rest \
                 passes); conversations per core counts the whole process over the calls' lifetime",
    });
    b.stop().await;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.95), Some(5.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
