//! The offline default: CMU PocketSphinx (Debian's `pocketsphinx` and `pocketsphinx-en-us`),
//! run as `pocketsphinx_continuous` reading raw 16 kHz PCM on stdin. Its voice activity
//! detection cuts utterances; each is printed (flushed) when it ends, then its words with
//! times (`-time yes`), which give the segment's start and end.
//!
//! Free speech is weak at telephone quality; a JSGF grammar ([`PocketSphinx::with_grammar`])
//! makes recognition of a known vocabulary exact, which the tests use.

use super::{Segment, SttError, SttInput, SttProvider, SttSession, AUDIO_QUEUE, STT_RATE_HZ};
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Where Debian installs the US English model.
pub const DEBIAN_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// The PocketSphinx provider.
#[derive(Clone, Debug)]
pub struct PocketSphinx {
    binary: PathBuf,
    model_dir: PathBuf,
    grammar: Option<PathBuf>,
}

impl Default for PocketSphinx {
    fn default() -> Self {
        Self {
            binary: "pocketsphinx_continuous".into(),
            model_dir: DEBIAN_MODEL_DIR.into(),
            grammar: None,
        }
    }
}

impl PocketSphinx {
    /// The Debian model, free speech (its language model).
    pub fn new() -> Self {
        Self::default()
    }

    /// Recognizes only what the JSGF grammar at `path` allows.
    pub fn with_grammar(mut self, path: impl Into<PathBuf>) -> Self {
        self.grammar = Some(path.into());
        self
    }

    /// Another model directory (holding `en-us/`, `en-us.lm.bin`, `cmudict-en-us.dict`).
    pub fn with_model_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.model_dir = dir.into();
        self
    }

    /// Whether the recognizer and its model are installed.
    pub fn available(&self) -> bool {
        self.model_dir.join("en-us").is_dir()
            && std::process::Command::new(&self.binary)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
    }

    fn command(&self) -> tokio::process::Command {
        let m = &self.model_dir;
        let mut c = tokio::process::Command::new(&self.binary);
        c.arg("-infile")
            .arg("/dev/stdin")
            .arg("-hmm")
            .arg(m.join("en-us"))
            .arg("-dict")
            .arg(m.join("cmudict-en-us.dict"))
            .args(["-samprate", &STT_RATE_HZ.to_string()])
            .args(["-time", "yes", "-logfn", "/dev/null"]);
        match &self.grammar {
            Some(g) => c.arg("-jsgf").arg(g),
            None => c.arg("-lm").arg(m.join("en-us.lm.bin")),
        };
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        c
    }
}

impl SttProvider for PocketSphinx {
    fn name(&self) -> &'static str {
        "pocketsphinx"
    }

    fn start(&self, language: &str) -> Result<SttSession, SttError> {
        if !language.eq_ignore_ascii_case("en-US") && !language.eq_ignore_ascii_case("en") {
            return Err(SttError::UnsupportedLanguage(language.into()));
        }
        let mut child = self.command().spawn().map_err(|e| {
            SttError::Recognizer(format!("starting {}: {e}", self.binary.display()))
        })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SttError::Recognizer("no pipes to the recognizer".into()));
        };
        let (audio, mut frames) = mpsc::channel::<SttInput>(AUDIO_QUEUE);
        let (out, results) = mpsc::channel(64);
        // PocketSphinx loses speech that follows digital silence at the very start of its
        // input (its noise floor is not set yet), and a call's media starts with exactly
        // that: the recognizer is fed from the first sample that is not zero, and the times
        // of what it hears are shifted back by what was skipped.
        let (skipped_tx, skipped_rx) = tokio::sync::oneshot::channel::<u64>();
        let flushes = out.clone();
        tokio::spawn(async move {
            let mut skipped: u64 = 0;
            let mut fed: u64 = 0;
            let mut skipped_tx = Some(skipped_tx);
            while let Some(input) = frames.recv().await {
                let mut f = match input {
                    SttInput::Audio(f) => f,
                    // The recognizer ends utterances on its own silence detection only: the
                    // flush is answered at once, its words come when it ends the utterance.
                    SttInput::Flush => {
                        let at = (skipped + fed) * 1000 / u64::from(STT_RATE_HZ);
                        let _ = flushes.send(Ok(Segment::flushed_empty(at))).await;
                        continue;
                    }
                };
                if let Some(tx) = skipped_tx.take() {
                    match f.iter().position(|&v| v != 0) {
                        None => {
                            skipped += f.len() as u64;
                            skipped_tx = Some(tx);
                            continue;
                        }
                        Some(i) => {
                            skipped += i as u64;
                            f.drain(..i);
                            let _ = tx.send(skipped * 1000 / u64::from(STT_RATE_HZ));
                        }
                    }
                }
                fed += f.len() as u64;
                let bytes: Vec<u8> = f.iter().flat_map(|s| s.to_le_bytes()).collect();
                if stdin.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Trailing silence lets the detector close the last utterance, then end of file.
            let _ = stdin.write_all(&vec![0u8; STT_RATE_HZ as usize]).await;
            let _ = stdin.shutdown().await;
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut parser = Parser::default();
            // Known before anything is heard: the recognizer is fed only after the skip.
            let mut skipped_rx = Some(skipped_rx);
            let mut offset_ms = 0;
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(rx) = skipped_rx.take() {
                            offset_ms = rx.await.unwrap_or(0);
                        }
                        if let Some(mut seg) = parser.line(&line) {
                            seg.start_ms += offset_ms;
                            seg.end_ms += offset_ms;
                            if out.send(Ok(seg)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = out.send(Err(SttError::Recognizer(e.to_string()))).await;
                        break;
                    }
                }
            }
            if let Some(mut seg) = parser.finish() {
                seg.start_ms += offset_ms;
                seg.end_ms += offset_ms;
                let _ = out.send(Ok(seg)).await;
            }
            let _ = child.wait().await;
        });
        Ok(SttSession { audio, results })
    }
}

/// Turns `pocketsphinx_continuous -time yes` output into segments: an utterance's text line,
/// then one `word start end confidence` line per word (fillers `<sil>`, `(NULL)`, `<s>`,
/// `</s>`, `[...]` included).
#[derive(Default)]
struct Parser {
    pending: Option<Segment>,
}

impl Parser {
    /// Feeds a line; returns a segment when one is complete.
    fn line(&mut self, line: &str) -> Option<Segment> {
        let t: Vec<&str> = line.split_whitespace().collect();
        let timed = t.len() == 4 && t[1..].iter().all(|x| x.parse::<f64>().is_ok());
        if !timed {
            // A new utterance: the previous one is complete.
            let done = self.pending.take();
            let text = t.join(" ");
            if !text.is_empty() {
                self.pending = Some(Segment::final_text(text, u64::MAX, 0));
            }
            return done.and_then(Self::finished);
        }
        let filler = matches!(t[0], "<sil>" | "(NULL)" | "<s>" | "</s>") || t[0].starts_with('[');
        if let (Some(seg), false) = (self.pending.as_mut(), filler) {
            let ms = |x: &str| (x.parse::<f64>().unwrap_or(0.0) * 1000.0).round() as u64;
            seg.start_ms = seg.start_ms.min(ms(t[1]));
            seg.end_ms = seg.end_ms.max(ms(t[2]));
        }
        None
    }

    fn finish(&mut self) -> Option<Segment> {
        self.pending.take().and_then(Self::finished)
    }

    fn finished(mut seg: Segment) -> Option<Segment> {
        if seg.start_ms == u64::MAX {
            seg.start_ms = 0;
        }
        Some(seg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utterances_with_their_times() {
        let out = "hello world\n<sil> 0.000 0.200 1.0\nhello 0.210 0.500 1.0\n(NULL) 0.5 0.5 1.0\nworld 0.510 0.870 1.0\n<sil> 0.880 1.000 1.0\ncall me back\ncall 4.230 4.560 1.0\nme 4.570 4.700 1.0\nback 4.710 5.010 1.0\n";
        let mut p = Parser::default();
        let mut segs: Vec<Segment> = out.lines().filter_map(|l| p.line(l)).collect();
        segs.extend(p.finish());
        assert_eq!(
            segs,
            vec![
                Segment::final_text("hello world", 210, 870),
                Segment::final_text("call me back", 4230, 5010),
            ]
        );
    }
}
