//! Whole clips of audio (prompts, synthesised speech, uploaded files) turned into the media
//! engine's internal format, 16 kHz mono 16-bit PCM ([`CLIP_RATE_HZ`]), plus generated clips
//! ([`beep`], [`silence`]).
//!
//! Unlike [`crate::resample::Resampler`], which converts a live stream 20 ms at a time, these
//! functions see the whole clip at once: any input rate in [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`]
//! works (22.05, 24, 44.1 kHz, ...), the resampler's delay is removed and its tail flushed, so
//! the output is time-aligned with the input (to within one output sample) and exactly
//! `len × to / from` samples long (rounded).
//!
//! Resampling uses rubato's synchronous FFT resampler ([`rubato::FftFixedIn`]), whose
//! anti-alias filter is a Blackman-Harris²-windowed sinc; no linear or polynomial
//! interpolation is involved, so downsampling (44.1 kHz to 16 kHz, say) does not fold the
//! band above 8 kHz back into the audible range.

use rubato::{FftFixedIn, Resampler as _};

/// The rate every clip is converted to: the media engine's internal rate.
pub const CLIP_RATE_HZ: u32 = 16_000;

/// Lowest input rate accepted.
pub const MIN_RATE_HZ: u32 = 1_000;

/// Highest input rate accepted.
pub const MAX_RATE_HZ: u32 = 384_000;

/// Most channels accepted in an interleaved clip.
pub const MAX_CHANNELS: usize = 32;

/// Frequency of [`beep`], in Hz.
pub const BEEP_HZ: f32 = 1_000.0;

/// Fade in and out of [`beep`], in ms (a tone switched on at full level clicks).
pub const BEEP_FADE_MS: u32 = 5;

/// Peak level of [`beep`], in 16-bit units (about -6 dBFS).
const BEEP_PEAK: f32 = 16_000.0;

/// Input frames per resampler call (the FFT size follows from it and the rates' ratio).
const CHUNK_IN: usize = 2_048;

/// Why a clip could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A sample rate outside [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`].
    #[error("sample rate {0} Hz is outside {MIN_RATE_HZ}..={MAX_RATE_HZ} Hz")]
    BadRate(u32),
    /// Zero channels, more than [`MAX_CHANNELS`], or a sample count that is not a whole
    /// number of frames.
    #[error("bad channel layout: {channels} channels, {samples} samples")]
    BadChannels {
        /// Channels claimed.
        channels: usize,
        /// Interleaved samples given.
        samples: usize,
    },
    /// Rubato refused the configuration or failed while running.
    #[error("resampling: {0}")]
    Resample(String),
}

/// Converts an interleaved 16-bit clip with `channels` channels at `rate_hz` to 16 kHz mono
/// (channels averaged, then resampled).
pub fn to_mono_16k(
    interleaved: &[i16],
    channels: usize,
    rate_hz: u32,
) -> Result<Vec<i16>, ClipError> {
    let mono = downmix(interleaved, channels)?;
    Ok(to_i16(&resample(&mono, rate_hz, CLIP_RATE_HZ)?))
}

/// Averages the channels of an interleaved 16-bit clip into one channel of `f32` samples in
/// -1.0..=1.0.
pub fn downmix(interleaved: &[i16], channels: usize) -> Result<Vec<f32>, ClipError> {
    if channels == 0 || channels > MAX_CHANNELS || !interleaved.len().is_multiple_of(channels) {
        return Err(ClipError::BadChannels {
            channels,
            samples: interleaved.len(),
        });
    }
    let scale = 1.0 / (32_768.0 * channels as f32);
    Ok(interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().map(|&s| f32::from(s)).sum::<f32>() * scale)
        .collect())
}

/// Resamples a mono clip of `f32` samples from `from_hz` to `to_hz` (both in
/// [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`]).
///
/// The output is time-aligned with the input to within one output sample (the filter delay
/// is removed) and `round(len × to_hz / from_hz)` samples long. Equal rates return a copy.
pub fn resample(mono: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ClipError> {
    let mut r = ClipResampler::new(from_hz, to_hz)?;
    r.push(mono)?;
    r.finish()
}

/// [`resample`] fed piece by piece: a clip decoded packet by packet is converted as it
/// arrives, so only the (smaller) output is held in memory, not the whole input.
pub struct ClipResampler {
    from_hz: u32,
    to_hz: u32,
    /// `None` when the rates are equal.
    inner: Option<FftFixedIn<f32>>,
    /// Input not yet given to the resampler (less than one chunk after each `push`).
    pending: Vec<f32>,
    buf_out: Vec<Vec<f32>>,
    /// Output samples still to drop: the resampler's delay.
    skip: usize,
    /// Input samples pushed so far.
    fed: u64,
    out: Vec<f32>,
}

impl std::fmt::Debug for ClipResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipResampler")
            .field("from_hz", &self.from_hz)
            .field("to_hz", &self.to_hz)
            .field("fed", &self.fed)
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl ClipResampler {
    /// A resampler from `from_hz` to `to_hz` (both in [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`]).
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ClipError> {
        for r in [from_hz, to_hz] {
            if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&r) {
                return Err(ClipError::BadRate(r));
            }
        }
        let (inner, buf_out, skip) = if from_hz == to_hz {
            (None, Vec::new(), 0)
        } else {
            let r = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, CHUNK_IN, 1, 1)
                .map_err(|e| ClipError::Resample(e.to_string()))?;
            let buf_out = vec![vec![0f32; r.output_frames_max()]];
            let skip = r.output_delay();
            (Some(r), buf_out, skip)
        };
        Ok(Self {
            from_hz,
            to_hz,
            inner,
            pending: Vec::new(),
            buf_out,
            skip,
            fed: 0,
            out: Vec::new(),
        })
    }

    /// Input samples pushed so far.
    pub fn input_len(&self) -> u64 {
        self.fed
    }

    /// Adds the next samples of the clip.
    pub fn push(&mut self, mono: &[f32]) -> Result<(), ClipError> {
        self.fed += mono.len() as u64;
        let Some(r) = self.inner.as_mut() else {
            self.out.extend_from_slice(mono);
            return Ok(());
        };
        self.pending.extend_from_slice(mono);
        let mut pos = 0;
        while self.pending.len() - pos >= r.input_frames_next() {
            let chunk = &self.pending[pos..pos + r.input_frames_next()];
            let (used, written) = r
                .process_into_buffer(&[chunk], &mut self.buf_out, None)
                .map_err(|e| ClipError::Resample(e.to_string()))?;
            pos += used;
            Self::keep(&mut self.out, &mut self.skip, &self.buf_out[0][..written]);
        }
        self.pending.drain(..pos);
        Ok(())
    }

    /// Appends `written` to `out` after dropping what is left of the delay.
    fn keep(out: &mut Vec<f32>, skip: &mut usize, written: &[f32]) {
        let drop = (*skip).min(written.len());
        *skip -= drop;
        out.extend_from_slice(&written[drop..]);
    }

    /// Flushes the resampler and returns the whole converted clip,
    /// `round(input_len × to_hz / from_hz)` samples.
    pub fn finish(mut self) -> Result<Vec<f32>, ClipError> {
        let want = (self.fed * u64::from(self.to_hz) + u64::from(self.from_hz) / 2)
            / u64::from(self.from_hz);
        let want =
            usize::try_from(want).map_err(|_| ClipError::Resample("clip too long".into()))?;
        if let Some(r) = self.inner.as_mut() {
            let mut pending = Some(std::mem::take(&mut self.pending));
            // The rest of the input, then zeros until the delayed output reaches its end.
            while self.out.len() < want {
                let input = pending.take().filter(|p| !p.is_empty());
                let (_, written) = r
                    .process_partial_into_buffer(
                        input
                            .as_ref()
                            .map(|p| [p.as_slice()])
                            .as_ref()
                            .map(|a| &a[..]),
                        &mut self.buf_out,
                        None,
                    )
                    .map_err(|e| ClipError::Resample(e.to_string()))?;
                if written == 0 {
                    // Rubato's fixed-input resampler always writes; this guards the loop.
                    break;
                }
                Self::keep(&mut self.out, &mut self.skip, &self.buf_out[0][..written]);
            }
        }
        self.out.resize(want, 0.0);
        Ok(self.out)
    }
}

/// Converts `f32` samples in -1.0..=1.0 to 16-bit, clamping what lies outside.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .map(|&s| {
            let s = if s.is_finite() { s } else { 0.0 };
            (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16
        })
        .collect()
}

/// Samples in `ms` milliseconds at 16 kHz.
fn samples_for(ms: u32) -> usize {
    (u64::from(ms) * u64::from(CLIP_RATE_HZ) / 1_000) as usize
}

/// `ms` milliseconds of silence at 16 kHz.
pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; samples_for(ms)]
}

/// A [`BEEP_HZ`] tone of `duration_ms` at 16 kHz, about -6 dBFS, faded in and out over
/// [`BEEP_FADE_MS`] (or a third of the tone each, if it is shorter than that allows) so it does
/// not click.
pub fn beep(duration_ms: u32) -> Vec<i16> {
    tone(&[BEEP_HZ], duration_ms, BEEP_PEAK)
}

/// The DTMF keys and their (low, high) frequencies in Hz (ITU-T Q.23).
const DTMF_KEYS: [(char, f32, f32); 16] = [
    ('1', 697.0, 1209.0),
    ('2', 697.0, 1336.0),
    ('3', 697.0, 1477.0),
    ('A', 697.0, 1633.0),
    ('4', 770.0, 1209.0),
    ('5', 770.0, 1336.0),
    ('6', 770.0, 1477.0),
    ('B', 770.0, 1633.0),
    ('7', 852.0, 1209.0),
    ('8', 852.0, 1336.0),
    ('9', 852.0, 1477.0),
    ('C', 852.0, 1633.0),
    ('*', 941.0, 1209.0),
    ('0', 941.0, 1336.0),
    ('#', 941.0, 1477.0),
    ('D', 941.0, 1633.0),
];

/// In-band DTMF at 16 kHz: each key of `digits` as its two tones for `tone_ms`, followed by
/// `gap_ms` of silence (keys that are not DTMF are skipped). Each tone peaks at about -9 dBFS,
/// the pair at about -3 dBFS.
pub fn dtmf(digits: &str, tone_ms: u32, gap_ms: u32) -> Vec<i16> {
    let mut out = Vec::new();
    for d in digits.chars() {
        let Some(&(_, low, high)) = DTMF_KEYS
            .iter()
            .find(|(k, _, _)| *k == d.to_ascii_uppercase())
        else {
            continue;
        };
        out.extend(tone(&[low, high], tone_ms, BEEP_PEAK / 2.0));
        out.extend(silence(gap_ms));
    }
    out
}

/// The sum of sines at `freqs` (each peaking at `peak`) for `duration_ms` at 16 kHz, faded in
/// and out.
fn tone(freqs: &[f32], duration_ms: u32, peak: f32) -> Vec<i16> {
    let n = samples_for(duration_ms);
    let fade = samples_for(BEEP_FADE_MS).min(n / 3).max(1);
    let ws: Vec<f32> = freqs
        .iter()
        .map(|f| 2.0 * std::f32::consts::PI * f / CLIP_RATE_HZ as f32)
        .collect();
    (0..n)
        .map(|i| {
            let from_edge = i.min(n - 1 - i);
            let gain = if from_edge < fade {
                // Raised-cosine ramp: 0 at the edge, 1 after `fade` samples.
                0.5 - 0.5 * (std::f32::consts::PI * from_edge as f32 / fade as f32).cos()
            } else {
                1.0
            };
            let v: f32 = ws.iter().map(|w| (w * i as f32).sin()).sum();
            (peak * gain * v).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, rate: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        let w = 2.0 * std::f32::consts::PI * hz / rate as f32;
        (0..n).map(|i| amp * (w * i as f32).sin()).collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|s| s * s).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    /// Amplitude of frequency `hz` in `x` (a single-bin DFT over the whole slice).
    fn amplitude_at(x: &[f32], hz: f32, rate: u32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / rate as f32;
        let (mut re, mut im) = (0f64, 0f64);
        for (i, &s) in x.iter().enumerate() {
            re += f64::from(s) * f64::from((w * i as f32).cos());
            im += f64::from(s) * f64::from((w * i as f32).sin());
        }
        (2.0 * (re * re + im * im).sqrt() / x.len() as f64) as f32
    }

    /// Fits `a·sin(2π·hz·t)` with a delay to `y` (which starts at sample `first` of a 16 kHz
    /// stream): returns (amplitude, delay in samples).
    fn level_and_shift(y: &[f32], first: usize, hz: f64) -> (f32, f32) {
        let (mut s, mut c) = (0f64, 0f64);
        for (k, &v) in y.iter().enumerate() {
            let t = 2.0 * std::f64::consts::PI * hz * (first + k) as f64 / f64::from(CLIP_RATE_HZ);
            s += f64::from(v) * t.sin();
            c += f64::from(v) * t.cos();
        }
        let (s, c) = (2.0 * s / y.len() as f64, 2.0 * c / y.len() as f64);
        let shift = -c.atan2(s) / (2.0 * std::f64::consts::PI * hz) * f64::from(CLIP_RATE_HZ);
        ((s * s + c * c).sqrt() as f32, shift as f32)
    }

    #[test]
    fn common_rates_give_the_expected_length_and_keep_a_tone() {
        for rate in [8_000, 11_025, 22_050, 24_000, 44_100, 48_000] {
            let x = tone(440.0, rate, 1.5, 0.5);
            let y = resample(&x, rate, CLIP_RATE_HZ).unwrap();
            let want_len = (x.len() as f64 * 16_000.0 / f64::from(rate)).round() as usize;
            assert_eq!(y.len(), want_len, "{rate} Hz");
            assert!((23_999..=24_000).contains(&y.len()));
            // Away from the edges the tone is intact: same level, and aligned with the input
            // to within one output sample (rubato's filter centre is a fraction of a sample off
            // its reported delay for some ratios).
            let (amp, shift) = level_and_shift(&y[4_000..20_000], 4_000, 440.0);
            assert!((amp - 0.5).abs() < 0.005, "{rate} Hz: level {amp}");
            assert!(shift.abs() < 1.0, "{rate} Hz: shifted {shift} samples");
            // And nothing else: the residual after removing the fitted tone is tiny.
            let w = 2.0 * std::f32::consts::PI * 440.0 / CLIP_RATE_HZ as f32;
            let res: Vec<f32> = (4_000..20_000)
                .map(|i| y[i] - amp * (w * (i as f32 - shift)).sin())
                .collect();
            assert!(rms(&res) < 0.002, "{rate} Hz: residual rms {}", rms(&res));
        }
    }

    #[test]
    fn downsampling_removes_what_lies_above_the_new_nyquist() {
        // 11 kHz at 44.1 kHz would alias to 5 kHz at 16 kHz without the anti-alias filter
        // (a linear interpolator lets a lot of it through).
        let x = tone(11_000.0, 44_100, 1.0, 0.5);
        let y = resample(&x, 44_100, CLIP_RATE_HZ).unwrap();
        let alias = amplitude_at(&y[2_000..14_000], 5_000.0, CLIP_RATE_HZ);
        assert!(rms(&y[2_000..14_000]) < 0.001, "rms {}", rms(&y));
        assert!(alias < 0.001, "alias amplitude {alias}");
    }

    #[test]
    fn pushing_in_pieces_gives_the_same_clip() {
        let x = tone(700.0, 44_100, 0.7, 0.3);
        let whole = resample(&x, 44_100, CLIP_RATE_HZ).unwrap();
        let mut r = ClipResampler::new(44_100, CLIP_RATE_HZ).unwrap();
        for piece in x.chunks(1_151) {
            r.push(piece).unwrap();
            r.push(&[]).unwrap();
        }
        assert_eq!(r.input_len(), x.len() as u64);
        assert_eq!(r.finish().unwrap(), whole);
    }

    #[test]
    fn stereo_is_averaged_to_mono() {
        let x: Vec<i16> = [1000i16, 3000].repeat(16_000);
        let y = to_mono_16k(&x, 2, CLIP_RATE_HZ).unwrap();
        assert_eq!(y.len(), 16_000);
        assert!(y.iter().all(|&s| s == 2000));
        // Opposite channels cancel.
        let x: Vec<i16> = [1000i16, -1000].repeat(22_050);
        let y = to_mono_16k(&x, 2, 22_050).unwrap();
        assert_eq!(y.len(), 16_000);
        assert!(y.iter().all(|&s| s == 0));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            to_mono_16k(&[1, 2, 3], 2, 16_000),
            Err(ClipError::BadChannels {
                channels: 2,
                samples: 3
            })
        ));
        assert!(matches!(
            downmix(&[1], 0),
            Err(ClipError::BadChannels { .. })
        ));
        assert!(matches!(
            downmix(&[0; 33], 33),
            Err(ClipError::BadChannels { .. })
        ));
        assert!(matches!(
            resample(&[0.0], 0, 16_000),
            Err(ClipError::BadRate(0))
        ));
        assert!(matches!(
            resample(&[0.0], 16_000, 1_000_000),
            Err(ClipError::BadRate(1_000_000))
        ));
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
        // A prime rate works too (gcd 1: one FFT of a second).
        assert_eq!(
            resample(&[0.0; 7_919], 7_919, 16_000).unwrap().len(),
            16_000
        );
        assert_eq!(
            to_i16(&[2.0, -2.0, f32::NAN, 0.5]),
            [32_767, -32_768, 0, 16_384]
        );
    }

    #[test]
    fn beep_and_silence() {
        assert_eq!(silence(250), vec![0; 4_000]);
        assert!(silence(0).is_empty());
        let b = beep(200);
        assert_eq!(b.len(), 3_200);
        // Faded: starts and ends near zero, full level in the middle.
        assert_eq!(b[0], 0);
        assert!(b[b.len() - 1].unsigned_abs() < 200);
        let f: Vec<f32> = b.iter().map(|&s| f32::from(s) / 32_768.0).collect();
        let peak_mid = f[400..2_800].iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak_mid - BEEP_PEAK / 32_768.0).abs() < 0.01, "{peak_mid}");
        assert!(f[..10].iter().all(|s| s.abs() < 0.05));
        // It is a 1 kHz tone.
        assert!(amplitude_at(&f[400..2_800], BEEP_HZ, CLIP_RATE_HZ) > 0.45);
        assert!(amplitude_at(&f[400..2_800], 2_000.0, CLIP_RATE_HZ) < 0.01);
        // Very short beeps still work.
        assert_eq!(beep(1).len(), 16);
        assert!(beep(0).is_empty());
    }

    #[test]
    fn dtmf_keys_are_their_two_tones() {
        let d = dtmf("2x#", 100, 50);
        // Two keys (x is skipped), 150 ms each.
        assert_eq!(d.len(), 2 * 2_400);
        let f: Vec<f32> = d.iter().map(|&s| f32::from(s) / 32_768.0).collect();
        let two = &f[200..1_400];
        assert!(amplitude_at(two, 697.0, CLIP_RATE_HZ) > 0.2);
        assert!(amplitude_at(two, 1_336.0, CLIP_RATE_HZ) > 0.2);
        assert!(amplitude_at(two, 941.0, CLIP_RATE_HZ) < 0.01);
        assert!(
            f[1_700..2_400].iter().all(|s| *s == 0.0),
            "the gap is silent"
        );
        let hash = &f[2_600..3_800];
        assert!(amplitude_at(hash, 941.0, CLIP_RATE_HZ) > 0.2);
        assert!(amplitude_at(hash, 1_477.0, CLIP_RATE_HZ) > 0.2);
        assert!(amplitude_at(hash, 1_336.0, CLIP_RATE_HZ) < 0.01);
    }
}
