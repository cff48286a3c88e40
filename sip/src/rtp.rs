//! RTP for a call's audio (RFC 3550) and its keys (RFC 4733), on `rtp-types`: packets out
//! with their sequence and clock, a small reorder buffer in, telephone-events both ways, and
//! the UDP port of a call from `VBIN_RTP_PORTS`.
//!
//! No I/O but [`bind_in`]: the media path owns the socket and the 20 ms clock.

use rtp_types::{RtpPacket, RtpPacketBuilder};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;

/// Samples per 20 ms packet at 8 kHz (G.711, and the RTP clock of G.722 and telephone-event).
pub const SAMPLES_PER_PACKET: u32 = 160;

/// Packets held back to put late ones in order (60 ms): a lost packet costs no more.
pub const REORDER_DEPTH: usize = 3;

/// Builds a call's outgoing packets: one SSRC, sequence numbers and timestamps that run on.
#[derive(Debug)]
pub struct Sender {
    ssrc: u32,
    seq: u16,
    ts: u32,
    pt: u8,
    dtmf_pt: Option<u8>,
    started: bool,
    /// Audio clock ticks per telephone-event tick (8 kHz): 6 for Opus's 48 kHz clock.
    clock_ratio: u32,
    /// Packets and payload octets sent (RTCP sender reports).
    packets: u32,
    octets: u32,
}

impl Sender {
    /// A sender of payload type `pt` (keys as `dtmf_pt`), starting at random-looking
    /// sequence and timestamp taken from `seed` (RFC 3550 wants them unpredictable).
    pub fn new(pt: u8, dtmf_pt: Option<u8>, seed: u128) -> Self {
        Self {
            ssrc: seed as u32,
            seq: (seed >> 32) as u16,
            ts: (seed >> 48) as u32,
            pt,
            dtmf_pt,
            started: false,
            clock_ratio: 1,
            packets: 0,
            octets: 0,
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets and payload octets sent so far (wrapping, as RTCP counts them).
    pub fn counts(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// The timestamp the next audio packet will carry.
    pub fn timestamp(&self) -> u32 {
        self.ts
    }

    /// The same with an audio clock of `hz` (48000 for Opus): after a key, the audio's
    /// timestamps move on by the key's length in its own clock.
    pub fn with_clock(mut self, hz: u32) -> Self {
        self.clock_ratio = (hz / 8_000).max(1);
        self
    }

    fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> Vec<u8> {
        let p = RtpPacketBuilder::new()
            .payload_type(pt)
            .marker_bit(marker)
            .sequence_number(self.seq)
            .timestamp(ts)
            .ssrc(self.ssrc)
            .payload(payload)
            .write_vec_unchecked();
        self.seq = self.seq.wrapping_add(1);
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload.len() as u32);
        p
    }

    /// The packet of one frame of encoded audio (`samples` samples of the RTP clock).
    pub fn audio(&mut self, payload: &[u8], samples: u32) -> Vec<u8> {
        let marker = !self.started;
        self.started = true;
        let ts = self.ts;
        self.ts = self.ts.wrapping_add(samples);
        self.packet(self.pt, marker, ts, payload)
    }

    /// Moves the clock on by `ticks` without a packet (audio not sent while on hold).
    pub fn skip(&mut self, ticks: u32) {
        self.ts = self.ts.wrapping_add(ticks);
    }

    /// The packets of key `key` lasting `ms` (RFC 4733): one per 20 ms with the duration so
    /// far, the last sent three times with the end bit; the audio clock moves past the key.
    /// None if the far end takes no telephone-event or `key` is not a key.
    pub fn key(&mut self, key: char, ms: u32) -> Option<Vec<Vec<u8>>> {
        let (pt, event) = (self.dtmf_pt?, event_of(key)?);
        let total = (ms * 8).max(SAMPLES_PER_PACKET);
        let ts = self.ts;
        let mut out = Vec::new();
        let mut duration = SAMPLES_PER_PACKET;
        let mut first = true;
        loop {
            let end = duration >= total;
            let d = duration.min(total).min(u16::MAX as u32) as u16;
            let payload = [
                event,
                if end { 0x80 } else { 0 } | 10,
                (d >> 8) as u8,
                d as u8,
            ];
            let repeats = if end { 3 } else { 1 };
            for _ in 0..repeats {
                out.push(self.packet(pt, first, ts, &payload));
                first = false;
            }
            if end {
                break;
            }
            duration += SAMPLES_PER_PACKET;
        }
        self.ts = self.ts.wrapping_add(total * self.clock_ratio);
        Some(out)
    }
}

/// The RFC 4733 event number of a key.
pub fn event_of(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(12 + key as u8 - b'A'),
        _ => None,
    }
}

/// The key of an RFC 4733 event number.
pub fn key_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

/// What an incoming packet carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Encoded audio of one of the negotiated formats: its payload type and payload.
    Audio(u8, Vec<u8>),
    /// A key pressed (reported once per event, at its first packet).
    Key(char),
}

/// What a receiver has seen of the far end's stream, for RTCP reception reports (RFC 3550
/// 6.4.1, A.3, A.8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reception {
    /// The far end's SSRC.
    pub ssrc: u32,
    /// The extended highest sequence number received (cycles in the high 16 bits).
    pub highest: u32,
    /// Packets expected: from the first sequence number to the highest.
    pub expected: u64,
    /// Packets received (late and duplicate ones too, as RFC 3550 counts them).
    pub received: u64,
    /// Interarrival jitter, in RTP clock ticks.
    pub jitter: u32,
}

/// Sequence numbers away from the highest seen beyond which a packet starts a new stream
/// (the far end restarted it) instead of being late or early (RFC 3550 A.1's idea).
const RESYNC_GAP: u64 = 100;

/// Takes a call's incoming packets: drops what is not RTP of the negotiated payload types,
/// holds back up to [`REORDER_DEPTH`] packets to hand them over in order, and turns
/// telephone-events into keys. A new SSRC or a jump in sequence numbers starts over.
#[derive(Debug)]
pub struct Receiver {
    pts: Vec<u8>,
    dtmf_pt: Option<u8>,
    ssrc: Option<u32>,
    /// Packets by extended sequence number, waiting to be handed over (None: a packet that
    /// carries nothing new, e.g. a key's retransmission, which still fills its place).
    held: BTreeMap<u64, Option<Received>>,
    /// The next extended sequence number to hand over (None until the stream has started).
    next: Option<u64>,
    /// The highest extended sequence number seen (0: none yet).
    highest: u64,
    /// The timestamp of the last key event reported (its retransmissions are not keys).
    last_event_ts: Option<u32>,
    /// The stream's first extended sequence number, packets received, and the jitter
    /// estimate with the last transit time (RFC 3550 A.8), in ticks of `clock_hz`.
    base: u64,
    received: u64,
    jitter: f64,
    transit: Option<u32>,
    clock_hz: u32,
}

impl Receiver {
    /// A receiver of audio in payload types `pts` (a far end may switch among the formats
    /// of its answer) and telephone-event `dtmf_pt`.
    pub fn new(pts: &[u8], dtmf_pt: Option<u8>) -> Self {
        Self {
            pts: pts.to_vec(),
            dtmf_pt,
            ssrc: None,
            held: BTreeMap::new(),
            next: None,
            highest: 0,
            last_event_ts: None,
            base: 0,
            received: 0,
            jitter: 0.0,
            transit: None,
            clock_hz: 8_000,
        }
    }

    /// The same, with the audio's RTP clock (for the jitter, 8 kHz unless told).
    pub fn with_clock(mut self, hz: u32) -> Self {
        self.clock_hz = hz;
        self
    }

    /// What it has seen of the stream so far; None before its first packet.
    pub fn reception(&self) -> Option<Reception> {
        let ssrc = self.ssrc?;
        if self.highest == 0 {
            return None;
        }
        Some(Reception {
            ssrc,
            // `extend` starts the first cycle at 1 << 16.
            highest: (self.highest - (1 << 16)) as u32,
            expected: self.highest - self.base + 1,
            received: self.received,
            jitter: self.jitter as u32,
        })
    }

    /// The sequence number extended past its 16 bits, nearest to the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        if self.highest == 0 {
            return u64::from(seq) + (1 << 16);
        }
        let cycle = self.highest & !0xffff;
        [
            cycle.saturating_sub(1 << 16) | u64::from(seq),
            cycle | u64::from(seq),
            (cycle + (1 << 16)) | u64::from(seq),
        ]
        .into_iter()
        .min_by_key(|c| c.abs_diff(self.highest))
        .expect("three candidates")
    }

    fn restart(&mut self) {
        self.held.clear();
        self.next = None;
        self.highest = 0;
        self.base = 0;
        self.received = 0;
        self.jitter = 0.0;
        self.transit = None;
    }

    /// Takes one datagram; false if it is not an RTP packet of this call's payload types.
    pub fn push(&mut self, datagram: &[u8]) -> bool {
        self.push_at(datagram, None)
    }

    /// [`Receiver::push`] of a datagram that arrived at `arrival` (since any fixed instant),
    /// which feeds the jitter estimate.
    pub fn push_at(&mut self, datagram: &[u8], arrival: Option<std::time::Duration>) -> bool {
        let Ok(p) = RtpPacket::parse(datagram) else {
            return false;
        };
        let item = if self.pts.contains(&p.payload_type()) {
            Some(Received::Audio(p.payload_type(), p.payload().to_vec()))
        } else if Some(p.payload_type()) == self.dtmf_pt {
            let e = p.payload();
            match key_of(e.first().copied().unwrap_or(u8::MAX)) {
                Some(key) if e.len() >= 4 && self.last_event_ts != Some(p.timestamp()) => {
                    self.last_event_ts = Some(p.timestamp());
                    Some(Received::Key(key))
                }
                _ => None,
            }
        } else {
            return false;
        };
        if self.ssrc != Some(p.ssrc()) {
            self.ssrc = Some(p.ssrc());
            self.restart();
        }
        let mut seq = self.extend(p.sequence_number());
        if self.highest != 0 && seq.abs_diff(self.highest) > RESYNC_GAP {
            self.restart();
            seq = self.extend(p.sequence_number());
        }
        if self.base == 0 || seq < self.base {
            self.base = seq;
        }
        self.received += 1;
        if let (Some(at), Some(Received::Audio(..))) = (arrival, &item) {
            // D(i-1,i) = (R_i - R_i-1) - (S_i - S_i-1), in wrapping clock ticks.
            let now = (at.as_secs_f64() * f64::from(self.clock_hz)) as u64 as u32;
            let transit = now.wrapping_sub(p.timestamp());
            if let Some(prev) = self.transit {
                let d = f64::from((transit.wrapping_sub(prev) as i32).unsigned_abs());
                self.jitter += (d - self.jitter) / 16.0;
            }
            self.transit = Some(transit);
        }
        if self.next.is_some_and(|n| seq < n) {
            return true; // too late: its turn has passed
        }
        self.highest = self.highest.max(seq);
        self.held.insert(seq, item);
        true
    }

    /// Whether packets are held back, waiting for earlier ones.
    pub fn waiting(&self) -> bool {
        !self.held.is_empty()
    }

    /// Gives up the packets missing before the first one held, so that [`Receiver::pop`]
    /// hands it over: for a receiver whose held packets have waited long enough (after a
    /// loss followed by silence, DTX or hold, no later packets come to push them out).
    pub fn give_up_gap(&mut self) {
        if let Some(&first) = self.held.keys().next() {
            self.next = Some(first);
        }
    }

    /// The next packet in order, once it is there or once [`REORDER_DEPTH`] later ones are
    /// (the missing ones are given up). The stream starts at the lowest of its first
    /// [`REORDER_DEPTH`] packets, so even its first ones may come out of order.
    pub fn pop(&mut self) -> Option<Received> {
        loop {
            let next = match self.next {
                Some(n) => n,
                None if self.held.len() >= REORDER_DEPTH => *self.held.keys().next()?,
                None => return None,
            };
            let item = match self.held.remove(&next) {
                Some(item) => {
                    self.next = Some(next + 1);
                    item
                }
                None if self.held.len() >= REORDER_DEPTH => {
                    let (seq, item) = self.held.pop_first()?;
                    self.next = Some(seq + 1);
                    item
                }
                None => return None,
            };
            if item.is_some() {
                return item;
            }
        }
    }
}

/// Binds a UDP socket for a call's RTP on an even port of `ports` (RTCP takes the odd one
/// above by convention), trying them from `start` on; None when every port is taken.
pub fn bind_in(ip: IpAddr, ports: &RangeInclusive<u16>, start: u16) -> Option<UdpSocket> {
    let (lo, hi) = (*ports.start() & !1, *ports.end());
    if hi < lo {
        return None;
    }
    let evens = u32::from((hi - lo) / 2) + 1;
    (0..evens).find_map(|i| {
        let port = lo + (((u32::from(start / 2) + i) % evens) * 2) as u16;
        UdpSocket::bind(SocketAddr::new(ip, port)).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &[u8]) -> (u8, bool, u16, u32, Vec<u8>) {
        let r = RtpPacket::parse(p).unwrap();
        (
            r.payload_type(),
            r.marker_bit(),
            r.sequence_number(),
            r.timestamp(),
            r.payload().to_vec(),
        )
    }

    #[test]
    fn audio_packets_run_on_and_mark_the_first() {
        let mut s = Sender::new(0, Some(101), 0xfffe_0000_1234_5678);
        let a = parse(&s.audio(&[1; 160], 160));
        let b = parse(&s.audio(&[2; 160], 160));
        assert_eq!((a.0, a.1), (0, true));
        assert!(!b.1);
        assert_eq!(b.2, a.2.wrapping_add(1));
        assert_eq!(b.3, a.3.wrapping_add(160));
        assert_eq!(b.4, vec![2; 160]);
    }

    #[test]
    fn a_key_is_an_rfc_4733_event_that_ends_three_times() {
        let mut s = Sender::new(0, Some(101), 7);
        let before = parse(&s.audio(&[0; 160], 160)).3;
        let packets = s.key('#', 100).unwrap();
        let parsed: Vec<_> = packets.iter().map(|p| parse(p)).collect();
        // 100 ms: durations 160, 320, 480, 640, then 800 with the end bit, three times.
        assert_eq!(parsed.len(), 4 + 3);
        assert!(parsed[0].1, "the first packet is marked");
        assert!(parsed.iter().all(|p| p.0 == 101 && p.3 == before + 160));
        assert_eq!(parsed[0].4, vec![11, 10, 0, 160]);
        assert_eq!(parsed[6].4, vec![11, 0x80 | 10, 3, 32]);
        // The audio after it starts past the key's duration.
        assert_eq!(parse(&s.audio(&[0; 160], 160)).3, before + 160 + 800);
        // No telephone-event negotiated: no packets.
        assert!(Sender::new(0, None, 7).key('1', 100).is_none());
    }

    #[test]
    fn keys_map_both_ways() {
        for k in "0123456789*#ABCD".chars() {
            assert_eq!(key_of(event_of(k).unwrap()), Some(k));
        }
        assert_eq!(event_of('x'), None);
        assert_eq!(key_of(16), None);
    }

    #[test]
    fn packets_come_out_in_order_and_keys_once() {
        let mut s = Sender::new(8, Some(101), 99);
        let p: Vec<Vec<u8>> = (0..8u8).map(|i| s.audio(&[i; 160], 160)).collect();
        let keys = s.key('5', 60).unwrap();
        let after = s.audio(&[9; 160], 160);
        let mut r = Receiver::new(&[8], Some(101));
        // The stream's first packets out of order: it starts at the lowest of the first three.
        for i in [1, 0, 2] {
            assert!(r.push(&p[i]));
        }
        for i in 0..3u8 {
            assert_eq!(r.pop(), Some(Received::Audio(8, vec![i; 160])));
        }
        assert_eq!(r.pop(), None);
        // 4 before 3: held until 3 is there.
        r.push(&p[4]);
        assert_eq!(r.pop(), None);
        r.push(&p[3]);
        assert_eq!(r.pop(), Some(Received::Audio(8, vec![3; 160])));
        assert_eq!(r.pop(), Some(Received::Audio(8, vec![4; 160])));
        // 5 is lost: given up once three later ones wait.
        for i in [6, 7] {
            r.push(&p[i]);
        }
        assert_eq!(r.pop(), None);
        for k in &keys {
            r.push(k);
        }
        assert_eq!(r.pop(), Some(Received::Audio(8, vec![6; 160])));
        assert_eq!(r.pop(), Some(Received::Audio(8, vec![7; 160])));
        assert_eq!(r.pop(), Some(Received::Key('5')));
        // The key's other packets fill their places without being keys: audio goes on at once.
        r.push(&after);
        assert_eq!(r.pop(), Some(Received::Audio(8, vec![9; 160])));
        assert_eq!(r.pop(), None);
        // Not RTP, or another payload type: refused.
        assert!(!r.push(b"hello"));
        assert!(!r.push(&Sender::new(0, None, 1).audio(&[0; 160], 160)));
    }

    #[test]
    fn a_gap_given_up_hands_over_what_waited_behind_it() {
        let mut r = Receiver::new(&[0], None);
        let mut a = Sender::new(0, None, 5);
        let p: Vec<Vec<u8>> = (0..6u8).map(|i| a.audio(&[i; 160], 160)).collect();
        for i in [0, 1, 2] {
            r.push(&p[i]);
        }
        for i in 0..3u8 {
            assert_eq!(r.pop(), Some(Received::Audio(0, vec![i; 160])));
        }
        assert!(!r.waiting());
        // 3 is lost, 4 and 5 come, then silence: nothing pushes them out.
        r.push(&p[4]);
        r.push(&p[5]);
        assert_eq!(r.pop(), None);
        assert!(r.waiting());
        r.give_up_gap();
        assert_eq!(r.pop(), Some(Received::Audio(0, vec![4; 160])));
        assert_eq!(r.pop(), Some(Received::Audio(0, vec![5; 160])));
        assert_eq!(r.pop(), None);
        assert!(!r.waiting());
        // 3 arriving now is too late; nothing to give up.
        r.push(&p[3]);
        r.give_up_gap();
        assert_eq!(r.pop(), None);
        // A stream's first packets too (fewer than the depth).
        let mut r = Receiver::new(&[0], None);
        r.push(&p[1]);
        assert_eq!(r.pop(), None);
        r.give_up_gap();
        assert_eq!(r.pop(), Some(Received::Audio(0, vec![1; 160])));
    }

    #[test]
    fn a_restarted_stream_is_followed() {
        let mut r = Receiver::new(&[0], None);
        let mut a = Sender::new(0, None, 5);
        for i in 0..4u8 {
            r.push(&a.audio(&[i; 160], 160));
        }
        while r.pop().is_some() {}
        // The far end restarts: another SSRC, sequence numbers elsewhere.
        let mut b = Sender::new(0, None, 0x7777_0000_0000_0042);
        let got: Vec<_> = (10..16u8)
            .filter_map(|i| {
                r.push(&b.audio(&[i; 160], 160));
                r.pop()
            })
            .collect();
        assert_eq!(got.first(), Some(&Received::Audio(0, vec![10; 160])));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Sender::new(0, None, 0xffff_0000_0000); // seq starts at 0xffff
        let mut r = Receiver::new(&[0], None);
        let got: Vec<_> = (0..6u8)
            .filter_map(|i| {
                r.push(&s.audio(&[i; 160], 160));
                r.pop()
            })
            .collect();
        let want: Vec<_> = (0..4u8).map(|i| Received::Audio(0, vec![i; 160])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_far_end_may_switch_among_the_formats_of_its_answer() {
        // One stream, one SSRC: Opus on 111, then G.711 on 0; G.722 (9) was not negotiated.
        let mut r = Receiver::new(&[111, 0], None);
        let mut s = Sender::new(111, None, 3);
        let a = s.audio(&[1; 40], 960);
        let mut b = s.audio(&[2; 160], 160);
        b[1] &= 0x80; // its payload type becomes 0
        let mut c = s.audio(&[3; 160], 160);
        c[1] = (c[1] & 0x80) | 9;
        assert!(r.push(&a) && r.push(&b));
        assert!(!r.push(&c), "not a negotiated payload type");
        r.push(&s.audio(&[4; 40], 960));
        r.push(&s.audio(&[5; 40], 960));
        assert_eq!(r.pop(), Some(Received::Audio(111, vec![1; 40])));
        assert_eq!(r.pop(), Some(Received::Audio(0, vec![2; 160])));
    }

    #[test]
    fn a_key_moves_an_opus_streams_clock_by_its_length_at_48_khz() {
        let mut s = Sender::new(111, Some(101), 7).with_clock(48_000);
        let before = parse(&s.audio(&[0; 40], 960)).3;
        s.key('1', 100).unwrap();
        assert_eq!(parse(&s.audio(&[0; 40], 960)).3, before + 960 + 800 * 6);
    }

    #[test]
    fn reception_counts_losses_and_jitter() {
        let mut s = Sender::new(0, None, 0xffff_0000_0001); // seq starts at 0xffff
        let mut r = Receiver::new(&[0], None);
        assert_eq!(r.reception(), None);
        let packets: Vec<Vec<u8>> = (0..10).map(|_| s.audio(&[0; 160], 160)).collect();
        // Packet 3 lost; the others right on time (20 ms apart): no jitter.
        for (i, p) in packets.iter().enumerate().filter(|(i, _)| *i != 3) {
            let at = std::time::Duration::from_millis(1_000 + 20 * i as u64);
            assert!(r.push_at(p, Some(at)));
        }
        let got = r.reception().unwrap();
        assert_eq!(got.ssrc, s.ssrc());
        assert_eq!((got.expected, got.received, got.jitter), (10, 9, 0));
        // The sequence wrapped once: the highest (8) is in the second cycle.
        assert_eq!(got.highest, (1 << 16) | 8);
        assert_eq!(s.counts(), (10, 1_600));
        // Every other packet 10 ms late: jitter grows towards 80 ticks (10 ms at 8 kHz).
        let mut r = Receiver::new(&[0], None);
        for i in 0..200u64 {
            let p = s.audio(&[0; 160], 160);
            let at = std::time::Duration::from_millis(20 * i + if i % 2 == 1 { 10 } else { 0 });
            r.push_at(&p, Some(at));
        }
        let j = r.reception().unwrap().jitter;
        assert!((70..=80).contains(&j), "{j}");
    }

    #[test]
    fn ports_are_even_and_taken_ones_skipped() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a = bind_in(ip, &(61_000..=61_005), 0).unwrap();
        assert_eq!(a.local_addr().unwrap().port(), 61_000);
        let b = bind_in(ip, &(61_000..=61_005), 0).unwrap();
        assert_eq!(b.local_addr().unwrap().port(), 61_002);
        let c = bind_in(ip, &(61_000..=61_005), 0).unwrap();
        assert_eq!(c.local_addr().unwrap().port(), 61_004);
        assert!(bind_in(ip, &(61_000..=61_005), 0).is_none());
    }
}
