//! Wideband codecs to PCM: G.722 (via `ezk-g722`'s port of the public-domain libg722) and
//! Opus (via the `opus` crate on the system's libopus, Debian's `libopus-dev`). G.711 is in
//! [`crate::g711`].

use ezk_g722::libg722::{
    decoder::Decoder as Libg722Decoder, encoder::Encoder as Libg722Encoder, Bitrate,
};

/// Why a packet could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libopus refused the setup or the packet.
    #[error("opus: {0}")]
    Opus(String),
}

/// G.722 at 64 kbit/s (RTP payload type 9), one byte per two 16 kHz samples, to 16 kHz PCM.
pub struct G722Decoder {
    inner: Libg722Decoder,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder (it keeps the ADPCM state between packets of one stream).
    pub fn new() -> Self {
        Self {
            inner: Libg722Decoder::new(Bitrate::Mode1_64000, false, false),
        }
    }

    /// Decodes one payload (e.g. 160 bytes for 20 ms) to 16 kHz samples.
    pub fn decode(&mut self, payload: &[u8]) -> Vec<i16> {
        self.inner.decode(payload)
    }

    /// Output sample rate.
    pub const RATE_HZ: u32 = 16_000;
}

/// 16 kHz PCM to G.722 at 64 kbit/s (RTP payload type 9): 320 samples (20 ms) make 160 bytes.
pub struct G722Encoder {
    inner: Libg722Encoder,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder (it keeps the ADPCM state between packets of one stream).
    pub fn new() -> Self {
        Self {
            inner: Libg722Encoder::new(Bitrate::Mode1_64000, false, false),
        }
    }

    /// Encodes 16 kHz samples (an even number of them) to one payload.
    pub fn encode(&mut self, samples: &[i16]) -> Vec<u8> {
        self.inner.encode(samples)
    }
}

/// Mono PCM (8, 12, 16, 24 or 48 kHz) to Opus packets, tuned for speech (libopus's VoIP mode).
pub struct OpusEncoder {
    inner: opus::Encoder,
    out: Vec<u8>,
}

impl OpusEncoder {
    /// A mono encoder taking `rate_hz` audio.
    pub fn new(rate_hz: u32) -> Result<Self, CodecError> {
        let inner = opus::Encoder::new(rate_hz, opus::Channels::Mono, opus::Application::Voip)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        Ok(Self {
            inner,
            // libopus's recommended maximum packet.
            out: vec![0u8; 4_000],
        })
    }

    /// Encodes one frame (2.5, 5, 10, 20, 40 or 60 ms of samples) to one packet.
    pub fn encode(&mut self, samples: &[i16]) -> Result<Vec<u8>, CodecError> {
        let n = self
            .inner
            .encode(samples, &mut self.out)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        Ok(self.out[..n].to_vec())
    }
}

/// Opus to mono PCM at a rate of the caller's choice (8, 12, 16, 24 or 48 kHz).
pub struct OpusDecoder {
    inner: opus::Decoder,
    rate_hz: u32,
}

impl OpusDecoder {
    /// A mono decoder producing `rate_hz` audio.
    pub fn new(rate_hz: u32) -> Result<Self, CodecError> {
        let inner = opus::Decoder::new(rate_hz, opus::Channels::Mono)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        Ok(Self { inner, rate_hz })
    }

    /// Decodes one packet; an Opus packet holds at most 120 ms.
    pub fn decode(&mut self, packet: &[u8]) -> Result<Vec<i16>, CodecError> {
        let mut out = vec![0i16; self.rate_hz as usize * 120 / 1000];
        let n = self
            .inner
            .decode(packet, &mut out, false)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        out.truncate(n);
        Ok(out)
    }

    /// Audio for a lost packet of `ms` milliseconds (libopus's concealment).
    pub fn conceal(&mut self, ms: u32) -> Result<Vec<i16>, CodecError> {
        let mut out = vec![0i16; (self.rate_hz * ms / 1000) as usize];
        let n = self
            .inner
            .decode(&[], &mut out, false)
            .map_err(|e| CodecError::Opus(e.to_string()))?;
        out.truncate(n);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, n: usize, amp: f64) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as i16
            })
            .collect()
    }

    /// Signal-to-noise ratio of `out` against `input` at the best alignment (codecs delay).
    fn snr_db(input: &[i16], out: &[i16], max_lag: usize) -> f64 {
        let skip = 2000; // past the codec's start-up
        let len = input.len().min(out.len()) - skip - max_lag;
        (0..max_lag)
            .map(|lag| {
                let (mut sig, mut err) = (0.0f64, 0.0f64);
                for i in skip..skip + len {
                    let (x, y) = (input[i] as f64, out[i + lag] as f64);
                    sig += x * x;
                    err += (x - y) * (x - y);
                }
                10.0 * (sig / err.max(1e-9)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn g722_round_trip_keeps_a_tone() {
        let input = sine(16_000, 1_000.0, 16_000, 8_000.0);
        let mut enc = G722Encoder::new();
        let mut dec = G722Decoder::new();
        let mut out = Vec::new();
        for frame in input.chunks(320) {
            let payload = enc.encode(frame);
            assert_eq!(payload.len(), 160, "64 kbit/s: one byte per two samples");
            out.extend(dec.decode(&payload));
        }
        assert_eq!(out.len(), input.len());
        let snr = snr_db(&input, &out, 64);
        assert!(snr > 25.0, "G.722 SNR {snr:.1} dB");
    }

    #[test]
    fn opus_round_trip_keeps_a_tone_and_conceals_a_loss() {
        for rate in [16_000u32, 48_000] {
            let frame = rate as usize / 50;
            let input = sine(rate, 1_000.0, rate as usize, 8_000.0);
            let mut enc = OpusEncoder::new(rate).unwrap();
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut out = Vec::new();
            for f in input.chunks(frame) {
                let pcm = dec.decode(&enc.encode(f).unwrap()).unwrap();
                assert_eq!(pcm.len(), frame);
                out.extend(pcm);
            }
            let snr = snr_db(&input, &out, rate as usize / 100);
            assert!(snr > 10.0, "Opus at {rate} Hz: SNR {snr:.1} dB");
            assert_eq!(dec.conceal(20).unwrap().len(), frame);
        }
        assert!(OpusDecoder::new(11_025).is_err());
        assert!(OpusDecoder::new(16_000)
            .unwrap()
            .decode(&[0xff; 3])
            .is_err());
    }
}
