//! Helpers for the tests: speech made with espeak-ng, converted with sox, recognized with
//! PocketSphinx and a grammar.

use crate::stt::pocketsphinx::PocketSphinx;
use crate::stt::SttProvider;
use std::path::PathBuf;
use std::process::Command;

/// The phrases the recognizer may hear in these tests (a JSGF grammar makes it exact).
pub const PHRASES: [&str; 5] = [
    "press two for sales",
    "press one for support",
    "thank you goodbye",
    "hello world",
    "please hold",
];

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Self {
        let d = std::env::temp_dir().join(format!("vbin-media-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `text` spoken by espeak-ng (en-us, 130 wpm) as a WAV file (22,050 Hz mono).
pub fn espeak_wav(text: &str) -> Vec<u8> {
    let s = Scratch::new();
    let wav = s.path("s.wav");
    let ok = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "130", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng must be installed (scripts/services installs it)")
        .success();
    assert!(ok, "espeak-ng failed");
    std::fs::read(&wav).unwrap()
}

/// Converts an audio file with sox: `input` (written with extension `in_ext`) to a file with
/// extension `out_ext`, with sox's output options `opts` (e.g. `-r 44100 -c 2`).
pub fn sox(input: &[u8], in_ext: &str, opts: &[&str], out_ext: &str) -> Vec<u8> {
    let s = Scratch::new();
    let (i, o) = (
        s.path(&format!("in.{in_ext}")),
        s.path(&format!("out.{out_ext}")),
    );
    std::fs::write(&i, input).unwrap();
    let ok = Command::new("sox")
        .arg(&i)
        .args(opts)
        .arg(&o)
        .status()
        .expect("sox must be installed (scripts/services installs it)")
        .success();
    assert!(ok, "sox failed");
    std::fs::read(&o).unwrap()
}

/// What PocketSphinx, limited to [`PHRASES`], hears in 16 kHz mono `pcm`.
pub async fn recognize(pcm: &[i16]) -> Vec<String> {
    let ps = PocketSphinx::new();
    assert!(
        ps.available(),
        "PocketSphinx and its en-us model must be installed (scripts/services installs them)"
    );
    let s = Scratch::new();
    let grammar = s.path("g.gram");
    std::fs::write(
        &grammar,
        format!(
            "#JSGF V1.0;\ngrammar vbin;\npublic <s> = {};\n",
            PHRASES.join(" | ")
        ),
    )
    .unwrap();
    let mut session = ps.with_grammar(&grammar).start("en-US").unwrap();
    // Half a second of silence around the speech helps the voice activity detector.
    let mut audio = vec![0i16; 8_000];
    audio.extend_from_slice(pcm);
    audio.extend(std::iter::repeat_n(0i16, 8_000));
    let sender = session.audio;
    tokio::spawn(async move {
        for f in audio.chunks(320) {
            if sender.send(f.to_vec().into()).await.is_err() {
                break;
            }
        }
    });
    let mut heard = Vec::new();
    while let Some(seg) = session.results.recv().await {
        heard.push(seg.unwrap().text);
    }
    heard
}

/// Root mean square of 20 ms windows of 16 kHz PCM: a coarse energy envelope.
pub fn envelope(pcm: &[i16]) -> Vec<f32> {
    pcm.chunks(320)
        .map(|w| (w.iter().map(|&s| f32::from(s).powi(2)).sum::<f32>() / w.len() as f32).sqrt())
        .collect()
}

/// Pearson correlation of two envelopes over their common length.
pub fn correlation(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f32>() / n as f32;
    let mb = b.iter().sum::<f32>() / n as f32;
    let cov: f32 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f32 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f32 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(f32::MIN_POSITIVE)
}
