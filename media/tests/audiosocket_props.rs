//! Property tests of the AudioSocket framing: valid frames survive any split of the byte
//! stream; arbitrary bytes never panic the decoder.

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;
use vbin_media::audiosocket::{AudioSocketCodec, Frame};

fn frame() -> impl Strategy<Value = Frame> {
    let rates = prop::sample::select(vec![
        8_000u32, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
    ]);
    prop_oneof![
        Just(Frame::Hangup),
        any::<[u8; 16]>().prop_map(|b| Frame::Uuid(Uuid::from_bytes(b))),
        prop::sample::select(b"0123456789*#ABCD".to_vec()).prop_map(|d| Frame::Dtmf(d as char)),
        (rates, prop::collection::vec(any::<i16>(), 1..1000))
            .prop_map(|(r, s)| Frame::audio(r, &s)),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|b| Frame::Error(b.into())),
    ]
}

proptest! {
    #[test]
    fn frames_survive_any_split(frames in prop::collection::vec(frame(), 1..20),
                                cuts in prop::collection::vec(1usize..700, 1..50)) {
        let mut wire = BytesMut::new();
        for f in frames.clone() {
            AudioSocketCodec.encode(f, &mut wire).unwrap();
        }
        let wire = wire.freeze();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            i += 1;
            while let Some(f) = AudioSocketCodec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = AudioSocketCodec.decode(&mut buf) {}
    }
}
