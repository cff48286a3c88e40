//! A SIP call's audio: its RTP stream as the far end of the call's media session.
//!
//! The reader task ([`pump`]) takes datagrams from the call's UDP socket, latches the far end's
//! address to the source of its RTP (symmetric RTP: behind NAT the SDP's address is often not
//! where packets come from, the first cause of one-way audio), puts packets in order
//! ([`Receiver`]), decodes G.711 and hands 20 ms frames to the session's [`SocketFar`]. The
//! session's audio goes out through [`RtpOutlet`], one packet per 20 ms tick, and keys as
//! RFC 4733 events when the far end takes them.

use crate::rtp::{Received, Receiver, Sender, SAMPLES_PER_PACKET};
use crate::sdp::Format;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use vbin_callmedia::socket::{Incoming, Outlet, TransportGone};
use vbin_event_schema::Codec;
use vbin_media::codecs::{CodecError, G722Decoder, G722Encoder, OpusDecoder, OpusEncoder};
use vbin_media::g711;
use vbin_media::resample::Resampler;

/// The far end's address, latched to where its RTP comes from.
#[derive(Clone, Debug)]
pub struct Remote(Arc<Mutex<SocketAddr>>);

impl Remote {
    /// Starting at `addr` (the SDP's).
    pub fn new(addr: SocketAddr) -> Self {
        Self(Arc::new(Mutex::new(addr)))
    }

    /// Where to send.
    pub fn get(&self) -> SocketAddr {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn latch(&self, from: SocketAddr) {
        let mut a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if *a != from {
            tracing::debug!(sdp = %*a, rtp = %from, "RTP latched to where the far end sends from");
            *a = from;
        }
    }
}

/// The rate of the audio a codec carries: G.711's 8 kHz; G.722's 16 kHz, and Opus's, which
/// we code at the media session's 16 kHz (wideband speech; its RTP clock stays 48 kHz).
pub fn audio_rate(codec: Codec) -> u32 {
    match codec {
        Codec::Pcmu | Codec::Pcma => 8_000,
        Codec::G722 | Codec::Opus => 16_000,
    }
}

/// RTP clock ticks of a 20 ms packet of a codec (G.722's clock runs at 8 kHz, RFC 3551).
pub fn ticks_per_packet(codec: Codec) -> u32 {
    match codec {
        Codec::Opus => 960,
        _ => SAMPLES_PER_PACKET,
    }
}

/// The RTP clock of a codec.
pub fn clock_hz(codec: Codec) -> u32 {
    ticks_per_packet(codec) * 50
}

/// A codec's encoding state for the audio we send.
enum Encoder {
    Ulaw,
    Alaw,
    G722(Box<G722Encoder>),
    Opus(OpusEncoder),
}

impl Encoder {
    fn new(codec: Codec) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu => Self::Ulaw,
            Codec::Pcma => Self::Alaw,
            Codec::G722 => Self::G722(Box::default()),
            Codec::Opus => Self::Opus(OpusEncoder::new(audio_rate(codec))?),
        })
    }

    fn encode(&mut self, samples: &[i16]) -> Result<Vec<u8>, CodecError> {
        let g711 = |f: fn(&[i16], &mut [u8])| {
            let mut out = vec![0u8; samples.len()];
            f(samples, &mut out);
            out
        };
        Ok(match self {
            Self::Ulaw => g711(g711::ulaw_encode_slice),
            Self::Alaw => g711(g711::alaw_encode_slice),
            Self::G722(e) => e.encode(samples),
            Self::Opus(e) => e.encode(samples)?,
        })
    }
}

/// A codec's decoding state for the audio we receive.
enum Decoder {
    Ulaw,
    Alaw,
    G722(Box<G722Decoder>),
    Opus(OpusDecoder),
}

impl Decoder {
    fn new(codec: Codec) -> Result<Self, CodecError> {
        Ok(match codec {
            Codec::Pcmu => Self::Ulaw,
            Codec::Pcma => Self::Alaw,
            Codec::G722 => Self::G722(Box::default()),
            Codec::Opus => Self::Opus(OpusDecoder::new(audio_rate(codec))?),
        })
    }

    fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, CodecError> {
        let g711 = |f: fn(&[u8], &mut [i16])| {
            let mut out = vec![0i16; payload.len()];
            f(payload, &mut out);
            out
        };
        Ok(match self {
            Self::Ulaw => g711(g711::ulaw_decode_slice),
            Self::Alaw => g711(g711::alaw_decode_slice),
            Self::G722(d) => d.decode(payload),
            Self::Opus(d) => d.decode(payload)?,
        })
    }
}

/// How a call's RTP is coded both ways, as its offer/answer settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Coding {
    /// What we send audio with: the far end's first format we both have, on its number.
    pub send: Format,
    /// The payload type the far end takes keys on (RFC 4733), if any.
    pub send_dtmf: Option<u8>,
    /// The formats the far end may send, on the numbers our SDP gave them.
    pub receive: Vec<Format>,
    /// The payload type of keys in our SDP, if any.
    pub receive_dtmf: Option<u8>,
}

impl Coding {
    /// The rate of the audio we send (the media session's frames are resampled to it).
    pub fn send_rate(&self) -> u32 {
        audio_rate(self.send.codec)
    }
}

/// Whether a call's RTP may go out: not while the far end holds the call (our SDP then says
/// recvonly or inactive, RFC 3264 5.1). Shared by the dialog, which follows the offers, and
/// the outlet.
#[derive(Clone, Debug)]
pub struct Sending(Arc<std::sync::atomic::AtomicBool>);

impl Default for Sending {
    fn default() -> Self {
        Self(Arc::new(std::sync::atomic::AtomicBool::new(true)))
    }
}

impl Sending {
    /// Lets RTP out, or holds it back.
    pub fn set(&self, on: bool) {
        self.0.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether RTP may go out.
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Sends the session's audio (frames at the send codec's rate) and keys as RTP.
pub struct RtpOutlet {
    socket: UdpSocket,
    remote: Remote,
    sender: Sender,
    encoder: Encoder,
    rate: u32,
    ticks: u32,
    /// The stream's RTP clock (for sender reports).
    clock: u32,
    sending: Sending,
    stats: Option<Arc<crate::rtcp::Stats>>,
}

impl RtpOutlet {
    /// An outlet on `socket` (non-blocking) to `remote`, sending as `coding` says while
    /// `sending` lets it; `seed` makes the stream's SSRC, first sequence number and timestamp.
    pub fn new(
        socket: UdpSocket,
        remote: Remote,
        coding: &Coding,
        seed: u128,
        sending: Sending,
    ) -> Result<Self, CodecError> {
        let codec = coding.send.codec;
        Ok(Self {
            socket,
            remote,
            sender: Sender::new(coding.send.pt, coding.send_dtmf, seed).with_clock(clock_hz(codec)),
            encoder: Encoder::new(codec)?,
            rate: audio_rate(codec),
            ticks: ticks_per_packet(codec),
            clock: clock_hz(codec),
            sending,
            stats: None,
        })
    }

    /// The same, keeping its counts in `stats` for RTCP sender reports.
    pub fn with_stats(mut self, stats: Arc<crate::rtcp::Stats>) -> Self {
        self.stats = Some(stats);
        self
    }

    fn send(&self, packet: &[u8]) -> Result<bool, TransportGone> {
        match self.socket.send_to(packet, self.remote.get()) {
            Ok(_) => {
                metrics::counter!("vbin_rtp_sent_packets_total").increment(1);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            // ICMP unreachable from an earlier packet: the far end is not there (yet); RTP
            // does not care, the next packet tries again.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
            Err(_) => Err(TransportGone),
        }
    }
}

impl Outlet for RtpOutlet {
    fn play(&mut self, rate_hz: u32, samples: &[i16]) -> Result<bool, TransportGone> {
        if rate_hz != self.rate {
            return Ok(false);
        }
        if !self.sending.get() {
            // On hold: the frame is not late, it is not wanted. The stream's clock still
            // runs, so the far end sees the gap when it resumes (RFC 3550 5.1).
            self.sender.skip(self.ticks);
            return Ok(true);
        }
        let payload = match self.encoder.encode(samples) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "a frame could not be encoded: dropped");
                return Ok(false);
            }
        };
        let rtp_ts = self.sender.timestamp();
        let packet = self.sender.audio(&payload, self.ticks);
        let sent = self.send(&packet);
        if let (Ok(true), Some(stats)) = (&sent, &self.stats) {
            let (packets, octets) = self.sender.counts();
            *stats.sent.lock().unwrap_or_else(|p| p.into_inner()) = Some(crate::rtcp::Sent {
                packets,
                octets,
                rtp_ts,
                at: std::time::Instant::now(),
                clock_hz: self.clock,
            });
        }
        sent
    }

    fn keys(&mut self, digits: &str) -> bool {
        if !self.sending.get() {
            return false;
        }
        let mut sent = false;
        for d in digits.chars() {
            let Some(packets) = self.sender.key(d, 100) else {
                return false;
            };
            for p in packets {
                sent |= self.send(&p).unwrap_or(false);
            }
        }
        sent
    }

    fn hangup(&mut self) {
        // The SIP carrier sends the BYE; RTP has nothing to say.
    }
}

/// Keys heard in the audio of a far end without RFC 4733 (the detector listens at 8 kHz).
pub struct Inband {
    detector: vbin_media::dtmf::Detector,
    /// 16 kHz audio brought down to the detector's rate.
    down: Option<Resampler>,
    partial: Vec<i16>,
}

impl Default for Inband {
    fn default() -> Self {
        Self::new()
    }
}

impl Inband {
    /// A listener for keys in the audio.
    pub fn new() -> Self {
        Self {
            detector: vbin_media::dtmf::Detector::new(),
            down: None,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, rate: u32, samples: &[i16]) -> Vec<char> {
        if rate == 8_000 {
            return self.detector.push(samples);
        }
        if self.down.as_ref().is_none_or(|d| d.from_hz() != rate) {
            self.down = Resampler::new(rate, 8_000).ok();
            self.partial.clear();
        }
        let Some(down) = self.down.as_mut() else {
            return Vec::new();
        };
        self.partial.extend_from_slice(samples);
        let n = down.input_frame_len();
        let mut narrow = Vec::new();
        let mut used = 0;
        while self.partial.len() - used >= n {
            if down
                .process(&self.partial[used..used + n], &mut narrow)
                .is_err()
            {
                break;
            }
            used += n;
        }
        self.partial.drain(..used);
        self.detector.push(&narrow)
    }
}

/// Reads the call's RTP into `tx` until the session is gone (`tx` closed) or the socket
/// fails; returns why it ended. Audio comes in any of `coding`'s receive formats, each
/// decoded at its own rate. With `inband` (a far end without RFC 4733), keys are heard in
/// the audio too.
pub async fn pump(
    socket: tokio::net::UdpSocket,
    remote: Remote,
    coding: Coding,
    mut inband: Option<Inband>,
    stats: Option<Arc<crate::rtcp::Stats>>,
    tx: mpsc::Sender<Incoming>,
) -> String {
    let pts: Vec<u8> = coding.receive.iter().map(|f| f.pt).collect();
    let clock = coding.receive.first().map_or(8_000, |f| clock_hz(f.codec));
    let mut receiver = Receiver::new(&pts, coding.receive_dtmf).with_clock(clock);
    let epoch = std::time::Instant::now();
    let mut decoders = HashMap::new();
    for f in &coding.receive {
        match Decoder::new(f.codec) {
            Ok(d) => {
                decoders.insert(f.pt, (audio_rate(f.codec), d));
            }
            Err(e) => return format!("{} decoder: {e}", f.codec.as_str()),
        }
    }
    let mut buf = vec![0u8; 2048];
    loop {
        let got = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            // Held packets that nothing followed for a while: give up what is missing
            // before them rather than wait for the next talkspurt to push them out.
            _ = tokio::time::sleep(GAP_WAIT), if receiver.waiting() => {
                receiver.give_up_gap();
                if let Err(ended) = hand_over(&mut receiver, &mut decoders, &mut inband, &tx) {
                    return ended;
                }
                continue;
            }
            _ = tx.closed() => return "the call's media session ended".into(),
        };
        let (n, from) = match got {
            Ok(x) => x,
            // An ICMP error of one of our packets: not the far end's fault, go on.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return format!("RTP socket: {e}"),
        };
        if !receiver.push_at(&buf[..n], Some(epoch.elapsed())) {
            metrics::counter!("vbin_rtp_ignored_packets_total").increment(1);
            continue;
        }
        if let Some(stats) = &stats {
            *stats.received.lock().unwrap_or_else(|p| p.into_inner()) = receiver.reception();
        }
        metrics::counter!("vbin_rtp_received_packets_total").increment(1);
        remote.latch(from);
        if let Err(ended) = hand_over(&mut receiver, &mut decoders, &mut inband, &tx) {
            return ended;
        }
    }
}

/// How long packets held back for a missing one wait when nothing comes after them: a loss
/// just before silence (DTX, hold) would otherwise keep up to two packets (40 ms) until the
/// next talkspurt. Three packets' time, as the reorder depth waits in a flowing stream.
const GAP_WAIT: std::time::Duration = std::time::Duration::from_millis(60);

/// Decodes what `receiver` has in order into `tx`; `Err` (why) once the session is gone.
fn hand_over(
    receiver: &mut Receiver,
    decoders: &mut HashMap<u8, (u32, Decoder)>,
    inband: &mut Option<Inband>,
    tx: &mpsc::Sender<Incoming>,
) -> Result<(), String> {
    while let Some(item) = receiver.pop() {
        let mut msgs = Vec::with_capacity(1);
        match item {
            Received::Audio(pt, payload) => {
                let Some((rate, decoder)) = decoders.get_mut(&pt) else {
                    continue;
                };
                let samples = match decoder.decode(&payload) {
                    Ok(s) => s,
                    Err(e) => {
                        metrics::counter!("vbin_rtp_undecodable_packets_total").increment(1);
                        tracing::debug!(error = %e, "an RTP packet could not be decoded");
                        continue;
                    }
                };
                let keys = inband.as_mut().map(|d| d.push(*rate, &samples));
                msgs.push(Incoming::Audio(*rate, samples));
                msgs.extend(keys.into_iter().flatten().map(Incoming::Dtmf));
            }
            Received::Key(k) => msgs.push(Incoming::Dtmf(k)),
        }
        for msg in msgs {
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(msg) {
                return Err("the call's media session ended".into());
            }
        }
    }
    Ok(())
}

/// Samples per packet: one 20 ms frame at 8 kHz.
pub const FRAME: usize = SAMPLES_PER_PACKET as usize;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::Sender;
    use crate::sdp::DTMF_PT;
    use rtp_types::RtpPacket;
    use std::time::Duration;

    fn encode(codec: Codec, samples: &[i16]) -> Vec<u8> {
        Encoder::new(codec).unwrap().encode(samples).unwrap()
    }

    fn decode(codec: Codec, payload: &[u8]) -> Vec<i16> {
        Decoder::new(codec).unwrap().decode(payload).unwrap()
    }

    /// `codec` both ways on its usual payload type, keys on [`DTMF_PT`] if `keys`.
    fn coding(codec: Codec, keys: bool) -> Coding {
        let f = Format::ours(codec);
        let dtmf = keys.then_some(DTMF_PT);
        Coding {
            send: f,
            send_dtmf: dtmf,
            receive: vec![f],
            receive_dtmf: dtmf,
        }
    }

    /// A far end on a real UDP socket talking to the call's socket: what it sends arrives as
    /// decoded frames and keys, what the session plays arrives as G.711 RTP, bit-exact.
    #[tokio::test]
    async fn rtp_in_and_out_over_real_sockets() {
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let our_addr = ours.local_addr().unwrap();
        // The SDP said another port: latching follows where the far end really sends from.
        let remote = Remote::new("127.0.0.1:9".parse().unwrap());
        let out_socket = ours.try_clone().unwrap();
        out_socket.set_nonblocking(true).unwrap();
        ours.set_nonblocking(true).unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        let reader = tokio::spawn(pump(
            tokio::net::UdpSocket::from_std(ours).unwrap(),
            remote.clone(),
            coding(Codec::Pcmu, true),
            None,
            None,
            tx,
        ));

        // In: four frames of a ramp and a key, as the far end's RTP.
        let mut theirs = Sender::new(0, Some(DTMF_PT), 0x1234);
        let frames: Vec<Vec<i16>> = (0..4)
            .map(|f| {
                (0..FRAME)
                    .map(|i| ((f * FRAME + i) as i16 - 300) * 50)
                    .collect()
            })
            .collect();
        for f in &frames {
            far.send_to(&theirs.audio(&encode(Codec::Pcmu, f), 160), our_addr)
                .unwrap();
        }
        for p in theirs.key('7', 60).unwrap() {
            far.send_to(&p, our_addr).unwrap();
        }
        far.send_to(
            &theirs.audio(&encode(Codec::Pcmu, &frames[0]), 160),
            our_addr,
        )
        .unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let m = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap()
                .unwrap();
            got.push(m);
        }
        for (f, m) in frames.iter().zip(&got) {
            let Incoming::Audio(8_000, samples) = m else {
                panic!("{m:?}")
            };
            // G.711 is lossy once: what came in is what µ-law makes of the ramp.
            assert_eq!(samples, &decode(Codec::Pcmu, &encode(Codec::Pcmu, f)));
        }
        assert!(matches!(got[4], Incoming::Dtmf('7')), "{:?}", got[4]);
        assert_eq!(remote.get(), far.local_addr().unwrap(), "latched");

        // Out: a frame the session plays reaches the far end as one µ-law packet.
        let mut outlet = RtpOutlet::new(
            out_socket,
            remote.clone(),
            &coding(Codec::Pcmu, true),
            0x99,
            Sending::default(),
        )
        .unwrap();
        assert_eq!(outlet.play(8_000, &frames[1]), Ok(true));
        let mut buf = [0u8; 2048];
        let n = far.recv(&mut buf).unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.payload(), encode(Codec::Pcmu, &frames[1]).as_slice());
        assert!(outlet.keys("#"));
        let n = far.recv(&mut buf).unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!((p.payload_type(), p.payload()[0]), (DTMF_PT, 11));

        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.contains("session ended"), "{ended}");
    }

    /// A µ-law call's pump on a real socket, fed by a far end's socket: the far end, the
    /// address it sends to, and what the pump hands over.
    fn spawn_pump(
        inband: Option<Inband>,
    ) -> (
        std::net::UdpSocket,
        std::net::SocketAddr,
        mpsc::Receiver<Incoming>,
    ) {
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let our_addr = ours.local_addr().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel(100);
        tokio::spawn(pump(
            tokio::net::UdpSocket::from_std(ours).unwrap(),
            Remote::new(far.local_addr().unwrap()),
            coding(Codec::Pcmu, false),
            inband,
            None,
            tx,
        ));
        (far, our_addr, rx)
    }

    /// A packet lost just before the far end goes silent (DTX, hold): the packet after it is
    /// not held until the next talkspurt, but handed over once it has waited a little.
    #[tokio::test]
    async fn a_packet_after_a_loss_before_silence_is_not_held_back() {
        let (far, our_addr, mut rx) = spawn_pump(None);
        let mut theirs = Sender::new(0, None, 0x77);
        let frames: Vec<Vec<i16>> = (0..5).map(|f| vec![(f as i16 + 1) * 1000; FRAME]).collect();
        for (i, f) in frames.iter().enumerate() {
            let packet = theirs.audio(&encode(Codec::Pcmu, f), 160);
            if i != 3 {
                far.send_to(&packet, our_addr).unwrap();
            }
        }
        let mut got = Vec::new();
        while let Ok(Some(Incoming::Audio(_, samples))) =
            tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
        {
            got.push(samples);
        }
        let want: Vec<Vec<i16>> = [0, 1, 2, 4]
            .iter()
            .map(|&i| decode(Codec::Pcmu, &encode(Codec::Pcmu, &frames[i])))
            .collect();
        assert_eq!(got, want, "the four frames that came, the last one too");
    }

    /// A far end without RFC 4733 presses 5 as tones in its µ-law audio: the key is heard.
    #[tokio::test]
    async fn keys_in_the_audio_of_a_far_end_without_rfc_4733_are_heard() {
        let (far, our_addr, mut rx) = spawn_pump(Some(Inband::new()));
        // 120 ms of 770 + 1336 Hz (key 5), then 60 ms of silence, in 20 ms packets.
        let mut theirs = Sender::new(0, None, 0x55);
        let samples: Vec<i16> = (0..(FRAME * 9))
            .map(|i| {
                if i >= FRAME * 6 {
                    return 0;
                }
                let t = i as f32 / 8_000.0;
                let w = |f: f32| (2.0 * std::f32::consts::PI * f * t).sin();
                ((w(770.0) + w(1336.0)) * 6_000.0) as i16
            })
            .collect();
        for f in samples.chunks(FRAME) {
            far.send_to(&theirs.audio(&encode(Codec::Pcmu, f), 160), our_addr)
                .unwrap();
        }
        let mut keys = Vec::new();
        for _ in 0..10 {
            match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                Ok(Some(Incoming::Dtmf(k))) => keys.push(k),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        assert_eq!(keys, ['5']);
    }

    /// A 16 kHz tone of `n` samples.
    fn tone(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                ((i as f32 * 2.0 * std::f32::consts::PI * 1_000.0 / 16_000.0).sin() * 8_000.0)
                    as i16
            })
            .collect()
    }

    /// G.722 and Opus over real sockets: the far end's wideband packets arrive as 16 kHz
    /// frames (the same samples its decoder would make), and 16 kHz frames the session plays
    /// leave on the far end's payload type with the codec's clock (160 ticks for G.722,
    /// whose RTP clock is 8 kHz; 960 for Opus's 48 kHz).
    #[tokio::test]
    async fn wideband_codecs_both_ways_with_their_clocks() {
        for (codec, pt, ticks) in [(Codec::G722, 9u8, 160u32), (Codec::Opus, 96, 960)] {
            let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            far.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let our_addr = ours.local_addr().unwrap();
            let out_socket = ours.try_clone().unwrap();
            out_socket.set_nonblocking(true).unwrap();
            ours.set_nonblocking(true).unwrap();
            let f = Format { codec, pt };
            let coding = Coding {
                send: f,
                send_dtmf: None,
                receive: vec![f],
                receive_dtmf: None,
            };
            let remote = Remote::new(far.local_addr().unwrap());
            let (tx, mut rx) = mpsc::channel(100);
            tokio::spawn(pump(
                tokio::net::UdpSocket::from_std(ours).unwrap(),
                remote.clone(),
                coding.clone(),
                None,
                None,
                tx,
            ));
            let audio = tone(320 * 4);
            let mut theirs = Sender::new(pt, None, 0x77);
            let mut enc = Encoder::new(codec).unwrap();
            let mut dec = Decoder::new(codec).unwrap();
            let mut want = Vec::new();
            for frame in audio.chunks(320) {
                let payload = enc.encode(frame).unwrap();
                want.push(dec.decode(&payload).unwrap());
                far.send_to(&theirs.audio(&payload, ticks), our_addr)
                    .unwrap();
            }
            // The reorder buffer holds the last packets back until later ones come.
            for _ in 0..crate::rtp::REORDER_DEPTH {
                far.send_to(
                    &theirs.audio(&enc.encode(&[0; 320]).unwrap(), ticks),
                    our_addr,
                )
                .unwrap();
            }
            for w in &want {
                let m = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                    .await
                    .unwrap()
                    .unwrap();
                let Incoming::Audio(16_000, samples) = m else {
                    panic!("{}: {m:?}", codec.as_str())
                };
                assert_eq!(&samples, w, "{}", codec.as_str());
            }

            let sending = Sending::default();
            let mut outlet =
                RtpOutlet::new(out_socket, remote, &coding, 0x42, sending.clone()).unwrap();
            assert_eq!(outlet.play(8_000, &audio[..160]), Ok(false), "not its rate");
            let mut buf = [0u8; 2048];
            let mut stamps = Vec::new();
            let mut dec = Decoder::new(codec).unwrap();
            for frame in audio.chunks(320).take(2) {
                assert_eq!(outlet.play(16_000, frame), Ok(true));
                let n = far.recv(&mut buf).unwrap();
                let p = RtpPacket::parse(&buf[..n]).unwrap();
                assert_eq!(p.payload_type(), pt);
                assert_eq!(dec.decode(p.payload()).unwrap().len(), 320);
                stamps.push(p.timestamp());
            }
            assert_eq!(
                stamps[1].wrapping_sub(stamps[0]),
                ticks,
                "{}",
                codec.as_str()
            );
        }
    }
}
