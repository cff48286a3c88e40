//! A SIP call's audio: its RTP stream as the far end of the call's media session.
//!
//! The reader task ([`pump`]) takes datagrams from the call's UDP socket, latches the far end's
//! address to the source of its RTP (symmetric RTP: behind NAT the SDP's address is often not
//! where packets come from, the first cause of one-way audio), puts packets in order
//! ([`Receiver`]), decodes G.711 and hands 20 ms frames to the session's [`SocketFar`]. The
//! session's audio goes out through [`RtpOutlet`], one packet per 20 ms tick, and keys as
//! RFC 4733 events when the far end takes them.

use crate::rtp::{Received, Receiver, Sender, SAMPLES_PER_PACKET};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use vbin_callmedia::socket::{Incoming, Outlet, TransportGone};
use vbin_event_schema::Codec;
use vbin_media::g711;

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

fn encode(codec: Codec, samples: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; samples.len()];
    match codec {
        Codec::Pcma => g711::alaw_encode_slice(samples, &mut out),
        _ => g711::ulaw_encode_slice(samples, &mut out),
    }
    out
}

fn decode(codec: Codec, payload: &[u8]) -> Vec<i16> {
    let mut out = vec![0i16; payload.len()];
    match codec {
        Codec::Pcma => g711::alaw_decode_slice(payload, &mut out),
        _ => g711::ulaw_decode_slice(payload, &mut out),
    }
    out
}

/// Sends the session's audio (8 kHz frames) and keys as RTP.
pub struct RtpOutlet {
    socket: UdpSocket,
    remote: Remote,
    sender: Sender,
    codec: Codec,
}

impl RtpOutlet {
    /// An outlet on `socket` (non-blocking) to `remote`, in `codec` with `sender`'s numbering.
    pub fn new(socket: UdpSocket, remote: Remote, sender: Sender, codec: Codec) -> Self {
        Self {
            socket,
            remote,
            sender,
            codec,
        }
    }

    fn send(&self, packet: &[u8]) -> Result<bool, TransportGone> {
        match self.socket.send_to(packet, self.remote.get()) {
            Ok(_) => Ok(true),
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
        if rate_hz != 8_000 {
            return Ok(false);
        }
        let payload = encode(self.codec, samples);
        let packet = self.sender.audio(&payload, samples.len() as u32);
        self.send(&packet)
    }

    fn keys(&mut self, digits: &str) -> bool {
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

/// Reads the call's RTP into `tx` until the session is gone (`tx` closed) or the socket
/// fails; returns why it ended. With `inband` (a far end without RFC 4733), keys are heard in
/// the audio too.
pub async fn pump(
    socket: tokio::net::UdpSocket,
    remote: Remote,
    mut receiver: Receiver,
    codec: Codec,
    mut inband: Option<vbin_media::dtmf::Detector>,
    tx: mpsc::Sender<Incoming>,
) -> String {
    let mut buf = vec![0u8; 2048];
    loop {
        let got = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = tx.closed() => return "the call's media session ended".into(),
        };
        let (n, from) = match got {
            Ok(x) => x,
            // An ICMP error of one of our packets: not the far end's fault, go on.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return format!("RTP socket: {e}"),
        };
        if !receiver.push(&buf[..n]) {
            metrics::counter!("vbin_rtp_ignored_packets_total").increment(1);
            continue;
        }
        remote.latch(from);
        while let Some(item) = receiver.pop() {
            let mut msgs = Vec::with_capacity(1);
            match item {
                Received::Audio(payload) => {
                    let samples = decode(codec, &payload);
                    let keys = inband.as_mut().map(|d| d.push(&samples));
                    msgs.push(Incoming::Audio(8_000, samples));
                    msgs.extend(keys.into_iter().flatten().map(Incoming::Dtmf));
                }
                Received::Key(k) => msgs.push(Incoming::Dtmf(k)),
            }
            for msg in msgs {
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(msg) {
                    return "the call's media session ended".into();
                }
            }
        }
    }
}

/// Samples per packet: one 20 ms frame at 8 kHz.
pub const FRAME: usize = SAMPLES_PER_PACKET as usize;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::Sender;
    use rtp_types::RtpPacket;
    use std::time::Duration;

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
            Receiver::new(0, Some(crate::sdp::DTMF_PT)),
            Codec::Pcmu,
            None,
            tx,
        ));

        // In: four frames of a ramp and a key, as the far end's RTP.
        let mut theirs = Sender::new(0, Some(crate::sdp::DTMF_PT), 0x1234);
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
            Sender::new(0, Some(crate::sdp::DTMF_PT), 0x99),
            Codec::Pcmu,
        );
        assert_eq!(outlet.play(8_000, &frames[1]), Ok(true));
        let mut buf = [0u8; 2048];
        let n = far.recv(&mut buf).unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.payload(), encode(Codec::Pcmu, &frames[1]).as_slice());
        assert!(outlet.keys("#"));
        let n = far.recv(&mut buf).unwrap();
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(
            (p.payload_type(), p.payload()[0]),
            (crate::sdp::DTMF_PT, 11)
        );

        drop(rx);
        let ended = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.contains("session ended"), "{ended}");
    }

    /// A far end without RFC 4733 presses 5 as tones in its µ-law audio: the key is heard.
    #[tokio::test]
    async fn keys_in_the_audio_of_a_far_end_without_rfc_4733_are_heard() {
        let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let far = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let our_addr = ours.local_addr().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (tx, mut rx) = mpsc::channel(100);
        tokio::spawn(pump(
            tokio::net::UdpSocket::from_std(ours).unwrap(),
            Remote::new(far.local_addr().unwrap()),
            Receiver::new(0, None),
            Codec::Pcmu,
            Some(vbin_media::dtmf::Detector::new()),
            tx,
        ));
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
}
