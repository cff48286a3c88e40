//! In-band DTMF detection (Goertzel), for far ends that send keys as tones in the audio
//! instead of RFC 4733 events.
//!
//! 8 kHz audio is cut into blocks of 205 samples (25.6 ms; the classic block, whose bins fall
//! close to the eight DTMF frequencies); a block holds a key when the strongest low-group and
//! high-group tones carry most of its energy, each well above the other tones of its group,
//! with a twist (high to low power) between -8 and +4 dB (ITU-T Q.24 allows 8 dB reverse and
//! 4 dB normal twist). A key is reported once, after two blocks in a row hold it (a press of
//! at least ~40 ms, as Q.24 asks), and again only after two blocks without it.

/// Samples per Goertzel block at 8 kHz.
const BLOCK: usize = 205;
const RATE: f32 = 8_000.0;
const LOW: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const HIGH: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];
/// Below this mean sample power a block is silence (about -50 dBm0 for 16-bit audio).
const MIN_POWER: f32 = 4_000.0;

/// Finds the keys pressed in a stream of 8 kHz samples.
#[derive(Debug, Default)]
pub struct Detector {
    block: Vec<i16>,
    /// The key of the last block (None: no key).
    last: Option<char>,
    /// Blocks in a row holding `last`.
    run: u32,
    /// The key reported and not yet released.
    held: Option<char>,
    /// Blocks in a row without the held key.
    gap: u32,
}

impl Detector {
    /// A detector with nothing heard.
    pub fn new() -> Self {
        Self {
            block: Vec::with_capacity(BLOCK),
            ..Self::default()
        }
    }

    /// Feeds samples; returns the keys newly pressed in them, in order.
    pub fn push(&mut self, samples: &[i16]) -> Vec<char> {
        let mut keys = Vec::new();
        for &s in samples {
            self.block.push(s);
            if self.block.len() == BLOCK {
                let key = key_of(&self.block);
                self.block.clear();
                if let Some(k) = self.step(key) {
                    keys.push(k);
                }
            }
        }
        keys
    }

    fn step(&mut self, key: Option<char>) -> Option<char> {
        if key == self.last {
            self.run += 1;
        } else {
            self.last = key;
            self.run = 1;
        }
        if self.held.is_some() && key != self.held {
            self.gap += 1;
            if self.gap >= 2 {
                self.held = None;
            }
        } else {
            self.gap = 0;
        }
        match key {
            Some(k) if self.held.is_none() && self.run >= 2 => {
                self.held = Some(k);
                self.gap = 0;
                Some(k)
            }
            _ => None,
        }
    }
}

/// Goertzel power of `freq` in `block`.
fn power(block: &[i16], freq: f32) -> f32 {
    let k = (0.5 + block.len() as f32 * freq / RATE).floor();
    let w = 2.0 * std::f32::consts::PI * k / block.len() as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in block {
        let s = f32::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The key one block holds, if any.
fn key_of(block: &[i16]) -> Option<char> {
    let n = block.len() as f32;
    let energy: f32 = block.iter().map(|&x| f32::from(x) * f32::from(x)).sum();
    if energy / n < MIN_POWER {
        return None;
    }
    let strongest = |freqs: &[f32; 4]| {
        let p: Vec<f32> = freqs.iter().map(|&f| power(block, f)).collect();
        let (i, &max) = p
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .expect("four tones");
        // Every other tone of the group at least 10 dB down.
        let clean = p.iter().enumerate().all(|(j, &q)| j == i || q * 10.0 < max);
        (i, max, clean)
    };
    let (row, low, low_clean) = strongest(&LOW);
    let (col, high, high_clean) = strongest(&HIGH);
    if !(low_clean && high_clean) {
        return None;
    }
    // A pure tone of amplitude A gives Goertzel power (A * n / 2)^2 and block energy
    // A^2 * n / 2: the pair must carry most of the block's energy (speech spreads it).
    let tone_energy = (low + high) * 2.0 / n;
    if tone_energy < 0.6 * energy {
        return None;
    }
    let twist = high / low;
    if !(0.158..=2.51).contains(&twist) {
        return None;
    }
    Some(KEYS[row][col])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` of the key's two tones (each at `amp`), 8 kHz.
    fn tone(key: char, ms: usize, amp: f32) -> Vec<i16> {
        let (r, c) = (0..4)
            .flat_map(|r| (0..4).map(move |c| (r, c)))
            .find(|&(r, c)| KEYS[r][c] == key)
            .unwrap();
        (0..ms * 8)
            .map(|i| {
                let t = i as f32 / RATE;
                let v = (2.0 * std::f32::consts::PI * LOW[r] * t).sin()
                    + (2.0 * std::f32::consts::PI * HIGH[c] * t).sin();
                (v * amp) as i16
            })
            .collect()
    }

    fn silence(ms: usize) -> Vec<i16> {
        vec![0; ms * 8]
    }

    /// Through G.711 µ-law and back, as on the wire.
    fn ulaw(samples: &[i16]) -> Vec<i16> {
        samples
            .iter()
            .map(|&s| crate::g711::ulaw_decode(crate::g711::ulaw_encode(s)))
            .collect()
    }

    #[test]
    fn every_key_is_heard_once_per_press_through_ulaw() {
        let mut d = Detector::new();
        let mut heard = Vec::new();
        for key in "0123456789*#ABCD".chars() {
            let mut press = tone(key, 100, 6_000.0);
            press.extend(silence(60));
            // In 20 ms frames, as RTP brings them.
            for frame in ulaw(&press).chunks(160) {
                heard.extend(d.push(frame));
            }
        }
        assert_eq!(heard.iter().collect::<String>(), "0123456789*#ABCD");
    }

    #[test]
    fn a_long_press_is_one_key_and_a_blip_is_none() {
        let mut d = Detector::new();
        assert_eq!(d.push(&tone('5', 1_000, 6_000.0)), ['5']);
        d.push(&silence(100));
        // 20 ms is too short for a key (Q.24: at least 40 ms).
        assert!(d.push(&tone('7', 20, 6_000.0)).is_empty());
        d.push(&silence(100));
        assert_eq!(d.push(&tone('7', 80, 6_000.0)), ['7']);
    }

    #[test]
    fn single_tones_noise_and_quiet_keys_are_not_keys() {
        let mut d = Detector::new();
        // One tone alone (a dial tone's 440 Hz, or only the low tone of a key).
        let single: Vec<i16> = (0..8_000)
            .map(|i| {
                ((2.0 * std::f32::consts::PI * 697.0 * i as f32 / RATE).sin() * 8_000.0) as i16
            })
            .collect();
        assert!(d.push(&single).is_empty());
        // White-ish noise.
        let mut x: u32 = 1;
        let noise: Vec<i16> = (0..8_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((x >> 16) as i16) / 4
            })
            .collect();
        assert!(d.push(&noise).is_empty());
        // A key too faint to be anything but noise on the line.
        assert!(d.push(&tone('1', 200, 20.0)).is_empty());
        // Two keys at once (both groups unclean).
        let mut both = tone('1', 200, 4_000.0);
        for (s, t) in both.iter_mut().zip(tone('9', 200, 4_000.0)) {
            *s = s.saturating_add(t);
        }
        assert!(d.push(&both).is_empty());
    }
}
