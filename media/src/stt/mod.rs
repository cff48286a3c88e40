//! Speech-to-text behind one streaming interface.
//!
//! A provider starts a session per audio stream: 16 kHz mono PCM goes in through
//! [`SttSession::audio`] (20 ms frames, in order), recognized segments come out of
//! [`SttSession::results`]. Dropping the audio sender ends the stream: the provider flushes
//! what it still holds, sends its last segments and closes the results channel.
//!
//! A conversation that decides itself when the speaker's turn is over sends
//! [`SttInput::Flush`]: the provider recognizes what it holds at once instead of waiting for
//! its own end of utterance, and marks the last segment of it [`Segment::flushed`].

pub mod deepgram;
pub mod lazy;
pub mod pocketsphinx;
pub mod vad;
pub mod whisper;

use tokio::sync::mpsc;

/// Sample rate every provider takes (the pipeline resamples the switch's audio to it).
pub const STT_RATE_HZ: u32 = 16_000;

/// A recognized piece of speech.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// What was said.
    pub text: String,
    /// Where it starts, in ms from the start of the stream.
    pub start_ms: u64,
    /// Where it ends, in ms from the start of the stream.
    pub end_ms: u64,
    /// False for an interim guess the provider may still revise.
    pub is_final: bool,
    /// The answer to a [`SttInput::Flush`]: everything sent before the flush is recognized
    /// (the text may be empty when nothing was heard).
    pub flushed: bool,
}

impl Segment {
    /// A final segment.
    pub fn final_text(text: impl Into<String>, start_ms: u64, end_ms: u64) -> Self {
        Self {
            text: text.into(),
            start_ms,
            end_ms,
            is_final: true,
            flushed: false,
        }
    }

    /// The answer to a flush that found nothing to recognize.
    pub fn flushed_empty(at_ms: u64) -> Self {
        Self {
            flushed: true,
            ..Self::final_text("", at_ms, at_ms)
        }
    }
}

/// What goes into a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SttInput {
    /// The next frame of audio (16 kHz mono).
    Audio(Vec<i16>),
    /// The speaker's turn is over: recognize what is held now and answer with a segment marked
    /// [`Segment::flushed`]. Providers that cannot cut early answer at once with an empty one
    /// and send their segments when their own end of utterance comes.
    Flush,
}

impl From<Vec<i16>> for SttInput {
    fn from(frame: Vec<i16>) -> Self {
        Self::Audio(frame)
    }
}

/// Why recognition failed.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    /// The provider has no model for this language.
    #[error("language {0:?} is not supported by this provider")]
    UnsupportedLanguage(String),
    /// Starting or talking to the recognizer failed.
    #[error("recognizer: {0}")]
    Recognizer(String),
}

/// One audio stream being recognized.
pub struct SttSession {
    /// 16 kHz mono PCM (and flushes) in; drop it to end the stream.
    pub audio: mpsc::Sender<SttInput>,
    /// Segments out, in order; closed after the last one.
    pub results: mpsc::Receiver<Result<Segment, SttError>>,
}

/// A speech-to-text engine.
pub trait SttProvider: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Starts recognizing one stream in `language` (e.g. `en-US`). Must be called within a
    /// tokio runtime (providers run their I/O in tasks).
    fn start(&self, language: &str) -> Result<SttSession, SttError>;
}

/// Frames of audio buffered per session before the pipeline waits for the recognizer
/// (10 s of 20 ms frames).
pub const AUDIO_QUEUE: usize = 500;
