//! Offline Whisper (tiny.en by default) through CTranslate2 (`ct2rs`), on utterances cut by
//! Silero VAD ([`super::vad`]).
//!
//! Each session runs on a thread of its own: frames go through the segmenter, and each
//! utterance it cuts is turned into a log-mel spectrogram (computed here, as Whisper's
//! `log_mel_spectrogram`: 80 bins, 25 ms Hann windows every 10 ms) and decoded by the one
//! model every session shares (CTranslate2 queues concurrent requests on its replica). Each
//! utterance gives one final segment. The encoder sees the utterance and 10 s of silence
//! rather than Whisper's 30 s window ([`Window`]): its cost follows the utterance's length.
//!
//! Two facts shape this module: the high-level `ct2rs::Whisper` forces the prompt
//! `<|en|><|transcribe|>`, which an English-only (`.en`) model answers with nothing, so the
//! low-level `ct2rs::sys::Whisper` is driven with an English-only prompt; and tiny.en decoding
//! a long stream without timestamps stops after its first sentence, so it only ever sees one
//! utterance at a time.

use super::vad::{Segmenter, SegmenterConfig, SileroVad, Utterance};
use super::{Segment, SttError, SttInput, SttProvider, SttSession, AUDIO_QUEUE, STT_RATE_HZ};
pub use ct2rs::sys::ComputeType;
use ct2rs::sys::{Config, Device, StorageView, WhisperOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Mel bins of Whisper's input (tiny to medium).
const N_MELS: usize = 80;
/// FFT size (25 ms at 16 kHz).
const N_FFT: usize = 400;
/// Hop between frames (10 ms).
const HOP: usize = 160;
/// Frames of the 30 s window the model takes.
const N_FRAMES: usize = 3_000;
/// Samples in 30 s.
const N_SAMPLES: usize = N_FRAMES * HOP;
/// What an English-only model is started with: no language or task token, no timestamps.
const PROMPT: [&str; 2] = ["<|startoftranscript|>", "<|notimestamps|>"];

/// Where the files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhisperPaths {
    /// The CTranslate2 model folder (`model.bin`, `config.json`, `vocabulary.txt`).
    pub model: PathBuf,
    /// Silero VAD, `silero_vad.onnx`.
    pub vad: PathBuf,
}

impl WhisperPaths {
    /// Whisper tiny.en and Silero VAD in a models folder `scripts/models` filled.
    pub fn in_models_dir(dir: &Path) -> Self {
        Self {
            model: dir.join("whisper-tiny-en"),
            vad: dir.join("silero-vad/silero_vad.onnx"),
        }
    }
}

/// Decoding settings.
#[derive(Clone, Debug, PartialEq)]
pub struct WhisperSettings {
    /// Beam width (1 = greedy).
    pub beam_size: usize,
    /// What CTranslate2 computes in (the weights are converted when the model loads).
    pub compute_type: ComputeType,
    /// CTranslate2 threads for one decode (0: the machine's cores, at most 4).
    pub threads: usize,
    /// Where utterances are cut.
    pub segmenter: SegmenterConfig,
    /// How much audio the encoder looks at.
    pub window: Window,
}

/// How much audio the encoder looks at per utterance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// 30 s, the utterance padded with silence (as Whisper was trained): the encoder's cost is
    /// the same for a word as for a paragraph.
    Full,
    /// The utterance and `pad_ms` of silence after it (at most 30 s): the encoder's cost
    /// follows the utterance's length (CTranslate2 takes fewer than 3,000 frames).
    Fit {
        /// Silence after the utterance, in ms.
        pad_ms: u64,
    },
}

impl Window {
    /// Mel frames the encoder takes for `samples` of audio (even: the encoder's second
    /// convolution has stride 2).
    fn frames(self, samples: usize) -> usize {
        match self {
            Self::Full => N_FRAMES,
            Self::Fit { pad_ms } => {
                let n = (samples + (pad_ms as usize * STT_RATE_HZ as usize / 1000)).div_ceil(HOP);
                (n + n % 2).clamp(2, N_FRAMES)
            }
        }
    }
}

impl Default for WhisperSettings {
    fn default() -> Self {
        Self {
            beam_size: 1,
            // The packaged weights are float16, which CPUs do not compute in: quantize on load.
            compute_type: ComputeType::INT8,
            threads: 0,
            segmenter: SegmenterConfig::default(),
            // Measured on 40 telephone prompts (`compare_windows` in media/tests/whisper.rs):
            // WER 0.016 against 0.012 with 30 s, at 0.4 of the decode time; 6 s of silence
            // gives 0.037, 1 s 0.136 (tiny.en expects a long silent tail).
            window: Window::Fit { pad_ms: 10_000 },
        }
    }
}

struct Inner {
    model: ct2rs::sys::Whisper,
    vad: Vec<u8>,
    settings: WhisperSettings,
    bytes: ByteDecoder,
    mel: MelSpectrogram,
}

/// The Whisper provider: one model shared by every session.
#[derive(Clone)]
pub struct Whisper {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

fn recognizer(e: impl std::fmt::Display) -> SttError {
    SttError::Recognizer(e.to_string())
}

/// CTranslate2 threads for one decode: the machine's cores, at most 4.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

impl Whisper {
    /// Whether `scripts/models` installed what [`Whisper::from_models_dir`] loads.
    pub fn available(dir: &Path) -> bool {
        let p = WhisperPaths::in_models_dir(dir);
        p.model.join("model.bin").is_file()
            && p.vad.is_file()
            && crate::tts::piper::runtime_in_models_dir(dir).exists()
    }

    /// Loads ONNX Runtime, Whisper tiny.en and Silero VAD from a folder `scripts/models` filled
    /// (see [`crate::tts::piper::default_models_dir`]).
    pub fn from_models_dir(dir: &Path) -> Result<Self, SttError> {
        crate::tts::piper::init_runtime(&crate::tts::piper::runtime_in_models_dir(dir))
            .map_err(recognizer)?;
        Self::load(
            &WhisperPaths::in_models_dir(dir),
            WhisperSettings::default(),
        )
    }

    /// Loads the model and the VAD. ONNX Runtime must be loaded first
    /// ([`crate::tts::piper::init_runtime`]).
    pub fn load(paths: &WhisperPaths, settings: WhisperSettings) -> Result<Self, SttError> {
        let vad = std::fs::read(&paths.vad)
            .map_err(|e| recognizer(format!("reading {}: {e}", paths.vad.display())))?;
        // Checks the VAD loads before any session needs it.
        SileroVad::from_bytes(&vad)?;
        let config = Config {
            device: Device::CPU,
            compute_type: settings.compute_type,
            num_threads_per_replica: if settings.threads == 0 {
                threads()
            } else {
                settings.threads
            },
            ..Config::default()
        };
        let model = ct2rs::sys::Whisper::new(&paths.model, config)
            .map_err(|e| recognizer(format!("loading {}: {e}", paths.model.display())))?;
        if model.is_multilingual() {
            return Err(recognizer(format!(
                "{} is a multilingual model; this provider drives English-only (.en) ones",
                paths.model.display()
            )));
        }
        if model.n_mels() != N_MELS {
            return Err(recognizer(format!(
                "{} takes {} mel bins, not {N_MELS}",
                paths.model.display(),
                model.n_mels()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                model,
                vad,
                settings,
                bytes: ByteDecoder::new(),
                mel: MelSpectrogram::new(),
            }),
        })
    }

    /// What one utterance (16 kHz; only its first 30 s are heard) says.
    pub fn transcribe(&self, samples: &[i16]) -> Result<Transcription, SttError> {
        self.inner.transcribe(samples)
    }
}

/// What the model made of one utterance.
#[derive(Clone, Debug, PartialEq)]
pub struct Transcription {
    /// The text (empty when the model heard nothing, or decided it was not speech).
    pub text: String,
    /// The model's probability that the utterance holds no speech.
    pub no_speech_prob: f32,
    /// Average log-probability of the text's tokens.
    pub avg_logprob: f32,
}

/// Whisper's own rule for dropping a hallucination on noise (as in openai/whisper's
/// `transcribe`): the no-speech token is likely and the text unlikely.
const NO_SPEECH_PROB: f32 = 0.6;
const LOGPROB_FLOOR: f32 = -1.0;
/// Above this the text is dropped whatever its probability (measured: the 0.15 s tail of a
/// prompt cut at the 25 s maximum came out as "you" at 0.96 no-speech, -0.95 log-probability;
/// real prompts score 0.01-0.04).
const SURE_NO_SPEECH_PROB: f32 = 0.9;

impl Inner {
    fn transcribe(&self, samples: &[i16]) -> Result<Transcription, SttError> {
        let started = std::time::Instant::now();
        let frames = self.settings.window.frames(samples.len().min(N_SAMPLES));
        let mut features = self.mel.compute(samples, frames);
        let mel_ms = started.elapsed().as_millis() as u64;
        let view = StorageView::new(&[1, N_MELS, frames], &mut features, Device::CPU)
            .map_err(recognizer)?;
        // A bound on runaway repetition: people say well under 10 tokens a second.
        let seconds = samples.len().min(N_SAMPLES) / STT_RATE_HZ as usize;
        let options = WhisperOptions {
            beam_size: self.settings.beam_size,
            max_length: (16 + 10 * seconds).min(448),
            return_scores: true,
            return_no_speech_prob: true,
            ..WhisperOptions::default()
        };
        let result = self
            .model
            .generate(&view, &[PROMPT.to_vec()], &options)
            .map_err(recognizer)?;
        let Some(r) = result.first() else {
            return Ok(Transcription {
                text: String::new(),
                no_speech_prob: 1.0,
                avg_logprob: f32::NEG_INFINITY,
            });
        };
        let tokens = r.sequences.first().map(Vec::as_slice).unwrap_or_default();
        let mut t = Transcription {
            text: self.bytes.text(tokens),
            no_speech_prob: r.no_speech_prob,
            // With the default length penalty (1) CTranslate2's score is the sum of the
            // tokens' log-probabilities over their number.
            avg_logprob: r.scores.first().copied().unwrap_or(0.0),
        };
        tracing::debug!(
            audio_ms = samples.len() as u64 * 1000 / u64::from(STT_RATE_HZ),
            frames,
            mel_ms,
            ms = started.elapsed().as_millis() as u64,
            text = %t.text,
            "whisper: decoded"
        );
        if t.no_speech_prob > NO_SPEECH_PROB
            && (t.avg_logprob < LOGPROB_FLOOR || t.no_speech_prob > SURE_NO_SPEECH_PROB)
        {
            tracing::debug!(text = %t.text, no_speech = t.no_speech_prob, logprob = t.avg_logprob,
                "whisper: dropped as not speech");
            t.text.clear();
        }
        Ok(t)
    }
}

/// Whether the provider takes `language`: English, any region.
fn english(language: &str) -> bool {
    let l = language.to_ascii_lowercase();
    l == "en" || l.starts_with("en-") || l.starts_with("en_")
}

impl SttProvider for Whisper {
    fn name(&self) -> &'static str {
        "whisper"
    }

    fn start(&self, language: &str) -> Result<SttSession, SttError> {
        if !english(language) {
            return Err(SttError::UnsupportedLanguage(language.into()));
        }
        let (audio, frames) = mpsc::channel::<SttInput>(AUDIO_QUEUE);
        let (out, results) = mpsc::channel(64);
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("vbin-whisper".into())
            .spawn(move || run_session(&inner, frames, &out))
            .map_err(|e| recognizer(format!("starting the session thread: {e}")))?;
        Ok(SttSession { audio, results })
    }
}

/// One session: frames in until the sender is dropped, a segment out per utterance (and one
/// per flush).
fn run_session(
    inner: &Inner,
    mut input: mpsc::Receiver<SttInput>,
    out: &mpsc::Sender<Result<Segment, SttError>>,
) {
    let vad = match SileroVad::from_bytes(&inner.vad) {
        Ok(v) => v,
        Err(e) => {
            let _ = out.blocking_send(Err(e));
            return;
        }
    };
    let mut seg = Segmenter::new(vad, inner.settings.segmenter.clone());
    // Sends the segment of an utterance (none for an empty text, unless it answers a flush);
    // false when the session is over (error or no reader).
    let decode = |u: Utterance, flushed: bool| -> bool {
        match inner.transcribe(&u.samples).map(|t| t.text) {
            Ok(text) if text.is_empty() && !flushed => true,
            Ok(text) => out
                .blocking_send(Ok(Segment {
                    flushed,
                    ..Segment::final_text(text, u.start_ms, u.end_ms)
                }))
                .is_ok(),
            // One utterance that fails to decode loses its words, not the session (a flush is
            // still answered, so the conversation's turn ends).
            Err(e) => {
                let reported = out.blocking_send(Err(e)).is_ok();
                reported
                    && (!flushed
                        || out
                            .blocking_send(Ok(Segment::flushed_empty(u.end_ms)))
                            .is_ok())
            }
        }
    };
    while let Some(input) = input.blocking_recv() {
        let frame = match input {
            SttInput::Audio(frame) => frame,
            SttInput::Flush => {
                let sent = match seg.finish() {
                    Some(u) => decode(u, true),
                    None => out
                        .blocking_send(Ok(Segment::flushed_empty(seg.stream_ms())))
                        .is_ok(),
                };
                if !sent {
                    return;
                }
                continue;
            }
        };
        match seg.push(&frame) {
            Ok(done) => {
                for u in done {
                    if !decode(u, false) {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = out.blocking_send(Err(e));
                return;
            }
        }
    }
    if let Some(u) = seg.finish() {
        decode(u, false);
    }
}

/// GPT-2's byte-level BPE alphabet backwards: each printable character of a token stands for
/// one byte of UTF-8 text.
struct ByteDecoder {
    bytes: std::collections::HashMap<char, u8>,
}

impl ByteDecoder {
    fn new() -> Self {
        let printable =
            |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut bytes = std::collections::HashMap::new();
        let mut next = 256u32;
        for b in 0..=255u8 {
            let c = if printable(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or('\u{fffd}');
                next += 1;
                c
            };
            bytes.insert(c, b);
        }
        Self { bytes }
    }

    /// The text of generated tokens, special tokens (`<|...|>`) left out.
    fn text<S: AsRef<str>>(&self, tokens: &[S]) -> String {
        let mut raw = Vec::new();
        for t in tokens.iter().map(AsRef::as_ref) {
            if t.starts_with("<|") && t.ends_with("|>") {
                continue;
            }
            raw.extend(t.chars().filter_map(|c| self.bytes.get(&c)));
        }
        String::from_utf8_lossy(&raw).trim().to_string()
    }
}

/// Whisper's log-mel spectrogram of 30 s of 16 kHz audio.
struct MelSpectrogram {
    fft: Arc<dyn realfft::RealToComplex<f32>>,
    window: Vec<f32>,
    /// Per mel bin, the first FFT bin it weighs and the weights from there (the non-zero part
    /// of its triangle).
    filters: Vec<(usize, Vec<f32>)>,
}

impl MelSpectrogram {
    fn new() -> Self {
        let fft = realfft::RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        // Periodic Hann window, as torch.hann_window(400).
        let window = (0..N_FFT)
            .map(|n| {
                0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos() as f32
            })
            .collect();
        let bins = N_FFT / 2 + 1;
        let filters = mel_filters()
            .chunks(bins)
            .map(|row| {
                let first = row.iter().position(|w| *w > 0.0).unwrap_or(0);
                let last = row.iter().rposition(|w| *w > 0.0).unwrap_or(0);
                (first, row[first..=last.max(first)].to_vec())
            })
            .collect();
        Self {
            fft,
            window,
            filters,
        }
    }

    /// `[N_MELS, n_frames]`, row-major: the audio padded with silence (or cut) to 30 s, of
    /// which the first `n_frames` (at most 3,000) are kept.
    fn compute(&self, samples: &[i16], n_frames: usize) -> Vec<f32> {
        let n_frames = n_frames.min(N_FRAMES);
        let mut x: Vec<f32> = samples
            .iter()
            .take(N_SAMPLES)
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let len = x.len();
        x.resize(N_SAMPLES, 0.0);
        // torch.stft(center=True): reflect-pad N_FFT / 2 on each side.
        let half = N_FFT / 2;
        let mut padded = Vec::with_capacity(N_SAMPLES + N_FFT);
        padded.extend((1..=half).rev().map(|i| x[i]));
        padded.extend_from_slice(&x);
        padded.extend((1..=half).map(|i| x[N_SAMPLES - 1 - i]));

        let bins = N_FFT / 2 + 1;
        let mut frame = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; bins];
        // log10 of the floor: what frames of the silence padding hold.
        let mut mel = vec![-10f32; N_MELS * n_frames];
        // Frames past the audio (and its window) are all zeros: only the floor.
        let frames = ((len + half) / HOP + 1).min(n_frames);
        // STFT gives N_FRAMES + 1 frames; Whisper drops the last.
        for t in 0..frames {
            let start = t * HOP;
            for ((f, x), w) in frame
                .iter_mut()
                .zip(&padded[start..start + N_FFT])
                .zip(&self.window)
            {
                *f = x * w;
            }
            if self
                .fft
                .process_with_scratch(&mut frame, &mut spectrum, &mut scratch)
                .is_err()
            {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, (first, w)) in self.filters.iter().enumerate() {
                let e: f32 = w.iter().zip(&power[*first..]).map(|(a, b)| a * b).sum();
                mel[m * n_frames + t] = e.max(1e-10).log10();
            }
        }
        let max = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in &mut mel {
            *v = ((*v).max(max - 8.0) + 4.0) / 4.0;
        }
        mel
    }
}

/// librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (Slaney mel scale and area
/// normalisation), the filters Whisper ships.
fn mel_filters() -> Vec<f32> {
    let hz_to_mel = |f: f64| {
        if f < 1000.0 {
            3.0 * f / 200.0
        } else {
            15.0 + (f / 1000.0).ln() / (6.4f64.ln() / 27.0)
        }
    };
    let mel_to_hz = |m: f64| {
        if m < 15.0 {
            200.0 * m / 3.0
        } else {
            1000.0 * ((m - 15.0) * (6.4f64.ln() / 27.0)).exp()
        }
    };
    let bins = N_FFT / 2 + 1;
    let top = hz_to_mel(f64::from(STT_RATE_HZ) / 2.0);
    let points: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hz(top * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let mut filters = vec![0f32; N_MELS * bins];
    for m in 0..N_MELS {
        let (lo, mid, hi) = (points[m], points[m + 1], points[m + 2]);
        let norm = 2.0 / (hi - lo);
        for k in 0..bins {
            let f = k as f64 * f64::from(STT_RATE_HZ) / N_FFT as f64;
            let w = ((f - lo) / (mid - lo)).min((hi - f) / (hi - mid)).max(0.0);
            filters[m * bins + k] = (w * norm) as f32;
        }
    }
    filters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_english_only() {
        for l in ["en", "en-US", "en-GB", "EN-au", "en_IN"] {
            assert!(english(l), "{l}");
        }
        for l in ["fr", "de-DE", "eng", ""] {
            assert!(!english(l), "{l}");
        }
    }

    #[test]
    fn decodes_byte_level_tokens() {
        let d = ByteDecoder::new();
        // "Ġ" is the space byte; "Ã©" the two bytes of "é".
        let tokens = [
            "<|startoftranscript|>",
            "Hello",
            ",",
            "Ġcaf",
            "Ã©",
            "!",
            "<|endoftext|>",
        ];
        assert_eq!(d.text(&tokens), "Hello, café!");
        assert_eq!(d.text::<&str>(&[]), "");
    }

    #[test]
    fn mel_filters_match_librosa() {
        let f = mel_filters();
        let bins = N_FFT / 2 + 1;
        // mel_80[0][1] of whisper/assets/mel_filters.npz (librosa); the next by hand: filter 1
        // spans 37.2..111.7 Hz peaking at 74.5 Hz, bin 2 is 80 Hz, the area norm 2 / 74.5.
        assert!((f[1] - 0.024_862_6).abs() < 2e-6, "{}", f[1]);
        assert!((f[bins + 2] - 0.022_874).abs() < 2e-5, "{}", f[bins + 2]);
        // Each filter is a triangle: non-negative, some weight, none past Nyquist's bins.
        for m in 0..N_MELS {
            let row = &f[m * bins..(m + 1) * bins];
            assert!(row.iter().all(|w| *w >= 0.0));
            assert!(row.iter().any(|w| *w > 0.0), "filter {m} is empty");
        }
    }

    #[test]
    fn silence_gives_the_floor_everywhere() {
        let mel = MelSpectrogram::new().compute(&[], N_FRAMES);
        assert_eq!(mel.len(), N_MELS * N_FRAMES);
        // log10(1e-10) = -10, clamped to itself, (x + 4) / 4 = -1.5.
        assert!(mel.iter().all(|v| (*v + 1.5).abs() < 1e-6));
    }

    #[test]
    fn a_tone_lights_its_mel_bin() {
        // 1 kHz sine, 1 s: the strongest bin at frame 50 is the one whose centre is nearest.
        let tone: Vec<i16> = (0..16_000)
            .map(|n| {
                (8_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * n as f64 / 16_000.0).sin())
                    as i16
            })
            .collect();
        let mel = MelSpectrogram::new().compute(&tone, N_FRAMES);
        let col: Vec<f32> = (0..N_MELS).map(|m| mel[m * N_FRAMES + 50]).collect();
        let best = (0..N_MELS)
            .max_by(|a, b| col[*a].total_cmp(&col[*b]))
            .unwrap();
        // Slaney mel: 1 kHz is mel 15, centres are 0.559 mel apart: filter 26 peaks at 1005 Hz.
        assert_eq!(best, 26, "loudest bin");
        // After the tone, silence: clamped to max - 8 (log10), i.e. 2 below the top after /4.
        let top = col[best];
        assert!((mel[best * N_FRAMES + 2_000] - (top - 2.0)).abs() < 0.01);
    }
}
