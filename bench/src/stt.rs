//! `vbin bench stt`: word error rate and speed of the offline recognizers on real recorded
//! prompts.
//!
//! Debian's `asterisk-core-sounds-en-wav` holds human recordings at 8 kHz with their
//! reference transcripts (`core-sounds-en.txt.gz`). Each prompt goes through the media path as
//! a call's audio does: 20 ms frames at 8 kHz, resampled to 16 kHz by [`Resampler`], streamed
//! to each provider: Whisper tiny.en on Silero-cut utterances (the models `scripts/models`
//! installs) and PocketSphinx (free speech, its US English language model; no grammar).
//! WER = word-level edit distance / reference words, over all prompts; RTF = time from the
//! first frame to the last segment / seconds of audio (frames are sent as fast as the
//! provider takes them).
//!
//! Text-to-speech intelligibility (`--tts`, with Whisper): each prompt's reference text is
//! synthesised by each voice (Piper joe-medium, espeak-ng), brought to 8 kHz as a call would
//! carry it, and recognized by Whisper the same way: the WER of what a caller would hear.

use anyhow::{bail, Context};
use serde_json::json;
use std::io::Read;
use std::time::Instant;
use vbin_media::resample::Resampler;
use vbin_media::stt::pocketsphinx::PocketSphinx;
use vbin_media::stt::whisper::Whisper;
use vbin_media::stt::SttProvider;
use vbin_media::tts::espeak::EspeakNg;
use vbin_media::tts::piper::Piper;
use vbin_media::tts::{TtsProvider, TtsRequest, TTS_RATE_HZ};

/// `vbin bench stt` options.
#[derive(clap::Args, Debug)]
pub struct SttArgs {
    /// Prompts to recognize (the first N with at least `min_words` words, in file order).
    #[arg(long, default_value_t = 40)]
    pub prompts: usize,
    /// Shortest prompt used, in words.
    #[arg(long, default_value_t = 4)]
    pub min_words: usize,
    /// Where the sounds are.
    #[arg(long, default_value = "/usr/share/asterisk/sounds/en")]
    pub sounds: std::path::PathBuf,
    /// The reference transcripts.
    #[arg(
        long,
        default_value = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    )]
    pub transcripts: std::path::PathBuf,
    /// Providers to measure, comma-separated: whisper, pocketsphinx.
    #[arg(long, value_delimiter = ',', default_values_t = ["whisper".to_string(), "pocketsphinx".to_string()])]
    pub providers: Vec<String>,
    /// Where `scripts/models` installed Whisper, Silero VAD and ONNX Runtime (default:
    /// `VBIN_MODELS_DIR` or `~/.cache/vbin/models`).
    #[arg(long)]
    pub models: Option<std::path::PathBuf>,
    /// Voices whose intelligibility Whisper measures, comma-separated: piper, espeak (none:
    /// empty).
    #[arg(long, value_delimiter = ',', default_values_t = ["piper".to_string(), "espeak".to_string()])]
    pub tts: Vec<String>,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Lowercase words; digits spelled out (the recognizer writes words).
fn words(s: &str) -> Vec<String> {
    const DIGITS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    s.to_lowercase()
        .replace(|c: char| !(c.is_ascii_alphanumeric() || c == '\''), " ")
        .split_whitespace()
        .flat_map(|w| {
            if w.chars().all(|c| c.is_ascii_digit()) {
                w.chars()
                    .map(|d| DIGITS[d as usize - '0' as usize].to_string())
                    .collect::<Vec<_>>()
            } else {
                vec![w.to_string()]
            }
        })
        .collect()
}

/// Word-level Levenshtein distance.
fn distance(a: &[String], b: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A prompt: its name, reference transcript and 8 kHz samples.
struct Prompt {
    name: String,
    reference: String,
    pcm: Vec<i16>,
    rate: u32,
}

/// Runs the benchmark.
pub async fn run(a: &SttArgs) -> anyhow::Result<()> {
    let mut providers: Vec<(Box<dyn SttProvider>, &str)> = Vec::new();
    for name in &a.providers {
        match name.as_str() {
            "pocketsphinx" => {
                let p = PocketSphinx::new();
                if !p.available() {
                    bail!("pocketsphinx is not installed (scripts/services installs it)");
                }
                providers.push((Box::new(p), "pocketsphinx (en-us, free speech)"));
            }
            "whisper" => {
                let dir = a
                    .models
                    .clone()
                    .unwrap_or_else(vbin_media::tts::piper::default_models_dir);
                if !Whisper::available(&dir) {
                    bail!(
                        "no Whisper tiny.en / Silero VAD / ONNX Runtime in {} (run scripts/models, \
                         or --providers pocketsphinx)",
                        dir.display()
                    );
                }
                providers.push((
                    Box::new(Whisper::from_models_dir(&dir)?),
                    "whisper tiny.en (CTranslate2 int8, greedy) on Silero VAD v6 utterances",
                ));
            }
            other => bail!("unknown provider {other:?} (whisper, pocketsphinx)"),
        }
    }
    let prompts = load_prompts(a)?;
    let mut results = Vec::new();
    for (provider, label) in &providers {
        results.push(measure(provider.as_ref(), label, &prompts).await?);
    }
    let mut voices = Vec::new();
    let whisper = providers.iter().find(|(p, _)| p.name() == "whisper");
    if let (Some((whisper, _)), false) = (whisper, a.tts.is_empty()) {
        let dir = a
            .models
            .clone()
            .unwrap_or_else(vbin_media::tts::piper::default_models_dir);
        for voice in &a.tts {
            let tts: Box<dyn TtsProvider> = match voice.as_str() {
                "piper" => Box::new(Piper::from_models_dir(&dir)?),
                "espeak" => Box::new(EspeakNg::new()),
                other => bail!("unknown voice {other:?} (piper, espeak)"),
            };
            let spoken = speak(tts.as_ref(), &prompts).await?;
            let label = format!("{voice} voice at 8 kHz, heard by Whisper tiny.en");
            let mut r = measure(whisper.as_ref(), &label, &spoken).await?;
            r["voice"] = json!(voice);
            voices.push(r);
        }
    }
    let r = json!({
        "benchmark": "stt",
        "prompts": prompts.len(),
        "providers": results,
        "tts_intelligibility": voices,
    });
    println!("{}", serde_json::to_string_pretty(&r)?);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)?;
    }
    Ok(())
}

/// The first `a.prompts` prompts of at least `a.min_words` words, in file order.
fn load_prompts(a: &SttArgs) -> anyhow::Result<Vec<Prompt>> {
    let mut text = String::new();
    flate2_free_gunzip(&a.transcripts, &mut text)?;
    let mut prompts = Vec::new();
    for line in text.lines() {
        let Some((name, reference)) = line.split_once(": ") else {
            continue;
        };
        let path = a.sounds.join(format!("{}.wav", name.trim()));
        if reference.contains('[') || words(reference).len() < a.min_words || !path.exists() {
            continue;
        }
        let mut wav = hound::WavReader::open(&path).with_context(|| path.display().to_string())?;
        let rate = wav.spec().sample_rate;
        let pcm: Vec<i16> = wav.samples::<i16>().collect::<Result<_, _>>()?;
        prompts.push(Prompt {
            name: name.trim().to_string(),
            reference: reference.to_string(),
            pcm,
            rate,
        });
        if prompts.len() == a.prompts {
            break;
        }
    }
    if prompts.is_empty() {
        bail!(
            "no prompt of {} found as a .wav in {} (Debian's asterisk-core-sounds-en and \
             asterisk-core-sounds-en-wav; scripts/services installs them)",
            a.transcripts.display(),
            a.sounds.display()
        );
    }
    Ok(prompts)
}

/// The prompts' reference texts said by `tts`, at 8 kHz (as a call carries them).
async fn speak(tts: &dyn TtsProvider, prompts: &[Prompt]) -> anyhow::Result<Vec<Prompt>> {
    let mut out = Vec::with_capacity(prompts.len());
    for p in prompts {
        let speech = tts
            .synthesize(&TtsRequest::new(p.reference.clone(), "en-US"))
            .await?;
        let mut down = Resampler::new(TTS_RATE_HZ, 8_000)?;
        let frame = down.input_frame_len();
        let mut pcm = Vec::new();
        for chunk in speech.chunks(frame) {
            let mut f = chunk.to_vec();
            f.resize(frame, 0);
            down.process(&f, &mut pcm)?;
        }
        out.push(Prompt {
            name: p.name.clone(),
            reference: p.reference.clone(),
            pcm,
            rate: 8_000,
        });
    }
    Ok(out)
}

/// WER and RTF of one provider over the prompts.
async fn measure(
    provider: &dyn SttProvider,
    label: &str,
    prompts: &[Prompt],
) -> anyhow::Result<serde_json::Value> {
    let (mut errors, mut total) = (0usize, 0usize);
    let (mut audio_s, mut busy_s) = (0f64, 0f64);
    let mut samples_out = Vec::new();
    for p in prompts {
        let started = Instant::now();
        let mut up = Resampler::new(p.rate, 16_000)?;
        let mut session = provider.start("en-US")?;
        let frame = up.input_frame_len();
        let mut out = Vec::new();
        for chunk in p.pcm.chunks(frame) {
            let mut f = chunk.to_vec();
            f.resize(frame, 0);
            out.clear();
            up.process(&f, &mut out)?;
            session.audio.send(out.clone().into()).await?;
        }
        drop(session.audio);
        let mut heard = Vec::new();
        while let Some(seg) = session.results.recv().await {
            heard.push(seg?.text);
        }
        busy_s += started.elapsed().as_secs_f64();
        audio_s += p.pcm.len() as f64 / f64::from(p.rate);
        let (r, h) = (words(&p.reference), words(&heard.join(" ")));
        let e = distance(&r, &h);
        errors += e;
        total += r.len();
        samples_out.push(
            json!({"prompt": p.name, "reference": r.join(" "), "heard": h.join(" "),
                                "errors": e, "words": r.len()}),
        );
    }
    let wer = errors as f64 / total.max(1) as f64;
    let rtf = busy_s / audio_s.max(1e-9);
    Ok(json!({
        "provider": provider.name(),
        "description": label,
        "reference_words": total,
        "word_errors": errors,
        "wer": (wer * 1000.0).round() / 1000.0,
        "audio_s": (audio_s * 10.0).round() / 10.0,
        "rtf": (rtf * 1000.0).round() / 1000.0,
        "samples": samples_out.iter().take(10).collect::<Vec<_>>(),
    }))
}

/// Reads a gzip file through the system's `gzip -dc` (one transcript file; no crate needed).
fn flate2_free_gunzip(path: &std::path::Path, out: &mut String) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child
        .stdout
        .take()
        .context("gzip output")?
        .read_to_string(out)?;
    if !child.wait()?.success() {
        bail!("gzip -dc {} failed", path.display());
    }
    Ok(())
}
