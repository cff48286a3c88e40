//! G.711 u-law and A-law companding, bit-exact with the ITU-T G.191 STL reference
//! (`g711.c`: `ulaw_compress`, `ulaw_expand`, `alaw_compress`, `alaw_expand`).
//!
//! All functions work on 16-bit linear PCM. Encoding and decoding are single table lookups; the
//! tables are computed at compile time by `const fn`s that follow the G.191 algorithms, and the
//! unit tests check them exhaustively against a literal transcription of the G.191 C code.
//!
//! G.191 only looks at the top bits of each sample, so the encode tables are indexed by the
//! shifted sample instead of all 65,536 values (smaller tables stay in L1 cache):
//! - u-law uses the top 14 bits (`x >> 2`; G.711's 14-bit u-law input is a sign plus a 13-bit
//!   magnitude): a 16,384-entry table;
//! - A-law uses the top 12 bits (`x >> 4`; G.711's 13-bit A-law input is a sign plus a 12-bit
//!   magnitude, and G.191 takes that magnitude as `x >> 4` or `(~x) >> 4`): a 4,096-entry table.
//!
//! Negative inputs are handled the G.191 way (one's complement, `~x`), which is *not* what the
//! widespread Sun/CCITT "bias 0x84" u-law encoder does; the two disagree on a number of negative
//! inputs (see the tests).

/// Number of bits G.191's u-law encoder keeps from a 16-bit sample.
const ULAW_BITS: u32 = 14;
/// Number of bits G.191's A-law encoder keeps from a 16-bit sample.
const ALAW_BITS: u32 = 12;

/// u-law encode table, indexed by the top [`ULAW_BITS`] bits of the sample.
static ULAW_ENCODE: [u8; 1 << ULAW_BITS] = build_ulaw_encode();
/// A-law encode table, indexed by the top [`ALAW_BITS`] bits of the sample.
static ALAW_ENCODE: [u8; 1 << ALAW_BITS] = build_alaw_encode();
/// u-law decode table, indexed by the code.
static ULAW_DECODE: [i16; 256] = build_ulaw_decode();
/// A-law decode table, indexed by the code.
static ALAW_DECODE: [i16; 256] = build_alaw_decode();

/// Table index for u-law: the sample's top 14 bits as an unsigned number (always < 16,384, so
/// the bounds check disappears).
#[inline(always)]
fn ulaw_index(s: i16) -> usize {
    usize::from(s as u16 >> (16 - ULAW_BITS))
}

/// Table index for A-law: the sample's top 12 bits as an unsigned number (always < 4,096).
#[inline(always)]
fn alaw_index(s: i16) -> usize {
    usize::from(s as u16 >> (16 - ALAW_BITS))
}

/// Sign-extends the table index `idx` (the top `bits` bits of a sample) back to the value of the
/// arithmetic shift `x >> (16 - bits)` that G.191 works on.
const fn sign_extend(idx: usize, bits: u32) -> i16 {
    ((idx << (16 - bits)) as u16 as i16) >> (16 - bits)
}

/// G.191 `ulaw_compress` for one sample, given `x >> 2` (which is all it depends on).
const fn ulaw_compress_shifted(x14: i16) -> u8 {
    // G.191 computes `(~x) >> 2` for negative x; arithmetic shifts commute with `!`, so that
    // equals `!(x >> 2)`. The +33 is the offset between the A-law and u-law thresholds.
    let mut absno = if x14 < 0 { !x14 + 33 } else { x14 + 33 };
    if absno > 0x1FFF {
        absno = 0x1FFF;
    }
    // Segment number: 1 + position of the highest set bit above bit 5.
    let mut i = absno >> 6;
    let mut segno: i16 = 1;
    while i != 0 {
        segno += 1;
        i >>= 1;
    }
    let high_nibble = 0x08 - segno;
    let low_nibble = 0x0F - ((absno >> segno) & 0x0F);
    let mut code = ((high_nibble << 4) | low_nibble) as u8;
    if x14 >= 0 {
        code |= 0x80;
    }
    code
}

/// G.191 `alaw_compress` for one sample, given `x >> 4` (which is all it depends on).
const fn alaw_compress_shifted(x12: i16) -> u8 {
    // One's complement for negatives, as G.191 does: `(~x) >> 4 == !(x >> 4)`.
    let mut ix = if x12 < 0 { !x12 } else { x12 };
    if ix > 15 {
        let mut iexp: i16 = 1;
        while ix > 16 + 15 {
            ix >>= 1;
            iexp += 1;
        }
        ix -= 16; // drop the leading 1
        ix += iexp << 4;
    }
    if x12 >= 0 {
        ix |= 0x80;
    }
    (ix ^ 0x55) as u8 // toggle the even bits
}

/// G.191 `ulaw_expand` for one code.
const fn ulaw_expand_one(code: u8) -> i16 {
    let sign: i16 = if code < 0x80 { -1 } else { 1 };
    let inv = !code;
    let exponent = ((inv >> 4) & 0x07) as i16;
    let mantissa = (inv & 0x0F) as i16;
    let step = 4 << (exponent + 1);
    sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)
}

/// G.191 `alaw_expand` for one code.
const fn alaw_expand_one(code: u8) -> i16 {
    let ix = ((code ^ 0x55) & 0x7F) as i16;
    let iexp = ix >> 4;
    let mut mant = ix & 0x0F;
    if iexp > 0 {
        mant += 16; // restore the leading 1
    }
    mant = (mant << 4) + 0x08; // left-justify and add half a quantisation step
    if iexp > 1 {
        mant <<= iexp - 1;
    }
    if code > 127 {
        mant
    } else {
        -mant
    }
}

const fn build_ulaw_encode() -> [u8; 1 << ULAW_BITS] {
    let mut t = [0u8; 1 << ULAW_BITS];
    let mut idx = 0;
    while idx < t.len() {
        t[idx] = ulaw_compress_shifted(sign_extend(idx, ULAW_BITS));
        idx += 1;
    }
    t
}

const fn build_alaw_encode() -> [u8; 1 << ALAW_BITS] {
    let mut t = [0u8; 1 << ALAW_BITS];
    let mut idx = 0;
    while idx < t.len() {
        t[idx] = alaw_compress_shifted(sign_extend(idx, ALAW_BITS));
        idx += 1;
    }
    t
}

const fn build_ulaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = ulaw_expand_one(c as u8);
        c += 1;
    }
    t
}

const fn build_alaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = alaw_expand_one(c as u8);
        c += 1;
    }
    t
}

/// Encodes one 16-bit linear PCM sample to G.711 u-law (G.191 `ulaw_compress`; only the top 14
/// bits of `s` matter).
#[inline]
pub fn ulaw_encode(s: i16) -> u8 {
    ULAW_ENCODE[ulaw_index(s)]
}

/// Decodes one G.711 u-law code to 16-bit linear PCM (G.191 `ulaw_expand`; range ±32,124).
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Encodes one 16-bit linear PCM sample to G.711 A-law (G.191 `alaw_compress`; only the top 12
/// bits of `s` matter).
#[inline]
pub fn alaw_encode(s: i16) -> u8 {
    ALAW_ENCODE[alaw_index(s)]
}

/// Decodes one G.711 A-law code to 16-bit linear PCM (G.191 `alaw_expand`; range ±32,256).
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

/// Encodes `input` to u-law into `output`.
///
/// # Panics
/// If `input` and `output` differ in length.
pub fn ulaw_encode_slice(input: &[i16], output: &mut [u8]) {
    assert_eq!(input.len(), output.len(), "G.711 buffers differ in length");
    for (o, &s) in output.iter_mut().zip(input) {
        *o = ULAW_ENCODE[ulaw_index(s)];
    }
}

/// Decodes u-law `input` into linear PCM `output`.
///
/// # Panics
/// If `input` and `output` differ in length.
pub fn ulaw_decode_slice(input: &[u8], output: &mut [i16]) {
    assert_eq!(input.len(), output.len(), "G.711 buffers differ in length");
    for (o, &c) in output.iter_mut().zip(input) {
        *o = ULAW_DECODE[usize::from(c)];
    }
}

/// Encodes `input` to A-law into `output`.
///
/// # Panics
/// If `input` and `output` differ in length.
pub fn alaw_encode_slice(input: &[i16], output: &mut [u8]) {
    assert_eq!(input.len(), output.len(), "G.711 buffers differ in length");
    for (o, &s) in output.iter_mut().zip(input) {
        *o = ALAW_ENCODE[alaw_index(s)];
    }
}

/// Decodes A-law `input` into linear PCM `output`.
///
/// # Panics
/// If `input` and `output` differ in length.
pub fn alaw_decode_slice(input: &[u8], output: &mut [i16]) {
    assert_eq!(input.len(), output.len(), "G.711 buffers differ in length");
    for (o, &c) in output.iter_mut().zip(input) {
        *o = ALAW_DECODE[usize::from(c)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Literal transcriptions of the ITU-T G.191 STL g711.c routines (one sample each). ----
    // C's `short` arithmetic is modelled with i32 (C promotes to int) and narrowed at the end.

    /// G.191 `alaw_compress`.
    fn ref_alaw_compress(lin: i16) -> u8 {
        let x = i32::from(lin);
        let mut ix = if x < 0 { (!x) >> 4 } else { x >> 4 };
        if ix > 15 {
            let mut iexp = 1;
            while ix > 16 + 15 {
                ix >>= 1;
                iexp += 1;
            }
            ix -= 16;
            ix += iexp << 4;
        }
        if x >= 0 {
            ix |= 0x0080;
        }
        ((ix ^ 0x0055) & 0xFF) as u8
    }

    /// G.191 `alaw_expand`.
    fn ref_alaw_expand(log: u8) -> i16 {
        let mut ix = i32::from(log) ^ 0x0055;
        ix &= 0x007F;
        let iexp = ix >> 4;
        let mut mant = ix & 0x000F;
        if iexp > 0 {
            mant += 16;
        }
        mant = (mant << 4) + 0x0008;
        if iexp > 1 {
            mant <<= iexp - 1;
        }
        (if log > 127 { mant } else { -mant }) as i16
    }

    /// G.191 `ulaw_compress`.
    fn ref_ulaw_compress(lin: i16) -> u8 {
        let x = i32::from(lin);
        let mut absno = if x < 0 {
            ((!x) >> 2) + 33
        } else {
            (x >> 2) + 33
        };
        if absno > 0x1FFF {
            absno = 0x1FFF;
        }
        let mut i = absno >> 6;
        let mut segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high_nibble = 0x0008 - segno;
        let mut low_nibble = (absno >> segno) & 0x000F;
        low_nibble = 0x000F - low_nibble;
        let mut log = (high_nibble << 4) | low_nibble;
        if x >= 0 {
            log |= 0x0080;
        }
        (log & 0xFF) as u8
    }

    /// G.191 `ulaw_expand`.
    fn ref_ulaw_expand(log: u8) -> i16 {
        let l = i32::from(log);
        let sign = if l < 0x0080 { -1 } else { 1 };
        let mut mantissa = !l;
        let exponent = (mantissa >> 4) & 0x0007;
        let segment = exponent + 1;
        mantissa &= 0x000F;
        let step = 4 << segment;
        (sign * ((0x0080 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
    }

    /// The Sun Microsystems / CCITT "bias 0x84" `linear2ulaw` (as in Sun's public-domain g711.c
    /// and its many copies), which differs from G.191 for some negative inputs.
    fn sun_linear2ulaw(pcm: i16) -> u8 {
        const BIAS: i32 = 0x84;
        const CLIP: i32 = 8159;
        const SEG_UEND: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
        let mut v = i32::from(pcm) >> 2;
        let mask = if v < 0 {
            v = -v;
            0x7F
        } else {
            0xFF
        };
        if v > CLIP {
            v = CLIP;
        }
        v += BIAS >> 2;
        let seg = SEG_UEND.iter().position(|&end| v <= end).unwrap_or(8) as i32;
        if seg >= 8 {
            (0x7F ^ mask) as u8
        } else {
            let uval = (seg << 4) | ((v >> (seg + 1)) & 0xF);
            (uval ^ mask) as u8
        }
    }

    fn all_i16() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    #[test]
    fn ulaw_encode_matches_g191_exhaustively() {
        for s in all_i16() {
            assert_eq!(ulaw_encode(s), ref_ulaw_compress(s), "input {s}");
        }
    }

    #[test]
    fn alaw_encode_matches_g191_exhaustively() {
        for s in all_i16() {
            assert_eq!(alaw_encode(s), ref_alaw_compress(s), "input {s}");
        }
    }

    #[test]
    fn decode_matches_g191_for_all_codes() {
        for c in 0..=255u8 {
            assert_eq!(ulaw_decode(c), ref_ulaw_expand(c), "u-law code {c:#04x}");
            assert_eq!(alaw_decode(c), ref_alaw_expand(c), "A-law code {c:#04x}");
        }
    }

    #[test]
    fn slice_versions_match_scalar() {
        let pcm: Vec<i16> = all_i16().collect();
        let mut codes = vec![0u8; pcm.len()];
        ulaw_encode_slice(&pcm, &mut codes);
        assert!(pcm.iter().zip(&codes).all(|(&s, &c)| c == ulaw_encode(s)));
        alaw_encode_slice(&pcm, &mut codes);
        assert!(pcm.iter().zip(&codes).all(|(&s, &c)| c == alaw_encode(s)));

        let all_codes: Vec<u8> = (0..=255).collect();
        let mut lin = vec![0i16; 256];
        ulaw_decode_slice(&all_codes, &mut lin);
        assert!(all_codes
            .iter()
            .zip(&lin)
            .all(|(&c, &s)| s == ulaw_decode(c)));
        alaw_decode_slice(&all_codes, &mut lin);
        assert!(all_codes
            .iter()
            .zip(&lin)
            .all(|(&c, &s)| s == alaw_decode(c)));
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn slice_length_mismatch_panics() {
        ulaw_encode_slice(&[0; 4], &mut [0; 3]);
    }

    #[test]
    fn published_ulaw_values() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0); // "negative zero"
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
    }

    #[test]
    fn published_alaw_values() {
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0x2A), -32256);
        assert_eq!(alaw_decode(0xAA), 32256);
        // G.191 keeps 12 magnitude bits: the first step is 16 wide on each side of zero
        // (one's complement for negatives), with 8 / -8 as its reconstruction values.
        assert_eq!(alaw_encode(15), 0xD5);
        assert_eq!(alaw_encode(16), 0xD4);
        assert_eq!(alaw_encode(-16), 0x55);
        assert_eq!(alaw_encode(-17), 0x54);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn round_trips_are_stable() {
        for c in 0..=255u8 {
            let u = ulaw_decode(c);
            assert_eq!(ulaw_decode(ulaw_encode(u)), u, "u-law code {c:#04x}");
            let a = alaw_decode(c);
            assert_eq!(alaw_decode(alaw_encode(a)), a, "A-law code {c:#04x}");
        }
        // Every code except u-law's negative zero (0x7F, which decodes to 0 like 0xFF) is
        // reproduced exactly.
        for c in 0..=255u8 {
            if c != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(c)), c, "u-law code {c:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(c)), c, "A-law code {c:#04x}");
        }
    }

    /// The Sun bias-0x84 encoder negates `x >> 2` (two's complement) where G.191 complements
    /// (`(~x) >> 2`), so for every negative input it sees a 14-bit magnitude one larger than
    /// G.191 does. The codes therefore differ exactly where G.191's magnitude sits one below a
    /// decision threshold: 127 thresholds between the 128 negative codes. Both encoders only
    /// look at `x >> 2`, so each of those 127 14-bit values covers four 16-bit inputs: 508.
    #[test]
    fn sun_bias_encoder_differs_from_g191_on_127_negative_14_bit_inputs() {
        let differing: Vec<i16> = all_i16()
            .filter(|&s| sun_linear2ulaw(s) != ulaw_encode(s))
            .collect();
        assert!(differing.iter().all(|&s| s < 0));
        let mut distinct_14_bit: Vec<i16> = differing.iter().map(|&s| s >> 2).collect();
        distinct_14_bit.dedup();
        assert_eq!(distinct_14_bit.len(), 127);
        assert_eq!(differing.len(), 4 * 127);
        // Sun always lands on the next code towards larger magnitude (negative codes count down).
        for &s in &differing {
            assert_eq!(sun_linear2ulaw(s) + 1, ulaw_encode(s), "input {s}");
        }
        // The smallest case: for -4..=-1 G.191 gives negative zero, Sun the first step.
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(sun_linear2ulaw(-1), 0x7E);
    }

    /// Throughput of the slice functions. Run with
    /// `cargo test --release -p vbin-media --lib g711::tests::throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing measurement, meaningful only in release mode"]
    fn throughput() {
        use std::hint::black_box;
        use std::time::Instant;

        fn measure(name: &str, len: usize, mut f: impl FnMut()) {
            let total = 400_000_000usize;
            let iters = total / len;
            f(); // warm up caches and tables
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let rate = (iters * len) as f64 / start.elapsed().as_secs_f64();
            eprintln!(
                "{name:>12} ({len:>6}-sample buffers): {:.2} G samples/s",
                rate / 1e9
            );
        }

        for len in [160usize, 4096, 1 << 20] {
            // Deterministic pseudo-random PCM so table accesses are not all the same entry.
            let pcm: Vec<i16> = (0..len as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 16) as i16)
                .collect();
            let mut codes = vec![0u8; len];
            let mut lin = vec![0i16; len];
            ulaw_encode_slice(&pcm, &mut codes);
            measure("ulaw encode", len, || {
                ulaw_encode_slice(black_box(&pcm), black_box(&mut codes))
            });
            measure("alaw encode", len, || {
                alaw_encode_slice(black_box(&pcm), black_box(&mut codes))
            });
            measure("ulaw decode", len, || {
                ulaw_decode_slice(black_box(&codes), black_box(&mut lin))
            });
            measure("alaw decode", len, || {
                alaw_decode_slice(black_box(&codes), black_box(&mut lin))
            });
        }
    }
}
