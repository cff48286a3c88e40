//! The Piper voice end to end: real model, real ONNX Runtime, real espeak-ng; what it says is
//! checked by listening to it with PocketSphinx (a JSGF grammar of near-miss phrases).
//!
//! Needs the models `scripts/models` installs (`scripts/services` runs it); skips with a
//! message when they are absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vbin_media::stt::pocketsphinx::PocketSphinx;
use vbin_media::stt::SttProvider;
use vbin_media::tts::piper::{default_models_dir, runtime_in_models_dir, Piper, PiperPaths};
use vbin_media::tts::{TtsError, TtsProvider, TtsRequest, TTS_RATE_HZ};

/// The voice, or `None` (with a message) when `scripts/models` has not been run.
fn piper() -> Option<Piper> {
    let dir = default_models_dir();
    let paths = PiperPaths::in_models_dir(&dir);
    if !paths.model.is_file() || !runtime_in_models_dir(&dir).exists() {
        eprintln!(
            "SKIPPED: no Piper voice / ONNX Runtime in {} (run scripts/models)",
            dir.display()
        );
        return None;
    }
    Some(Piper::from_models_dir(&dir).expect("loading the Piper voice"))
}

/// "Press two for sales" and phrases a poor voice would be heard as.
const PRESS_TWO_AND_NEAR_MISSES: [&str; 5] = [
    "press two for sales",
    "press one for sales",
    "press three for sales",
    "press two for support",
    "stay on the line",
];

/// What PocketSphinx hears in `audio` (16 kHz), knowing only `phrases`.
async fn hear(audio: &[i16], phrases: &[&str]) -> String {
    assert!(
        Path::new("/usr/share/pocketsphinx/model/en-us/en-us").is_dir(),
        "PocketSphinx's en-us model must be installed (scripts/services installs it)"
    );
    let grammar: PathBuf =
        std::env::temp_dir().join(format!("vbin-piper-test-{}.gram", uuid::Uuid::new_v4()));
    std::fs::write(
        &grammar,
        format!(
            "#JSGF V1.0;\ngrammar vbin;\npublic <s> = {};\n",
            phrases.join(" | ")
        ),
    )
    .unwrap();
    let session = PocketSphinx::new()
        .with_grammar(&grammar)
        .start("en-US")
        .unwrap();
    // Half a second of silence around the speech, so the detector sees it start and end.
    let silence = vec![0i16; TTS_RATE_HZ as usize / 2];
    let padded: Vec<i16> = [&silence[..], audio, &silence[..]].concat();
    for frame in padded.chunks(320) {
        session.audio.send(frame.to_vec().into()).await.unwrap();
    }
    drop(session.audio);
    let mut results = session.results;
    let mut heard = Vec::new();
    while let Some(seg) = tokio::time::timeout(Duration::from_secs(30), results.recv())
        .await
        .expect("PocketSphinx answered in time")
    {
        heard.push(seg.unwrap().text);
    }
    let _ = std::fs::remove_file(&grammar);
    heard.join(" ")
}

#[tokio::test]
async fn says_press_two_for_sales() {
    let Some(piper) = piper() else { return };
    let speech = piper
        .synthesize(&TtsRequest::new("Press two for sales.", "en-US"))
        .await
        .unwrap();
    let secs = speech.len() as f64 / TTS_RATE_HZ as f64;
    assert!((0.7..3.0).contains(&secs), "{secs} s of speech");
    let peak = speech.iter().map(|s| s.unsigned_abs()).max().unwrap();
    assert!(peak > 20_000, "peak {peak}");
    let heard = hear(&speech, &PRESS_TWO_AND_NEAR_MISSES).await;
    assert_eq!(heard, "press two for sales");
}

#[tokio::test]
async fn speaks_several_sentences_and_checks_requests() {
    let Some(piper) = piper() else { return };
    let one = piper
        .synthesize(&TtsRequest::new("Thank you.", "en-US"))
        .await
        .unwrap();
    let two = piper
        .synthesize(&TtsRequest::new(
            "Thank you. Goodbye, and have a nice day!",
            "en",
        ))
        .await
        .unwrap();
    // The second sentence and the 0.2 s between them make it clearly longer.
    assert!(two.len() > one.len() + TTS_RATE_HZ as usize / 2);
    let heard = hear(
        &two,
        &[
            "thank you goodbye and have a nice day",
            "thank you goodbye",
            "thank you",
            "goodbye and have a nice day",
        ],
    )
    .await;
    assert_eq!(heard, "thank you goodbye and have a nice day");

    let mut req = TtsRequest::new("Bonjour", "fr-FR");
    assert!(matches!(
        piper.synthesize(&req).await,
        Err(TtsError::UnsupportedLanguage(_))
    ));
    req.language = "en-US".into();
    req.voice = Some("amy".into());
    assert!(matches!(
        piper.synthesize(&req).await,
        Err(TtsError::UnknownVoice(_))
    ));
    req.voice = Some("en_US-joe-medium".into());
    assert!(piper.synthesize(&req).await.is_ok());
    for bad in ["", "  ", "...!"] {
        assert!(matches!(
            piper.synthesize(&TtsRequest::new(bad, "en-US")).await,
            Err(TtsError::BadText)
        ));
    }
}

#[tokio::test]
async fn runs_requests_concurrently() {
    let Some(piper) = piper() else { return };
    let piper = Arc::new(piper);
    let jobs: Vec<_> = ["Press one.", "Press two.", "Press three.", "Press four."]
        .into_iter()
        .map(|t| {
            let p = piper.clone();
            tokio::spawn(async move { p.synthesize(&TtsRequest::new(t, "en-US")).await })
        })
        .collect();
    for j in jobs {
        assert!(j.await.unwrap().unwrap().len() > TTS_RATE_HZ as usize / 2);
    }
}

/// CPU time this process used so far (user + system; Linux, 10 ms resolution): on a busy
/// machine it shows what a request costs better than the wall clock.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// `cargo test -p vbin-media --release --test piper -- --ignored --nocapture`
#[tokio::test]
#[ignore = "a measurement: prints latency and real-time factor"]
async fn measure_latency_and_rtf() {
    let Some(piper) = piper() else { return };
    let t = Instant::now();
    let _ = piper
        .synthesize(&TtsRequest::new("Warm up.", "en-US"))
        .await
        .unwrap();
    eprintln!("first request (cold): {:?}", t.elapsed());

    let prompt = TtsRequest::new("Press two for sales.", "en-US");
    let mut lat = Vec::new();
    let cpu = cpu_time();
    for _ in 0..10 {
        let t = Instant::now();
        let s = piper.synthesize(&prompt).await.unwrap();
        lat.push((t.elapsed(), s.len()));
    }
    let cpu_each = (cpu_time() - cpu) / 10;
    lat.sort();
    let (median, samples) = lat[lat.len() / 2];
    eprintln!(
        "short prompt ({:.2} s of audio): median {:?}, min {:?}, max {:?} to the whole clip; \
         {cpu_each:?} CPU each (this process; espeak-ng's own not counted)",
        samples as f64 / TTS_RATE_HZ as f64,
        median,
        lat[0].0,
        lat[lat.len() - 1].0
    );

    let long = TtsRequest::new(
        "Thank you for calling. Your call is important to us. For sales, press one. \
         For support, press two. To hear these options again, press star. \
         Please stay on the line and the next available agent will be with you shortly.",
        "en-US",
    );
    let (t, cpu) = (Instant::now(), cpu_time());
    let s = piper.synthesize(&long).await.unwrap();
    let took = t.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu).as_secs_f64();
    let audio = s.len() as f64 / TTS_RATE_HZ as f64;
    eprintln!(
        "long prompt: {audio:.2} s of audio in {took:.3} s: RTF {:.3} ({cpu:.2} s CPU: {:.3} CPU-s per s)",
        took / audio,
        cpu / audio
    );
}

#[tokio::test]
async fn deterministic_speech_is_the_same_samples_every_time_and_still_heard() {
    let Some(piper) = piper() else { return };
    let text = TtsRequest::new("Press two for sales.", "en-US");
    // The voice's own variation: two syntheses of one text differ.
    let (a, b) = (
        piper.synthesize(&text).await.unwrap(),
        piper.synthesize(&text).await.unwrap(),
    );
    assert!(
        a[..] != b[..],
        "the voice's noise scales vary each synthesis"
    );
    let fixed = piper.deterministic();
    let (a, b) = (
        fixed.synthesize(&text).await.unwrap(),
        fixed.synthesize(&text).await.unwrap(),
    );
    assert!(a[..] == b[..], "{} and {} samples", a.len(), b.len());
    let heard = hear(&a, &PRESS_TWO_AND_NEAR_MISSES).await;
    assert_eq!(heard, "press two for sales");
}
