//! The offline default: Debian's `espeak-ng`, run once per request.
//!
//! The text goes to the process on stdin (`--stdin`), never on the command line, so text that
//! looks like an option (`--help`, `-w /etc/passwd`) is only ever spoken. The WAV it writes to
//! stdout (22,050 Hz mono) is decoded and resampled to 16 kHz ([`crate::decode`]). A request
//! that takes longer than the timeout is abandoned and the process killed.

use super::{check_text, Speech, TtsError, TtsProvider, TtsRequest};
use crate::decode::{decode_audio, MAX_INPUT_BYTES};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Default time one synthesis may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest voice name accepted.
const MAX_VOICE_LEN: usize = 64;

/// Most stderr kept for an error message.
const MAX_STDERR: u64 = 4_096;

/// BCP 47 tags (lower case) with a region that name a particular espeak-ng voice.
const REGIONAL: &[(&str, &str)] = &[
    ("en", "en-us"),
    ("en-us", "en-us"),
    ("en-gb", "en-gb"),
    ("en-uk", "en-gb"),
    ("en-ie", "en-gb"),
    ("en-029", "en-029"),
    ("es-419", "es-419"),
    ("es-mx", "es-419"),
    ("es-us", "es-419"),
    ("es-ar", "es-419"),
    ("es-co", "es-419"),
    ("es-cl", "es-419"),
    ("es-es", "es"),
    ("es", "es"),
    ("fr", "fr-fr"),
    ("fr-fr", "fr-fr"),
    ("fr-be", "fr-be"),
    ("fr-ch", "fr-ch"),
    ("pt", "pt"),
    ("pt-pt", "pt"),
    ("pt-br", "pt-br"),
    ("zh", "cmn"),
    ("zh-cn", "cmn"),
    ("zh-hans", "cmn"),
    ("zh-hk", "yue"),
    ("vi", "vi"),
    ("vi-vn", "vi"),
    ("no", "nb"),
    ("nb", "nb"),
    ("nb-no", "nb"),
];

/// Languages whose single espeak-ng voice serves every region (`de-AT` is `de`).
const ANY_REGION: &[&str] = &[
    "af", "am", "ar", "az", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de", "el", "eo", "et",
    "eu", "fa", "fi", "ga", "gd", "gu", "he", "hi", "hr", "hu", "hy", "ia", "id", "is", "it", "ja",
    "ka", "kk", "kn", "ko", "ky", "la", "lb", "lt", "lv", "mk", "ml", "mr", "ms", "mt", "my", "ne",
    "nl", "pa", "pl", "ro", "ru", "sk", "sl", "sq", "sr", "sv", "sw", "ta", "te", "th", "tr", "uk",
    "ur", "uz", "yue", "cmn",
];

/// The espeak-ng voice for a BCP 47 language tag (`en-US` is `en-us`, `de-DE` is `de`), or
/// `None` when espeak-ng has none. Tags are compared case-insensitively; `_` is read as `-`.
pub fn voice_for_language(language: &str) -> Option<&'static str> {
    if language.is_empty()
        || language.len() > 35
        || !language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let tag = language.to_ascii_lowercase().replace('_', "-");
    if let Some((_, v)) = REGIONAL.iter().find(|(t, _)| *t == tag) {
        return Some(v);
    }
    let primary = tag.split('-').next().unwrap_or("");
    // English, Spanish, French, Portuguese and Chinese have several voices: their other regions
    // are not guessed.
    ANY_REGION.iter().find(|l| **l == primary).copied()
}

/// Whether `voice` may be given to espeak-ng: a name such as `en-us`, `en-gb-x-rp` or
/// `en-us+f3` (letters, digits, `-`, `_`, `+`, not starting with `-`), or a variant to add to
/// the language's voice (`+f3`).
fn valid_voice(voice: &str) -> bool {
    !voice.is_empty()
        && voice.len() <= MAX_VOICE_LEN
        && !voice.starts_with('-')
        && voice.len() > usize::from(voice.starts_with('+'))
        && voice
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+'))
}

/// The espeak-ng provider.
#[derive(Clone, Debug)]
pub struct EspeakNg {
    binary: PathBuf,
    timeout: Duration,
    speed_wpm: Option<u32>,
}

impl Default for EspeakNg {
    fn default() -> Self {
        Self {
            binary: "espeak-ng".into(),
            timeout: DEFAULT_TIMEOUT,
            speed_wpm: None,
        }
    }
}

impl EspeakNg {
    /// `espeak-ng` from the `PATH`, default speed, [`DEFAULT_TIMEOUT`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Another executable (a path, or a name looked up in the `PATH`).
    pub fn with_binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = binary.into();
        self
    }

    /// How long one synthesis may take before the process is killed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Speaking rate in words per minute (espeak-ng's default is 175), clamped to 80..=450.
    pub fn with_speed(mut self, words_per_minute: u32) -> Self {
        self.speed_wpm = Some(words_per_minute.clamp(80, 450));
        self
    }

    /// Whether the executable can be run.
    pub fn available(&self) -> bool {
        std::process::Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The `-v` argument for a request: its voice, or its language's voice with a variant
    /// (`+f3`) added, or its language's voice.
    fn voice(req: &TtsRequest) -> Result<String, TtsError> {
        let language = voice_for_language(&req.language)
            .ok_or_else(|| TtsError::UnsupportedLanguage(req.language.clone()))?;
        match req.voice.as_deref() {
            None => Ok(language.to_string()),
            Some(v) if !valid_voice(v) => Err(TtsError::UnknownVoice(v.to_string())),
            Some(v) if v.starts_with('+') => Ok(format!("{language}{v}")),
            Some(v) => Ok(v.to_string()),
        }
    }

    /// Runs espeak-ng for `text` with `voice`; returns its WAV output.
    async fn run(&self, text: &str, voice: &str) -> Result<Vec<u8>, TtsError> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(["--stdout", "--stdin", "-b", "1", "-v", voice]);
        if let Some(wpm) = self.speed_wpm {
            cmd.args(["-s", &wpm.to_string()]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| TtsError::Engine(format!("starting {}: {e}", self.binary.display())))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(TtsError::Engine("no pipes to espeak-ng".into()));
        };
        let work = async {
            let write = async {
                // espeak-ng may exit early (a bad voice) and close its end: not our error.
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.shutdown().await;
                drop(stdin);
            };
            let read = async {
                let mut wav = Vec::new();
                stdout
                    .take(MAX_INPUT_BYTES as u64 + 1)
                    .read_to_end(&mut wav)
                    .await
                    .map(|_| wav)
            };
            let read_err = async {
                let mut err = Vec::new();
                let _ = stderr.take(MAX_STDERR).read_to_end(&mut err).await;
                err
            };
            let ((), wav, err) = tokio::join!(write, read, read_err);
            let status = child.wait().await;
            (wav, err, status)
        };
        let (wav, err, status) = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| {
                TtsError::Engine(format!("espeak-ng took longer than {:?}", self.timeout))
            })?;
        // On timeout the future above is dropped, then `child` with it: kill_on_drop kills it.
        let wav = wav.map_err(|e| TtsError::Engine(format!("reading espeak-ng: {e}")))?;
        let status = status.map_err(|e| TtsError::Engine(format!("waiting for espeak-ng: {e}")))?;
        let err = String::from_utf8_lossy(&err);
        if !status.success() {
            if err.contains("voice does not exist") {
                return Err(TtsError::UnknownVoice(voice.to_string()));
            }
            return Err(TtsError::Engine(format!(
                "espeak-ng exited with {status}: {}",
                err.trim()
            )));
        }
        if wav.len() > MAX_INPUT_BYTES {
            return Err(TtsError::Engine("espeak-ng output is too long".into()));
        }
        Ok(wav)
    }
}

#[async_trait::async_trait]
impl TtsProvider for EspeakNg {
    fn name(&self) -> &'static str {
        "espeak-ng"
    }

    async fn synthesize(&self, req: &TtsRequest) -> Result<Speech, TtsError> {
        check_text(&req.text)?;
        let voice = Self::voice(req)?;
        let wav = self.run(&req.text, &voice).await?;
        let pcm = tokio::task::spawn_blocking(move || decode_audio(&wav))
            .await
            .map_err(|e| TtsError::Engine(format!("decoding espeak-ng output: {e}")))?
            .map_err(|e| TtsError::Engine(format!("decoding espeak-ng output: {e}")))?;
        Ok(pcm.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::recognize;

    fn espeak() -> EspeakNg {
        let e = EspeakNg::new();
        assert!(
            e.available(),
            "espeak-ng must be installed (scripts/services installs it)"
        );
        e
    }

    #[test]
    fn languages_map_to_espeak_voices() {
        for (tag, voice) in [
            ("en-US", Some("en-us")),
            ("en-us", Some("en-us")),
            ("EN_us", Some("en-us")),
            ("en", Some("en-us")),
            ("en-GB", Some("en-gb")),
            ("de-DE", Some("de")),
            ("de-AT", Some("de")),
            ("de", Some("de")),
            ("fr-CA", None),
            ("fr-FR", Some("fr-fr")),
            ("es-MX", Some("es-419")),
            ("pt-BR", Some("pt-br")),
            ("zh-CN", Some("cmn")),
            ("ja-JP", Some("ja")),
            ("en-AU", None),
            ("xx-YY", None),
            ("", None),
            ("en us", None),
            ("-v", None),
            ("../../etc", None),
        ] {
            assert_eq!(voice_for_language(tag), voice, "{tag:?}");
        }
    }

    #[test]
    fn voices_are_checked_before_they_reach_the_command_line() {
        let req = |voice: &str| TtsRequest {
            text: "hi".into(),
            language: "en-US".into(),
            voice: Some(voice.into()),
        };
        assert_eq!(EspeakNg::voice(&req("en-gb-x-rp")).unwrap(), "en-gb-x-rp");
        assert_eq!(EspeakNg::voice(&req("+f3")).unwrap(), "en-us+f3");
        assert_eq!(EspeakNg::voice(&req("en-us+m2")).unwrap(), "en-us+m2");
        for bad in [
            "",
            "+",
            "-w",
            "--stdout",
            "en us",
            "a/b",
            "../x",
            "é",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(EspeakNg::voice(&req(bad)), Err(TtsError::UnknownVoice(v)) if v == bad),
                "{bad:?}"
            );
        }
        let unknown = TtsRequest::new("hi", "tlh");
        assert!(matches!(
            EspeakNg::voice(&unknown),
            Err(TtsError::UnsupportedLanguage(l)) if l == "tlh"
        ));
    }

    #[tokio::test]
    async fn speaks_a_phrase_that_pocketsphinx_hears_back() {
        let e = espeak().with_speed(130);
        let speech = e
            .synthesize(&TtsRequest::new("press two for sales", "en-US"))
            .await
            .unwrap();
        // About 2 s at 16 kHz.
        assert!((24_000..48_000).contains(&speech.len()), "{}", speech.len());
        assert_eq!(recognize(&speech).await, ["press two for sales"]);
    }

    #[tokio::test]
    async fn text_that_looks_like_options_is_spoken_not_obeyed() {
        let e = espeak();
        for text in ["--help", "-w /tmp/x.wav hello", "--version"] {
            let speech = e.synthesize(&TtsRequest::new(text, "en-US")).await.unwrap();
            assert!(speech.len() > 4_000, "{text:?}: {} samples", speech.len());
        }
        assert!(!std::path::Path::new("/tmp/x.wav").exists());
    }

    #[tokio::test]
    async fn bad_requests_are_errors() {
        let e = espeak();
        for text in ["", "   ", &"a".repeat(super::super::MAX_TEXT_BYTES + 1)] {
            assert!(matches!(
                e.synthesize(&TtsRequest::new(text, "en-US")).await,
                Err(TtsError::BadText)
            ));
        }
        assert!(matches!(
            e.synthesize(&TtsRequest::new("hello", "en-AU")).await,
            Err(TtsError::UnsupportedLanguage(l)) if l == "en-AU"
        ));
        let mut req = TtsRequest::new("hello", "en-US");
        // (espeak-ng matches names loosely: `no-such-voice` would be Norwegian.)
        req.voice = Some("zzqvoice".into());
        assert!(matches!(
            e.synthesize(&req).await,
            Err(TtsError::UnknownVoice(v)) if v == "zzqvoice"
        ));
        req.voice = Some("+f3".into());
        assert!(e.synthesize(&req).await.unwrap().len() > 4_000);
    }

    #[tokio::test]
    async fn a_missing_or_slow_engine_is_an_engine_error() {
        let missing = EspeakNg::new().with_binary("/nonexistent/espeak-ng");
        assert!(!missing.available());
        assert!(matches!(
            missing.synthesize(&TtsRequest::new("hello", "en-US")).await,
            Err(TtsError::Engine(_))
        ));
        // A stand-in that never answers: killed after the timeout.
        let dir = crate::testutil::Scratch::new();
        let slow = dir.path("slow.sh");
        std::fs::write(&slow, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = EspeakNg::new()
            .with_binary(&slow)
            .with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let r = e.synthesize(&TtsRequest::new("hello", "en-US")).await;
        assert!(matches!(r, Err(TtsError::Engine(m)) if m.contains("longer than")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
