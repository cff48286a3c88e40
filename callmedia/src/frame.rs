//! The engine's one internal audio format: 16-bit mono PCM at 16 kHz in 20 ms frames.

use std::time::Duration;

/// Samples per second inside the engine.
pub const RATE_HZ: u32 = 16_000;
/// One frame's length.
pub const FRAME: Duration = Duration::from_millis(20);
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (RATE_HZ as usize) / 50;

/// A frame quieter than this (RMS, about -41 dBFS) is silence: for a recording's
/// `end_of_silence` and for the sandbox person waiting for a prompt to start or end.
pub const SILENCE_RMS: f64 = 300.0;

/// Whether `frame` is silence (its RMS under [`SILENCE_RMS`]).
pub fn is_silent(frame: &[i16]) -> bool {
    let energy: f64 = frame.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (energy / frame.len().max(1) as f64).sqrt() < SILENCE_RMS
}
