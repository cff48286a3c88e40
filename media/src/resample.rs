//! Streaming sample-rate conversion of mono 16-bit PCM in 20 ms frames (8/16/48 kHz and other
//! pairs), built on rubato's synchronous FFT resampler.
//!
//! A [`Resampler`] converts one direction of one channel: a call leg that needs both
//! 8 kHz -> 16 kHz (towards the engine) and 16 kHz -> 8 kHz (back to the caller) owns two of
//! them. The resampler keeps filter state between frames, so each instance must only ever see
//! consecutive frames of a single stream.
//!
//! Rubato's [`FftFixedInOut`] is used with its FFT chunk set to exactly one 20 ms frame, so every
//! [`Resampler::process`] call consumes one input frame and produces one whole output frame; no
//! extra buffering latency is added beyond the filter delay ([`Resampler::delay_samples`], half
//! a frame = 10 ms). ([`rubato::FftFixedIn`] would also work, but a chunk longer than a frame
//! makes the output size alternate between calls, and one of exactly a frame is what
//! `FftFixedInOut` does anyway.)
//!
//! The anti-alias/anti-image filter is a Blackman-Harris²-windowed sinc as long as one frame. For
//! the band shared by both rates it is flat to 0.85 × Nyquist (-0.001 dB at 3.4 kHz for 8 kHz,
//! -0.14 dB at 3.5 kHz, -2 dB at 3.6 kHz, -65 dB at 3.9 kHz) and rejects images and aliases by
//! more than 140 dB in the `f32` domain, so in 16-bit output they fall below the rounding noise
//! (see the tests and the ignored `frequency_response_report` test).

use rubato::{FftFixedInOut, Resampler as _};

/// Frames are 20 ms long: 1/50 s.
const FRAMES_PER_SECOND: u32 = 50;

/// Errors from creating or running a [`Resampler`].
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// A sample rate is zero or does not give a whole number of samples per 20 ms frame.
    #[error(
        "unsupported resampling {from_hz} Hz -> {to_hz} Hz: both rates must be non-zero \
         multiples of 50 Hz (whole 20 ms frames)"
    )]
    UnsupportedRates {
        /// Input sample rate.
        from_hz: u32,
        /// Output sample rate.
        to_hz: u32,
    },
    /// The input to [`Resampler::process`] was not exactly one 20 ms frame.
    #[error("expected a {expected}-sample (20 ms) input frame, got {actual} samples")]
    FrameLength {
        /// Samples in one 20 ms input frame.
        expected: usize,
        /// Samples passed.
        actual: usize,
    },
    /// Rubato refused the configuration.
    #[error("cannot build resampler: {0}")]
    Construction(#[from] rubato::ResamplerConstructionError),
    /// Rubato failed while processing (not expected with validated frames).
    #[error("resampling failed: {0}")]
    Process(#[from] rubato::ResampleError),
}

/// A streaming, single-channel, single-direction sample-rate converter for 20 ms frames of 16-bit
/// PCM.
///
/// Use one instance per direction (and per channel); it carries filter history from one frame to
/// the next. Equal input and output rates are a zero-delay pass-through.
pub struct Resampler {
    from_hz: u32,
    to_hz: u32,
    frame_in: usize,
    frame_out: usize,
    /// `None` when the rates are equal.
    inner: Option<FftFixedInOut<f32>>,
    /// Pre-allocated single-channel buffers so `process` does not allocate.
    buf_in: Vec<Vec<f32>>,
    buf_out: Vec<Vec<f32>>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("frame_in", &self.frame_in)
            .field("frame_out", &self.frame_out)
            .field("delay_samples", &self.delay_samples())
            .finish_non_exhaustive()
    }
}

impl Resampler {
    /// Creates a converter from `from_hz` to `to_hz` (e.g. 8000 -> 16000, 16000 -> 8000,
    /// 48000 -> 8000, 48000 -> 16000).
    ///
    /// Both rates must be non-zero multiples of 50 Hz so that 20 ms is a whole number of samples
    /// on each side; otherwise [`ResampleError::UnsupportedRates`] is returned. Construction plans
    /// FFTs and designs the filter, so create resamplers once per stream, not per frame.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        if from_hz == 0
            || to_hz == 0
            || !from_hz.is_multiple_of(FRAMES_PER_SECOND)
            || !to_hz.is_multiple_of(FRAMES_PER_SECOND)
        {
            return Err(ResampleError::UnsupportedRates { from_hz, to_hz });
        }
        let frame_in = (from_hz / FRAMES_PER_SECOND) as usize;
        let frame_out = (to_hz / FRAMES_PER_SECOND) as usize;
        let inner = if from_hz == to_hz {
            None
        } else {
            // With both rates multiples of 50 Hz, 20 ms is a whole number of rubato's minimum
            // chunks, so its FFT chunk comes out at exactly one frame on each side.
            let r = FftFixedInOut::<f32>::new(from_hz as usize, to_hz as usize, frame_in, 1)?;
            if r.input_frames_next() != frame_in || r.output_frames_next() != frame_out {
                return Err(ResampleError::UnsupportedRates { from_hz, to_hz });
            }
            Some(r)
        };
        Ok(Self {
            from_hz,
            to_hz,
            frame_in,
            frame_out,
            inner,
            buf_in: vec![vec![0.0; frame_in]],
            buf_out: vec![vec![0.0; frame_out]],
        })
    }

    /// Input sample rate in Hz.
    pub fn from_hz(&self) -> u32 {
        self.from_hz
    }

    /// Output sample rate in Hz.
    pub fn to_hz(&self) -> u32 {
        self.to_hz
    }

    /// Samples in one 20 ms input frame (160 at 8 kHz, 320 at 16 kHz, 960 at 48 kHz); the exact
    /// length [`process`](Self::process) accepts.
    pub fn input_frame_len(&self) -> usize {
        self.frame_in
    }

    /// Samples in one 20 ms output frame; what each [`process`](Self::process) call appends.
    pub fn output_frame_len(&self) -> usize {
        self.frame_out
    }

    /// Delay through the resampler, in output samples: an input event shows up this many samples
    /// later in the output than its position scaled to the output rate. It is half an output
    /// frame (10 ms), and the first this-many output samples of a stream are filter start-up.
    pub fn delay_samples(&self) -> usize {
        self.inner.as_ref().map_or(0, |r| r.output_delay())
    }

    /// Converts exactly one 20 ms input frame and appends one 20 ms output frame to `out`.
    ///
    /// Samples are scaled to `f32` in [-1, 1) for filtering and rounded and clamped back to
    /// `i16` (the filter can overshoot near full scale). Does not allocate apart from growing
    /// `out`.
    ///
    /// # Errors
    /// [`ResampleError::FrameLength`] if `input` is not [`input_frame_len`](Self::input_frame_len)
    /// samples long; nothing is appended then.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), ResampleError> {
        if input.len() != self.frame_in {
            return Err(ResampleError::FrameLength {
                expected: self.frame_in,
                actual: input.len(),
            });
        }
        if self.inner.is_none() {
            out.extend_from_slice(input);
            return Ok(());
        }
        for (f, &s) in self.buf_in[0].iter_mut().zip(input) {
            *f = f32::from(s) * (1.0 / 32768.0);
        }
        let filtered = self.filter_frame()?;
        out.extend(filtered.iter().map(|&f| to_i16(f)));
        Ok(())
    }

    /// Runs the frame in `buf_in` through rubato and returns the output frame (resampling only;
    /// `inner` must be `Some`).
    fn filter_frame(&mut self) -> Result<&[f32], ResampleError> {
        let inner = self
            .inner
            .as_mut()
            .expect("filter_frame on a pass-through resampler");
        let (_, written) = inner.process_into_buffer(&self.buf_in, &mut self.buf_out, None)?;
        Ok(&self.buf_out[0][..written])
    }

    /// Clears the filter history, as if newly created (e.g. before reusing it for another stream).
    pub fn reset(&mut self) {
        if let Some(r) = self.inner.as_mut() {
            r.reset();
        }
    }
}

/// Converts a filtered sample back to 16-bit, rounding and clamping overshoot.
#[inline]
fn to_i16(f: f32) -> i16 {
    // `as` saturates for out-of-range floats; the clamp documents the intent.
    (f * 32768.0)
        .round()
        .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// Amplitude used for test tones: -6 dBFS.
    const AMP: f64 = 16384.0;

    fn tone(freq: f64, rate: u32, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| (AMP * (2.0 * PI * freq * n as f64 / f64::from(rate)).sin()).round() as i16)
            .collect()
    }

    /// Runs `input` through a new `from -> to` resampler in 20 ms frames.
    fn run(from: u32, to: u32, input: &[i16]) -> (Vec<i16>, Resampler) {
        let mut r = Resampler::new(from, to).unwrap();
        let mut out = Vec::new();
        for frame in input.chunks_exact(r.input_frame_len()) {
            let before = out.len();
            r.process(frame, &mut out).unwrap();
            assert_eq!(out.len() - before, r.output_frame_len());
        }
        (out, r)
    }

    /// Amplitude of the component at `freq` in `x`, by a DFT at exactly `freq` with a 4-term
    /// Blackman-Harris window (sidelobes < -92 dB and falling, so a tone 1 kHz or more away does
    /// not leak into the measurement at the 80 dB level), normalised by the window's coherent
    /// gain so a pure sine of amplitude A measures A.
    fn amplitude_at(x: &[i16], rate: u32, freq: f64) -> f64 {
        let x: Vec<f64> = x.iter().map(|&s| f64::from(s)).collect();
        amplitude_at_f64(&x, rate, freq)
    }

    fn amplitude_at_f64(x: &[f64], rate: u32, freq: f64) -> f64 {
        let n = x.len() as f64;
        let (mut re, mut im, mut wsum) = (0.0, 0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let p = 2.0 * PI * i as f64 / (n - 1.0);
            let w =
                0.35875 - 0.48829 * p.cos() + 0.14128 * (2.0 * p).cos() - 0.01168 * (3.0 * p).cos();
            let ph = 2.0 * PI * freq * i as f64 / f64::from(rate);
            re += w * s * ph.cos();
            im -= w * s * ph.sin();
            wsum += w;
        }
        2.0 * (re * re + im * im).sqrt() / wsum
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    /// Resamples ~1.2 s of a tone at `f_in` and returns the output level at `f_out` relative to
    /// the input tone, in dB. Two output frames are skipped so the filter (one frame long,
    /// centred at `delay_samples`) has reached steady state.
    fn response_db(from: u32, to: u32, f_in: f64, f_out: f64) -> f64 {
        let frame = (from / 50) as usize;
        let input = tone(f_in, from, 60 * frame);
        let (out, r) = run(from, to, &input);
        let skip = 2 * r.output_frame_len();
        assert!(r.delay_samples() < skip);
        let steady = &out[skip..];
        let level = amplitude_at(steady, to, f_out) / AMP;
        let dbv = db(level);
        eprintln!("{from} -> {to} Hz: tone {f_in} Hz, output at {f_out} Hz: {dbv:.4} dB");
        dbv
    }

    #[test]
    fn frame_lengths_and_delays() {
        for (from, to, fin, fout) in [
            (8000, 16000, 160, 320),
            (16000, 8000, 320, 160),
            (48000, 8000, 960, 160),
            (48000, 16000, 960, 320),
            (8000, 48000, 160, 960),
            (44100, 16000, 882, 320),
        ] {
            let r = Resampler::new(from, to).unwrap();
            assert_eq!(r.input_frame_len(), fin, "{from}->{to}");
            assert_eq!(r.output_frame_len(), fout, "{from}->{to}");
            assert_eq!(r.delay_samples(), fout / 2, "{from}->{to}");
        }
        let same = Resampler::new(16000, 16000).unwrap();
        assert_eq!(same.delay_samples(), 0);
    }

    #[test]
    fn rejects_bad_rates_and_frames() {
        assert!(matches!(
            Resampler::new(0, 8000),
            Err(ResampleError::UnsupportedRates { .. })
        ));
        assert!(matches!(
            Resampler::new(11025, 8000),
            Err(ResampleError::UnsupportedRates { .. })
        ));
        let mut r = Resampler::new(8000, 16000).unwrap();
        let mut out = Vec::new();
        assert!(matches!(
            r.process(&[0; 159], &mut out),
            Err(ResampleError::FrameLength {
                expected: 160,
                actual: 159
            })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn passthrough_when_rates_match() {
        let input = tone(1000.0, 8000, 320);
        let (out, _) = run(8000, 8000, &input);
        assert_eq!(out, input);
    }

    /// An impulse comes out `delay_samples` after its position scaled to the output rate.
    #[test]
    fn delay_matches_impulse_peak() {
        for (from, to) in [(8000, 16000), (16000, 8000), (48000, 8000), (48000, 16000)] {
            let mut input = vec![0i16; 3 * (from / 50) as usize];
            // An input position that maps to a whole output sample.
            let out_pos = 30usize;
            input[out_pos * from as usize / to as usize] = 20000;
            let (out, r) = run(from, to, &input);
            let peak = (0..out.len())
                .max_by_key(|&i| out[i].unsigned_abs())
                .unwrap();
            assert_eq!(peak, out_pos + r.delay_samples(), "{from}->{to}");
        }
    }

    #[test]
    fn upsample_8k_to_16k_passband_3400hz() {
        let gain = response_db(8000, 16000, 3400.0, 3400.0);
        assert!(gain.abs() <= 0.5, "3.4 kHz gain {gain:.3} dB");
    }

    #[test]
    fn upsample_8k_to_16k_image_rejection() {
        // Upsampling a 3 kHz tone leaves an image at 8000 - 3000 = 5000 Hz.
        let tone = response_db(8000, 16000, 3000.0, 3000.0);
        let image = response_db(8000, 16000, 3000.0, 5000.0);
        assert!(tone.abs() <= 0.5, "3 kHz gain {tone:.3} dB");
        assert!(
            image - tone <= -80.0,
            "image only {:.1} dB down",
            tone - image
        );
    }

    #[test]
    fn downsample_16k_to_8k_alias_rejection() {
        // 6 kHz is above the new 4 kHz Nyquist and would alias to 8000 - 6000 = 2000 Hz.
        let alias = response_db(16000, 8000, 6000.0, 2000.0);
        assert!(alias <= -80.0, "alias only {:.1} dB down", -alias);
        let pass = response_db(16000, 8000, 1000.0, 1000.0);
        assert!(pass.abs() <= 0.5, "1 kHz gain {pass:.3} dB");
    }

    #[test]
    fn downsample_48k_passband_and_alias_rejection() {
        let to8 = response_db(48000, 8000, 1000.0, 1000.0);
        assert!(to8.abs() <= 0.5, "48k->8k 1 kHz gain {to8:.3} dB");
        let to16 = response_db(48000, 16000, 1000.0, 1000.0);
        assert!(to16.abs() <= 0.5, "48k->16k 1 kHz gain {to16:.3} dB");
        // 10 kHz would alias to 2 kHz at 8 kHz output.
        let alias = response_db(48000, 8000, 10000.0, 2000.0);
        assert!(alias <= -80.0, "48k->8k alias only {:.1} dB down", -alias);
    }

    /// Like [`response_db`], but through the `f32` filter path without the 16-bit rounding,
    /// which otherwise floors every measurement near -100 dB (a -6 dBFS tone 100 dB down is
    /// below half an LSB and rounds to silence).
    fn response_f32_db(from: u32, to: u32, f_in: f64, f_out: f64) -> f64 {
        let mut r = Resampler::new(from, to).unwrap();
        let frame = r.input_frame_len();
        let mut out = Vec::new();
        for k in 0..60 {
            for (i, x) in r.buf_in[0].iter_mut().enumerate() {
                let n = (k * frame + i) as f64;
                *x = (0.5 * (2.0 * PI * f_in * n / f64::from(from)).sin()) as f32;
            }
            out.extend_from_slice(r.filter_frame().unwrap());
        }
        let steady: Vec<f64> = out[2 * r.output_frame_len()..]
            .iter()
            .map(|&x| f64::from(x))
            .collect();
        let dbv = db(amplitude_at_f64(&steady, to, f_out) / 0.5);
        eprintln!("{from} -> {to} Hz (f32 path): tone {f_in} Hz, at {f_out} Hz: {dbv:.4} dB");
        dbv
    }

    #[test]
    fn filter_rejection_without_16_bit_rounding() {
        let image = response_f32_db(8000, 16000, 3000.0, 5000.0);
        assert!(image <= -80.0, "8k->16k image {image:.1} dB");
        let alias = response_f32_db(16000, 8000, 6000.0, 2000.0);
        assert!(alias <= -80.0, "16k->8k alias {alias:.1} dB");
        let alias = response_f32_db(48000, 8000, 6000.0, 2000.0);
        assert!(alias <= -80.0, "48k->8k alias {alias:.1} dB");
        let alias = response_f32_db(48000, 16000, 10000.0, 6000.0);
        assert!(alias <= -80.0, "48k->16k alias {alias:.1} dB");
    }

    /// Prints the passband edge and transition band of each supported direction. Run with
    /// `cargo nextest run -p vbin-media --run-ignored only --no-capture frequency_response`.
    #[test]
    #[ignore = "prints a frequency-response table; no assertions"]
    fn frequency_response_report() {
        for (from, to) in [(8000, 16000), (16000, 8000), (48000, 8000), (48000, 16000)] {
            let nyq = f64::from(from.min(to)) / 2.0;
            for frac in [
                0.5, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95, 0.975, 1.0, 1.025, 1.05, 1.1, 1.25,
            ] {
                let f = nyq * frac;
                if to > from {
                    // Upsampling: passband at f, image at from - f.
                    if frac < 1.0 {
                        response_f32_db(from, to, f, f);
                        response_f32_db(from, to, f, f64::from(from) - f);
                    }
                } else if frac < 1.0 {
                    response_f32_db(from, to, f, f);
                } else if f < f64::from(from) / 2.0 {
                    // Downsampling: f above the new Nyquist aliases to `to - f`.
                    response_f32_db(from, to, f, f64::from(to) - f);
                }
            }
        }
    }

    #[test]
    fn full_scale_input_clamps_instead_of_wrapping() {
        // A full-scale square wave overshoots after filtering (Gibbs); it must saturate.
        let input: Vec<i16> = (0..1600)
            .map(|n| {
                if (n / 10) % 2 == 0 {
                    i16::MAX
                } else {
                    i16::MIN
                }
            })
            .collect();
        let (out, r) = run(8000, 16000, &input);
        let steady = &out[2 * r.output_frame_len()..];
        assert!(steady.contains(&i16::MAX) && steady.contains(&i16::MIN));
        // No wrap-around: the sign of the output follows the input's square wave.
        let d = r.delay_samples();
        for (i, &s) in steady.iter().enumerate() {
            let in_idx = (i + 2 * r.output_frame_len() - d) / 2;
            let phase = in_idx % 20;
            if (3..7).contains(&phase) {
                assert!(s > 0, "sample {i}: {s}");
            } else if (13..17).contains(&phase) {
                assert!(s < 0, "sample {i}: {s}");
            }
        }
    }

    #[test]
    fn resampler_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Resampler>();
    }
}
