//! The engine's one internal audio format: 16-bit mono PCM at 16 kHz in 20 ms frames.

use std::time::Duration;

/// Samples per second inside the engine.
pub const RATE_HZ: u32 = 16_000;
/// One frame's length.
pub const FRAME: Duration = Duration::from_millis(20);
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (RATE_HZ as usize) / 50;
