//! Decoding audio files (uploaded prompts, a TTS server's reply) into the media engine's
//! format, 16 kHz mono 16-bit PCM, with [symphonia] (pure Rust).
//!
//! WAV (PCM integer and float, A-law, µ-law), MP3 and OGG/Vorbis are understood, at any rate
//! and channel count: channels are averaged, then the clip is resampled with
//! [`crate::clip::ClipResampler`] as it is decoded. Input is untrusted, so the encoded size
//! ([`MAX_INPUT_BYTES`]) and the decoded length ([`MAX_DURATION_SECS`]) are bounded, and a
//! panic inside the decoder is caught and reported as [`DecodeError::Malformed`].

use crate::clip::{self, ClipResampler, CLIP_RATE_HZ};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Largest encoded input accepted, in bytes (20 MiB).
pub const MAX_INPUT_BYTES: usize = 20 * 1024 * 1024;

/// Longest decoded audio accepted, in seconds (10 minutes).
pub const MAX_DURATION_SECS: u32 = 600;

/// Highest sample rate accepted in a file (a 10-minute clip at this rate is what the decoder
/// may hold before resampling).
pub const MAX_FILE_RATE_HZ: u32 = 192_000;

/// Why a file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is empty.
    #[error("no audio data")]
    Empty,
    /// The input is larger than [`MAX_INPUT_BYTES`].
    #[error("audio file is {0} bytes, more than the {MAX_INPUT_BYTES} allowed")]
    TooLarge(usize),
    /// The decoded audio is longer than [`MAX_DURATION_SECS`].
    #[error("audio is longer than {MAX_DURATION_SECS} s")]
    TooLong,
    /// Not a container or codec this build understands (WAV, MP3, OGG/Vorbis).
    #[error("unsupported audio format: {0}")]
    Unsupported(String),
    /// The file is damaged or not audio at all.
    #[error("malformed audio: {0}")]
    Malformed(String),
    /// The stream's sample rate or channel layout is unusable.
    #[error("unusable audio stream: {0}")]
    BadStream(String),
}

impl From<clip::ClipError> for DecodeError {
    fn from(e: clip::ClipError) -> Self {
        DecodeError::BadStream(e.to_string())
    }
}

/// Decodes a WAV, MP3 or OGG/Vorbis file to 16 kHz mono PCM.
///
/// The format is detected from the content, not from a name or MIME type. Frames the decoder
/// reports as corrupt are skipped (as players do); a file that yields no audio at all is
/// [`DecodeError::Malformed`].
pub fn decode_audio(bytes: &[u8]) -> Result<Vec<i16>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    let owned = bytes.to_vec();
    // Symphonia has panicked on crafted input in the past; a bad upload must not take down the
    // task that decodes it.
    std::panic::catch_unwind(move || decode_owned(owned)).unwrap_or_else(|_| {
        Err(DecodeError::Malformed(
            "the decoder failed on this input".into(),
        ))
    })
}

fn decode_owned(bytes: Vec<u8>) -> Result<Vec<i16>, DecodeError> {
    let mss = MediaSourceStream::new(Box::new(std::io::Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            mss,
            &FormatOptions {
                // Trims MP3 encoder delay and padding (LAME/Xing header).
                enable_gapless: true,
                ..Default::default()
            },
            &MetadataOptions::default(),
        )
        .map_err(|e| match e {
            SymError::Unsupported(m) => DecodeError::Unsupported(m.into()),
            e => DecodeError::Malformed(e.to_string()),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| DecodeError::Unsupported("no audio track".into()))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(m) => DecodeError::Unsupported(m.into()),
            e => DecodeError::Malformed(e.to_string()),
        })?;

    let mut out = Output::default();
    let mut last_error = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            // The end of the stream (symphonia reports it as an unexpected end of file).
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => break,
            Err(e) => {
                last_error = Some(e.to_string());
                break;
            }
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(SymError::DecodeError(m)) => {
                last_error = Some(m.to_string());
                continue;
            }
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(DecodeError::Malformed(e.to_string())),
        };
        let spec = *decoded.spec();
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let mut samples = SampleBuffer::<f32>::new(decoded.capacity() as u64, spec);
        samples.copy_interleaved_ref(decoded);
        out.add(spec.rate, spec.channels.count(), samples.samples())?;
    }
    let pcm = out.finish()?;
    if pcm.is_empty() {
        return Err(DecodeError::Malformed(
            last_error.unwrap_or_else(|| "no audio in the file".into()),
        ));
    }
    Ok(pcm)
}

/// The decoded clip so far: 16 kHz mono, plus the resampler of the current run of packets
/// (a chained stream may change rate part-way).
#[derive(Default)]
struct Output {
    done: Vec<f32>,
    current: Option<(u32, ClipResampler)>,
    /// Seconds of input decoded, summed over rate changes.
    seconds: f64,
}

impl Output {
    fn add(&mut self, rate: u32, channels: usize, interleaved: &[f32]) -> Result<(), DecodeError> {
        if rate == 0 || rate > MAX_FILE_RATE_HZ {
            return Err(DecodeError::BadStream(format!("sample rate {rate} Hz")));
        }
        if channels == 0 {
            return Err(DecodeError::BadStream("no channels".into()));
        }
        let frames = interleaved.len() / channels;
        self.seconds += frames as f64 / f64::from(rate);
        if self.seconds > f64::from(MAX_DURATION_SECS) {
            return Err(DecodeError::TooLong);
        }
        if self.current.as_ref().is_some_and(|(r, _)| *r != rate) {
            self.flush()?;
        }
        let resampler = match &mut self.current {
            Some((_, r)) => r,
            None => {
                &mut self
                    .current
                    .insert((rate, ClipResampler::new(rate, CLIP_RATE_HZ)?))
                    .1
            }
        };
        let scale = 1.0 / channels as f32;
        let mono: Vec<f32> = interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() * scale)
            .collect();
        resampler.push(&mono)?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DecodeError> {
        if let Some((_, r)) = self.current.take() {
            self.done.extend(r.finish()?);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<i16>, DecodeError> {
        self.flush()?;
        Ok(clip::to_i16(&self.done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{correlation, envelope, espeak_wav, recognize, sox};

    /// `text` from espeak-ng: 22,050 Hz mono WAV, and its length at 16 kHz.
    fn speech(text: &str) -> (Vec<u8>, usize) {
        let wav = espeak_wav(text);
        // The data chunk of espeak-ng's 44-byte-header WAV: 16-bit mono samples.
        let samples = (wav.len() - 44) / 2;
        (wav, (samples as f64 * 16_000.0 / 22_050.0).round() as usize)
    }

    /// A 44-byte WAV header for PCM (16-bit) data of `data_len` bytes.
    fn wav_header(rate: u32, channels: u16, data_len: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36 + data_len).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        h.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        h.extend_from_slice(&(channels * 2).to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data_len.to_le_bytes());
        h
    }

    #[tokio::test]
    async fn wav_from_espeak_keeps_its_length_and_its_words() {
        let (wav, len) = speech("press two for sales");
        let pcm = decode_audio(&wav).unwrap();
        assert_eq!(pcm.len(), len);
        assert!(pcm.len() > 16_000, "{} samples", pcm.len());
        assert_eq!(recognize(&pcm).await, ["press two for sales"]);
    }

    #[tokio::test]
    async fn ogg_vorbis_stereo_44k_decodes_to_the_same_speech() {
        let (wav, len) = speech("thank you goodbye");
        let reference = decode_audio(&wav).unwrap();
        let ogg = sox(&wav, "wav", &["-r", "44100", "-c", "2", "-C", "3"], "ogg");
        assert_eq!(&ogg[..4], b"OggS");
        let pcm = decode_audio(&ogg).unwrap();
        // Vorbis is sample-exact in length (its granule positions trim the padding).
        assert!(pcm.len().abs_diff(len) <= 16, "{} vs {len}", pcm.len());
        let c = correlation(&envelope(&pcm), &envelope(&reference));
        assert!(c > 0.95, "envelope correlation {c}");
        assert_eq!(recognize(&pcm).await, ["thank you goodbye"]);
    }

    /// `testdata/press-two-for-sales.mp3` (15.5 kB) was made once, offline, with Debian's
    /// tools (sox cannot write MP3 and lame is not among the test dependencies):
    /// `espeak-ng -v en-us -s 130 -w p.wav "press two for sales"` (1.51, 2.065 s),
    /// `sox p.wav -r 44100 -c 2 p44s.wav`,
    /// `lame --silent --abr 56 --resample 44.1 -m j p44s.wav press-two-for-sales.mp3` (3.100;
    /// ABR so it writes the Xing/LAME header with the encoder delay and padding).
    const MP3: &[u8] = include_bytes!("../testdata/press-two-for-sales.mp3");

    #[tokio::test]
    async fn mp3_joint_stereo_decodes_to_the_same_speech() {
        let pcm = decode_audio(MP3).unwrap();
        // 45,535 samples at 22,050 Hz = 2.065 s: the encoder's delay and padding are
        // trimmed using the LAME header (without that it is 51 ms longer and 20 ms late).
        let want = 33_041usize;
        assert!(pcm.len().abs_diff(want) <= 2, "{} vs {want}", pcm.len());
        let (wav, _) = speech("press two for sales");
        let reference = decode_audio(&wav).unwrap();
        let c = correlation(&envelope(&pcm), &envelope(&reference));
        assert!(c > 0.98, "envelope correlation {c}");
        assert_eq!(recognize(&pcm).await, ["press two for sales"]);
    }

    #[test]
    fn other_wav_layouts_are_converted() {
        let (wav, len) = speech("hello world");
        let reference = decode_audio(&wav).unwrap();
        for opts in [
            &["-r", "48000", "-c", "2", "-b", "24"][..],
            &["-r", "8000", "-e", "u-law"][..],
            &["-r", "24000", "-e", "floating-point", "-b", "32"][..],
            &["-r", "16000", "-c", "6"][..],
        ] {
            let other = sox(&wav, "wav", opts, "wav");
            let pcm = decode_audio(&other).unwrap();
            assert!(
                pcm.len().abs_diff(len) <= 2,
                "{opts:?}: {} vs {len}",
                pcm.len()
            );
            let c = correlation(&envelope(&pcm), &envelope(&reference));
            assert!(c > 0.97, "{opts:?}: envelope correlation {c}");
        }
    }

    #[test]
    fn pcm_values_survive_a_plain_16k_wav() {
        let samples: Vec<i16> = (0..1_600)
            .map(|i| ((i * 37) % 20_000 - 10_000) as i16)
            .collect();
        let mut wav = wav_header(16_000, 1, 3_200);
        wav.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        assert_eq!(decode_audio(&wav).unwrap(), samples);
    }

    #[test]
    fn limits_and_garbage_are_errors() {
        assert!(matches!(decode_audio(&[]), Err(DecodeError::Empty)));
        let big = vec![0u8; MAX_INPUT_BYTES + 1];
        assert!(
            matches!(decode_audio(&big), Err(DecodeError::TooLarge(n)) if n == MAX_INPUT_BYTES + 1)
        );
        // 11 minutes of 8 kHz 8-bit silence: 5.3 MB, under the size limit, over the length limit.
        let scratch = crate::testutil::Scratch::new();
        let path = scratch.path("long.wav");
        let ok = std::process::Command::new("sox")
            .args(["-n", "-r", "8000", "-b", "8", "-c", "1"])
            .arg(&path)
            .args(["trim", "0", "660"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sox failed");
        let long = std::fs::read(&path).unwrap();
        assert!(long.len() < MAX_INPUT_BYTES);
        assert!(
            matches!(decode_audio(&long), Err(DecodeError::TooLong)),
            "{:?}",
            decode_audio(&long).map(|p| p.len())
        );
        // Not audio at all.
        let text = b"This is not an audio file, just some words in a row.".repeat(50);
        assert!(matches!(
            decode_audio(&text),
            Err(DecodeError::Unsupported(_) | DecodeError::Malformed(_))
        ));
        // Pseudo-random bytes.
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        assert!(decode_audio(&noise).is_err());
        // A WAV header with no data, and one cut inside the header.
        assert!(decode_audio(&wav_header(16_000, 1, 0)).is_err());
        assert!(decode_audio(&wav_header(16_000, 1, 3_200)[..30]).is_err());
        // A header claiming 0 channels or an absurd rate.
        let mut bad = wav_header(16_000, 0, 3_200);
        bad.extend([0u8; 3_200]);
        assert!(decode_audio(&bad).is_err());
        let mut bad = wav_header(4_000_000, 1, 3_200);
        bad.extend([0u8; 3_200]);
        assert!(decode_audio(&bad).is_err());
    }

    #[test]
    fn the_decoded_length_is_limited_even_when_the_header_says_nothing() {
        let mut out = Output::default();
        let minute = vec![0f32; 8_000 * 60 * 2];
        for _ in 0..10 {
            out.add(8_000, 2, &minute).unwrap();
        }
        assert!(matches!(
            out.add(8_000, 2, &[0.0; 4]),
            Err(DecodeError::TooLong)
        ));
        // A rate change part-way is followed, and each run is resampled on its own.
        let mut out = Output::default();
        out.add(8_000, 1, &[0.25; 8_000]).unwrap();
        out.add(48_000, 2, &[0.25; 96_000]).unwrap();
        let pcm = out.finish().unwrap();
        assert_eq!(pcm.len(), 32_000);
        assert!(pcm[4_000..12_000].iter().all(|&s| (s - 8_192).abs() < 40));
        assert!(pcm[20_000..28_000].iter().all(|&s| (s - 8_192).abs() < 40));
        assert!(matches!(
            Output::default().add(0, 1, &[0.0]),
            Err(DecodeError::BadStream(_))
        ));
        assert!(matches!(
            Output::default().add(16_000, 0, &[0.0]),
            Err(DecodeError::BadStream(_))
        ));
        assert!(matches!(
            Output::default().add(400_000, 1, &[0.0]),
            Err(DecodeError::BadStream(_))
        ));
    }

    #[test]
    fn a_streamed_wav_with_placeholder_sizes_decodes() {
        // espeak-ng --stdout and streaming TTS servers do not know the length up front: the
        // RIFF and data sizes are placeholders far beyond the end of the file.
        let samples: Vec<i16> = (0..16_000)
            .map(|i| ((i * 91) % 30_000 - 15_000) as i16)
            .collect();
        let mut wav = wav_header(16_000, 1, 0xFFFF_FFFF - 36);
        wav[4..8].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        wav.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
        assert_eq!(decode_audio(&wav).unwrap(), samples);
    }

    #[test]
    fn a_truncated_file_gives_what_it_holds() {
        let (wav, len) = speech("please hold");
        let half = &wav[..44 + (wav.len() - 44) / 2];
        let pcm = decode_audio(half).unwrap();
        assert!(
            pcm.len().abs_diff(len / 2) <= 2,
            "{} vs {}",
            pcm.len(),
            len / 2
        );
        let cut = &MP3[..MP3.len() / 2];
        let pcm = decode_audio(cut).unwrap();
        assert!((12_000..22_000).contains(&pcm.len()), "{}", pcm.len());
    }
}
