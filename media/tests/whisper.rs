//! Whisper tiny.en on Silero-cut utterances, end to end: real model, real ONNX Runtime, real
//! recorded telephone prompts (Debian's asterisk-core-sounds-en-wav, 8 kHz human speech)
//! streamed as a call's audio is: 20 ms frames at 8 kHz, resampled to 16 kHz.
//!
//! Needs the models `scripts/models` installs and the prompts `scripts/services` installs;
//! skips with a message when they are absent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vbin_media::resample::Resampler;
use vbin_media::stt::vad::{Segmenter, SegmenterConfig, SileroVad};
use vbin_media::stt::whisper::{ComputeType, Whisper, WhisperPaths, WhisperSettings, Window};
use vbin_media::stt::{Segment, SttError, SttInput, SttProvider};
use vbin_media::tts::piper::default_models_dir;

const SOUNDS: &str = "/usr/share/asterisk/sounds/en";
const TRANSCRIPTS: &str = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz";

/// The provider, or `None` (with a message) when `scripts/models` has not been run.
fn whisper() -> Option<Whisper> {
    let dir = default_models_dir();
    if !Whisper::available(&dir) {
        eprintln!(
            "SKIPPED: no Whisper tiny.en / Silero VAD / ONNX Runtime in {} (run scripts/models)",
            dir.display()
        );
        return None;
    }
    Some(Whisper::from_models_dir(&dir).expect("loading Whisper"))
}

/// A prompt's 8 kHz samples, or `None` (with a message) without Debian's prompts.
fn prompt(name: &str) -> Option<Vec<i16>> {
    let path = Path::new(SOUNDS).join(format!("{name}.wav"));
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!(
            "SKIPPED: no {} (asterisk-core-sounds-en-wav; scripts/services installs it)",
            path.display()
        );
        return None;
    };
    Some(wav_8k(&bytes))
}

/// The samples of a 16-bit mono 8 kHz WAV file.
fn wav_8k(bytes: &[u8]) -> Vec<i16> {
    assert_eq!(&bytes[..4], b"RIFF");
    let mut at = 12;
    let mut data = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &bytes[at + 8..(at + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            let channels = u16::from_le_bytes([body[2], body[3]]);
            let rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!(
                (channels, rate, bits),
                (1, 8_000, 16),
                "not 16-bit mono 8 kHz"
            );
        } else if id == b"data" {
            data = Some(body);
        }
        at += 8 + len + (len & 1);
    }
    data.expect("a data chunk")
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The reference transcript of each prompt.
fn transcripts() -> Vec<(String, String)> {
    let out = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(TRANSCRIPTS)
        .output()
        .expect("running gzip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(n, t)| (n.trim().to_string(), t.trim().to_string()))
        .collect()
}

/// Lowercase words, punctuation dropped, digits spelled out.
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

/// Streams 8 kHz audio through a session as a call does (20 ms frames, resampled to 16 kHz)
/// and collects the segments; also returns how long the last segment took after the end of
/// the audio.
async fn recognize(p: &Whisper, audio_8k: &[i16]) -> (Vec<Segment>, Duration) {
    let session = p.start("en-US").unwrap();
    let mut up = Resampler::new(8_000, 16_000).unwrap();
    let frame = up.input_frame_len();
    let mut out = Vec::new();
    for chunk in audio_8k.chunks(frame) {
        let mut f = chunk.to_vec();
        f.resize(frame, 0);
        out.clear();
        up.process(&f, &mut out).unwrap();
        session.audio.send(out.clone().into()).await.unwrap();
    }
    let ended = Instant::now();
    drop(session.audio);
    let mut results = session.results;
    let mut segs = Vec::new();
    while let Some(seg) = tokio::time::timeout(Duration::from_secs(60), results.recv())
        .await
        .expect("Whisper answered in time")
    {
        segs.push(seg.unwrap());
    }
    (segs, ended.elapsed())
}

fn silence_8k(ms: usize) -> Vec<i16> {
    vec![0; ms * 8]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prompts_with_silence_between_are_two_segments_with_their_words() {
    let Some(p) = whisper() else { return };
    let (Some(a), Some(b)) = (
        prompt("cannot-complete-as-dialed"),
        prompt("check-number-dial-again"),
    ) else {
        return;
    };
    let audio = [
        silence_8k(700),
        a.clone(),
        silence_8k(1_500),
        b,
        silence_8k(700),
    ]
    .concat();
    let (segs, _) = recognize(&p, &audio).await;
    eprintln!("{segs:#?}");
    assert_eq!(segs.len(), 2, "{segs:?}");
    let expect = [
        "your call cannot be completed as dialed",
        "please check the number and dial again",
    ];
    for (seg, want) in segs.iter().zip(expect) {
        assert!(seg.is_final);
        let (w, h) = (words(want), words(&seg.text));
        assert!(
            distance(&w, &h) <= 1,
            "heard {:?}, expected {want:?}",
            seg.text
        );
    }
    // Times: the first prompt starts after 0.7 s; the second after it and 1.5 s of silence.
    let a_ms = (a.len() / 8) as u64;
    assert!(
        segs[0].start_ms >= 450 && segs[0].start_ms <= 900,
        "{:?}",
        segs[0]
    );
    assert!(segs[0].end_ms <= 700 + a_ms + 400, "{:?}", segs[0]);
    let b_start = 700 + a_ms + 1_500;
    assert!(
        segs[1].start_ms + 300 >= b_start && segs[1].start_ms <= b_start + 400,
        "{:?}",
        segs[1]
    );
    assert!(segs[1].start_ms > segs[0].end_ms);
}

/// A conversation that ends the turn itself gets the words at once (before the segmenter's
/// 500 ms of silence), marked as the flush's answer; a flush over silence answers empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_cuts_the_utterance_at_once() {
    let Some(p) = whisper() else { return };
    let Some(a) = prompt("cannot-complete-as-dialed") else {
        return;
    };
    let mut session = p.start("en-US").unwrap();
    let feed = |pcm: Vec<i16>| {
        let audio = session.audio.clone();
        async move {
            for f in upsample(&pcm).chunks(320) {
                audio.send(f.to_vec().into()).await.unwrap();
            }
        }
    };
    feed(silence_8k(300)).await;
    session.audio.send(SttInput::Flush).await.unwrap();
    feed([silence_8k(400), a, silence_8k(200)].concat()).await;
    session.audio.send(SttInput::Flush).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let seg = tokio::time::timeout(Duration::from_secs(60), session.results.recv())
            .await
            .expect("Whisper answered in time")
            .unwrap()
            .unwrap();
        got.push(seg);
    }
    assert!(got[0].flushed && got[0].text.is_empty(), "{got:?}");
    assert!(got[1].flushed && got[1].is_final, "{got:?}");
    let (w, h) = (
        words("your call cannot be completed as dialed"),
        words(&got[1].text),
    );
    assert!(distance(&w, &h) <= 1, "heard {:?}", got[1].text);
    // Nothing more: the flushed utterance is not cut a second time by the segmenter.
    feed(silence_8k(1_000)).await;
    drop(session.audio);
    assert!(session.results.recv().await.is_none());
}

/// DTMF digits (ITU Q.23 pairs), 100 ms tone, 100 ms gap, at 8 kHz.
fn dtmf_8k(digits: &str) -> Vec<i16> {
    let mut out = Vec::new();
    for d in digits.chars() {
        let (lo, hi) = match d {
            '1' => (697.0, 1209.0),
            '2' => (697.0, 1336.0),
            '3' => (697.0, 1477.0),
            '4' => (770.0, 1209.0),
            '5' => (770.0, 1336.0),
            '6' => (770.0, 1477.0),
            '7' => (852.0, 1209.0),
            '8' => (852.0, 1336.0),
            '9' => (852.0, 1477.0),
            '0' => (941.0, 1336.0),
            '*' => (941.0, 1209.0),
            _ => (941.0, 1477.0),
        };
        let tau = 2.0 * std::f64::consts::PI;
        out.extend((0..800).map(|n| {
            let t = n as f64 / 8_000.0;
            (8_000.0 * ((tau * lo * t).sin() + (tau * hi * t).sin())) as i16
        }));
        out.extend(silence_8k(100));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_dtmf_and_beeps_give_no_segment() {
    let Some(p) = whisper() else { return };
    let beep = prompt("beep").unwrap_or_default();
    let audio = [
        silence_8k(1_000),
        dtmf_8k("1234567890*#"),
        silence_8k(1_000),
        beep.clone(),
        silence_8k(500),
        dtmf_8k("555"),
        beep,
        silence_8k(1_000),
    ]
    .concat();
    let (segs, _) = recognize(&p, &audio).await;
    assert!(segs.is_empty(), "{segs:?}");
    let (segs, _) = recognize(&p, &silence_8k(3_000)).await;
    assert!(segs.is_empty(), "{segs:?}");
}

#[tokio::test]
async fn refuses_other_languages() {
    let Some(p) = whisper() else { return };
    assert!(matches!(
        p.start("fr-FR"),
        Err(SttError::UnsupportedLanguage(l)) if l == "fr-FR"
    ));
    let mut s = p.start("en-GB").expect("English is taken");
    // Wait for the session's thread to end: a process exiting while it is still loading the
    // VAD into ONNX Runtime crashes in the runtime's teardown.
    drop(s.audio);
    while s.results.recv().await.is_some() {}
}

/// The first `n` prompts of at least 4 words without a bracketed description: (name,
/// reference transcript, 8 kHz samples).
fn prompts(n: usize) -> Vec<(String, String, Vec<i16>)> {
    let mut prompts = Vec::new();
    for (name, text) in transcripts() {
        let path: PathBuf = Path::new(SOUNDS).join(format!("{name}.wav"));
        if text.contains('[') || words(&text).len() < 4 || !path.exists() {
            continue;
        }
        prompts.push((name, text, wav_8k(&std::fs::read(&path).unwrap())));
        if prompts.len() == n {
            break;
        }
    }
    prompts
}

/// 8 kHz audio resampled to 16 kHz as a call's is, frame by frame.
fn upsample(pcm_8k: &[i16]) -> Vec<i16> {
    let mut up = Resampler::new(8_000, 16_000).unwrap();
    let mut out = Vec::new();
    let frame = up.input_frame_len();
    for c in pcm_8k.chunks(frame) {
        let mut f = c.to_vec();
        f.resize(frame, 0);
        up.process(&f, &mut out).unwrap();
    }
    out
}

/// `cargo nextest run --workspace --run-ignored only -E 'test(compare_windows)' --no-capture`:
/// WER and decode time per utterance when the encoder sees 30 s (as Whisper was trained) or
/// only the utterance and some silence, on the same VAD-cut utterances of 40 prompts.
#[test]
#[ignore = "a measurement, not a check"]
fn compare_windows() {
    if whisper().is_none() {
        return;
    }
    let paths = WhisperPaths::in_models_dir(&default_models_dir());
    let prompts = prompts(40);
    let utts: Vec<(String, Vec<Vec<i16>>)> = prompts
        .iter()
        .map(|(_, text, pcm)| {
            let audio = upsample(&[silence_8k(300), pcm.clone(), silence_8k(600)].concat());
            let mut seg = Segmenter::new(
                SileroVad::load(&paths.vad).unwrap(),
                SegmenterConfig::default(),
            );
            let mut u = seg.push(&audio).unwrap();
            u.extend(seg.finish());
            (text.clone(), u.into_iter().map(|u| u.samples).collect())
        })
        .collect();
    for window in [
        Window::Full,
        Window::Fit { pad_ms: 15_000 },
        Window::Fit { pad_ms: 10_000 },
        Window::Fit { pad_ms: 6_000 },
        Window::Fit { pad_ms: 1_000 },
    ] {
        let w = Whisper::load(
            &paths,
            WhisperSettings {
                window,
                ..Default::default()
            },
        )
        .unwrap();
        w.transcribe(&utts[0].1[0]).unwrap();
        let (mut errors, mut total, mut n) = (0, 0, 0);
        let mut took = Vec::new();
        let c = cpu_seconds();
        for (text, us) in &utts {
            let mut heard = Vec::new();
            for u in us {
                let t = Instant::now();
                heard.push(w.transcribe(u).unwrap().text);
                took.push(t.elapsed().as_secs_f64());
                n += 1;
            }
            let (r, h) = (words(text), words(&heard.join(" ")));
            errors += distance(&r, &h);
            total += r.len();
        }
        took.sort_by(f64::total_cmp);
        println!(
            "{window:?}: WER {:.3} ({errors}/{total}); decode per utterance p50 {:.3} s, \
             p95 {:.3} s wall, {:.3} s CPU mean ({n} utterances)",
            errors as f64 / total as f64,
            took[took.len() / 2],
            took[took.len() * 95 / 100],
            (cpu_seconds() - c) / n as f64,
        );
    }
}

/// `cargo test -p vbin-media --test whisper -- --ignored --nocapture`: WER and real-time
/// factor of sessions fed as fast as they take the audio, over the first 20 prompts of at least
/// 4 words; then, per utterance the VAD cuts, how long decoding it takes (in a live call the
/// segment comes that long after the segmenter's 500 ms of trailing silence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn measure_wer_rtf_and_latency() {
    let Some(p) = whisper() else { return };
    let prompts = prompts(20);
    let (mut errors, mut total) = (0, 0);
    let (mut audio_s, mut busy_s) = (0.0, 0.0);
    let cpu0 = cpu_seconds();
    for (name, text, pcm) in &prompts {
        let audio = [silence_8k(300), pcm.clone(), silence_8k(300)].concat();
        let started = Instant::now();
        let (segs, _) = recognize(&p, &audio).await;
        busy_s += started.elapsed().as_secs_f64();
        audio_s += audio.len() as f64 / 8_000.0;
        let heard: Vec<&str> = segs.iter().map(|s| s.text.as_str()).collect();
        let (r, h) = (words(text), words(&heard.join(" ")));
        let e = distance(&r, &h);
        errors += e;
        total += r.len();
        println!(
            "{name}: {} segment(s), {e} error(s): {:?}",
            segs.len(),
            heard.join(" | ")
        );
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "sessions: {} prompts, {audio_s:.1} s of audio, WER {:.3} ({errors}/{total}), \
         RTF {:.3} wall, {:.3} CPU",
        prompts.len(),
        errors as f64 / total.max(1) as f64,
        busy_s / audio_s,
        cpu / audio_s,
    );

    // Stage by stage, on 16 kHz audio.
    let paths = WhisperPaths::in_models_dir(&default_models_dir());
    let mut decode = Vec::new();
    let (mut vad_s, mut utt_s) = (0.0, 0.0);
    for (name, _, pcm) in &prompts {
        let mut up = Resampler::new(8_000, 16_000).unwrap();
        let mut audio = Vec::new();
        let frame = up.input_frame_len();
        for chunk in [silence_8k(300), pcm.clone(), silence_8k(600)]
            .concat()
            .chunks(frame)
        {
            let mut f = chunk.to_vec();
            f.resize(frame, 0);
            up.process(&f, &mut audio).unwrap();
        }
        let mut seg = Segmenter::new(
            SileroVad::load(&paths.vad).unwrap(),
            SegmenterConfig::default(),
        );
        let t = Instant::now();
        let mut utts = seg.push(&audio).unwrap();
        utts.extend(seg.finish());
        vad_s += t.elapsed().as_secs_f64();
        for u in utts {
            let t = Instant::now();
            let tr = p.transcribe(&u.samples).unwrap();
            let took = t.elapsed().as_secs_f64();
            let secs = u.samples.len() as f64 / 16_000.0;
            utt_s += secs;
            println!(
                "{name}: {secs:.2} s utterance decoded in {took:.2} s (no speech {:.2}, \
                 logprob {:.2}): {:?}",
                tr.no_speech_prob, tr.avg_logprob, tr.text
            );
            decode.push((took, secs));
        }
    }
    let mut took: Vec<f64> = decode.iter().map(|d| d.0).collect();
    took.sort_by(f64::total_cmp);
    let short: Vec<f64> = decode.iter().filter(|d| d.1 < 4.0).map(|d| d.0).collect();
    println!(
        "stages: VAD {:.4} s per s of audio; decode per utterance median {:.2} s, max {:.2} s, \
         mean {:.2} s for the {} under 4 s; decode RTF {:.3}",
        vad_s / audio_s,
        took[took.len() / 2],
        took[took.len() - 1],
        short.iter().sum::<f64>() / short.len().max(1) as f64,
        short.len(),
        took.iter().sum::<f64>() / utt_s,
    );
}

/// `cargo test -p vbin-media --test whisper -- --ignored --nocapture compare`: wall and CPU
/// time per decode of a few short prompts for each compute type and thread count.
#[test]
#[ignore = "a measurement, not a check"]
fn compare_compute_types_and_threads() {
    if whisper().is_none() {
        return;
    }
    let paths = WhisperPaths::in_models_dir(&default_models_dir());
    let names = [
        "cannot-complete-as-dialed",
        "check-number-dial-again",
        "all-circuits-busy-now",
    ];
    let utts: Vec<Vec<i16>> = names
        .iter()
        .filter_map(|n| prompt(n))
        .map(|pcm| {
            let mut up = Resampler::new(8_000, 16_000).unwrap();
            let mut out = Vec::new();
            let frame = up.input_frame_len();
            for c in pcm.chunks(frame) {
                let mut f = c.to_vec();
                f.resize(frame, 0);
                up.process(&f, &mut out).unwrap();
            }
            out
        })
        .collect();
    for compute_type in [
        ComputeType::INT8,
        ComputeType::INT8_FLOAT32,
        ComputeType::FLOAT32,
    ] {
        for threads in [1, 2] {
            let settings = WhisperSettings {
                compute_type,
                threads,
                ..Default::default()
            };
            let w = Whisper::load(&paths, settings).unwrap();
            w.transcribe(&utts[0]).unwrap();
            let (t, c) = (Instant::now(), cpu_seconds());
            let mut text = Vec::new();
            for u in &utts {
                text.push(w.transcribe(u).unwrap().text);
            }
            let n = utts.len() as f64;
            println!(
                "{compute_type} x{threads}: {:.2} s wall, {:.2} s CPU per decode: {text:?}",
                t.elapsed().as_secs_f64() / n,
                (cpu_seconds() - c) / n
            );
        }
    }
}

/// CPU time of this process so far (user + system), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// In-band DTMF detection hears no key in speech: every prompt of Debian's Asterisk sounds
/// (358 of them), while the same detector hears keys between them.
#[test]
fn in_band_dtmf_hears_no_key_in_speech_prompts() {
    let Ok(dir) = std::fs::read_dir(SOUNDS) else {
        eprintln!("SKIPPED: no {SOUNDS} (scripts/services installs it)");
        return;
    };
    let mut names: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wav"))
        .collect();
    names.sort();
    assert!(names.len() > 100, "{}", names.len());
    let mut detector = vbin_media::dtmf::Detector::new();
    let mut false_keys = Vec::new();
    for path in &names {
        let samples = wav_8k(&std::fs::read(path).unwrap());
        for k in detector.push(&samples) {
            false_keys.push(format!("{} -> {k}", path.display()));
        }
        detector.push(&vec![0; 800]);
    }
    assert!(false_keys.is_empty(), "{false_keys:?}");
    // The detector is not deaf: the clip generator's keys, at 8 kHz, come through.
    let wide = vbin_media::clip::dtmf("4#", 100, 100);
    let mut down = vbin_media::resample::Resampler::new(16_000, 8_000).unwrap();
    let mut keys = Vec::new();
    for frame in wide.chunks_exact(320) {
        down.process(frame, &mut keys).unwrap();
    }
    assert_eq!(detector.push(&keys), ['4', '#']);
}
