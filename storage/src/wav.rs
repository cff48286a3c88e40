//! The recordings' file format: 16-bit PCM WAV. A recording is written as it happens, so its
//! header is written first with placeholder sizes (0xFFFFFFFF, as streaming WAV writers do);
//! [`patch_header`] puts the real sizes in when the file is served, from the object's size.

/// Length of the canonical WAV header.
pub const HEADER_LEN: usize = 44;

/// A PCM WAV header for `channels` channels of 16-bit samples at `rate_hz`, with sizes for
/// `data_bytes` of samples (placeholders when `None`).
pub fn header(channels: u16, rate_hz: u32, data_bytes: Option<u32>) -> [u8; HEADER_LEN] {
    let block = channels * 2;
    let data = data_bytes.unwrap_or(u32::MAX);
    let riff = data_bytes.map_or(u32::MAX, |d| d.saturating_add(36));
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff.to_le_bytes());
    h[8..16].copy_from_slice(b"WAVEfmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&rate_hz.to_le_bytes());
    h[28..32].copy_from_slice(&(rate_hz * block as u32).to_le_bytes());
    h[32..34].copy_from_slice(&block.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data.to_le_bytes());
    h
}

/// Sets the sizes of a header written with placeholders, for a file of `file_bytes` in all.
/// Leaves anything that is not such a header alone.
pub fn patch_header(h: &mut [u8], file_bytes: u64) {
    if h.len() < HEADER_LEN || &h[0..4] != b"RIFF" || &h[36..40] != b"data" {
        return;
    }
    let data = file_bytes
        .saturating_sub(HEADER_LEN as u64)
        .min(u32::MAX as u64 - 36) as u32;
    h[4..8].copy_from_slice(&(data + 36).to_le_bytes());
    h[40..44].copy_from_slice(&data.to_le_bytes());
}

/// Appends one frame of two channels, interleaved (left, right), little-endian.
pub fn interleave(left: &[i16], right: &[i16], out: &mut Vec<u8>) {
    for (l, r) in left.iter().zip(right) {
        out.extend_from_slice(&l.to_le_bytes());
        out.extend_from_slice(&r.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patched_streaming_header_equals_the_sized_one() {
        let mut streamed = header(2, 16_000, None);
        let mut data = Vec::new();
        interleave(&[1, -2, 3], &[-4, 5, i16::MIN], &mut data);
        assert_eq!(data.len(), 12);
        assert_eq!(&data[0..4], &[1, 0, 0xFC, 0xFF]);
        patch_header(&mut streamed, (HEADER_LEN + data.len()) as u64);
        assert_eq!(streamed, header(2, 16_000, Some(12)));
        let mut not_wav = *b"hello world, this is not a wav header at all";
        patch_header(&mut not_wav, 99);
        assert_eq!(&not_wav[..5], b"hello");
    }
}
