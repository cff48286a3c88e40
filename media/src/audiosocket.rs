//! The Asterisk AudioSocket protocol: framing codec and a TCP server.
//!
//! A frame is a 1-byte kind, a 2-byte big-endian payload length and the payload:
//! `0x00` hangup (no payload), `0x01` the call's UUID (16 bytes, always first), `0x03` a DTMF
//! digit (1 ASCII byte), `0x10..=0x18` audio (signed 16-bit little-endian mono PCM at 8, 12,
//! 16, 24, 32, 44.1, 48, 96 or 192 kHz, as Asterisk's `res_audiosocket` maps its `slin*`
//! formats; one early revision of that header numbered slin16 `0x11`), `0xff` an error
//! (optional application code). Audio flows in 20 ms frames; what the server sends back is paced
//! at real time, as Asterisk plays it without buffering.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};
use uuid::Uuid;

const KIND_HANGUP: u8 = 0x00;
const KIND_UUID: u8 = 0x01;
const KIND_DTMF: u8 = 0x03;
const KIND_AUDIO_8K: u8 = 0x10;
const KIND_ERROR: u8 = 0xff;

/// Audio sample rates by frame kind `0x10 + i`.
const RATES: [u32; 9] = [
    8_000, 12_000, 16_000, 24_000, 32_000, 44_100, 48_000, 96_000, 192_000,
];

/// One AudioSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// End of the session.
    Hangup,
    /// The call the connection carries (the first frame).
    Uuid(Uuid),
    /// A DTMF digit: `0`-`9`, `*`, `#`, `A`-`D`.
    Dtmf(char),
    /// Signed 16-bit little-endian mono PCM.
    Audio {
        /// Sample rate in Hz.
        rate_hz: u32,
        /// The raw payload (an even, non-zero number of bytes).
        pcm: Bytes,
    },
    /// An error reported by the peer, with its optional code bytes.
    Error(Bytes),
}

impl Frame {
    /// An audio frame from samples.
    pub fn audio(rate_hz: u32, samples: &[i16]) -> Self {
        let mut pcm = BytesMut::with_capacity(samples.len() * 2);
        for s in samples {
            pcm.put_i16_le(*s);
        }
        Frame::Audio {
            rate_hz,
            pcm: pcm.freeze(),
        }
    }

    /// The samples of an audio frame.
    pub fn samples(pcm: &[u8]) -> Vec<i16> {
        pcm.chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }
}

/// Why a frame could not be decoded or a session failed.
#[derive(Debug, thiserror::Error)]
pub enum AudioSocketError {
    /// Socket I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A frame kind the protocol does not define.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A frame whose payload does not fit its kind.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// The frame kind.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The first frame was not the call's UUID, or it did not come in time.
    #[error("the first frame must be the call's UUID: {0}")]
    NoUuid(String),
    /// A rate that has no frame kind.
    #[error("no AudioSocket frame kind for {0} Hz audio")]
    UnsupportedRate(u32),
}

/// The framing codec (tokio-util).
#[derive(Clone, Copy, Debug, Default)]
pub struct AudioSocketCodec;

impl Decoder for AudioSocketCodec {
    type Item = Frame;
    type Error = AudioSocketError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, AudioSocketError> {
        if src.len() < 3 {
            return Ok(None);
        }
        let kind = src[0];
        let len = u16::from_be_bytes([src[1], src[2]]) as usize;
        // Check the kind before waiting for a payload: garbage is refused at once.
        let malformed = |kind: &'static str, why: String| AudioSocketError::Malformed { kind, why };
        match kind {
            KIND_HANGUP | KIND_UUID | KIND_DTMF | KIND_ERROR => {}
            k if (KIND_AUDIO_8K..KIND_AUDIO_8K + RATES.len() as u8).contains(&k) => {}
            k => return Err(AudioSocketError::UnknownKind(k)),
        }
        if src.len() < 3 + len {
            src.reserve(3 + len - src.len());
            return Ok(None);
        }
        src.advance(3);
        let payload = src.split_to(len).freeze();
        let frame = match kind {
            KIND_HANGUP => Frame::Hangup,
            KIND_UUID => {
                let bytes: [u8; 16] = payload[..]
                    .try_into()
                    .map_err(|_| malformed("uuid", format!("{len} bytes instead of 16")))?;
                Frame::Uuid(Uuid::from_bytes(bytes))
            }
            KIND_DTMF => match payload[..] {
                [d] if matches!(d, b'0'..=b'9' | b'*' | b'#' | b'A'..=b'D') => {
                    Frame::Dtmf(d as char)
                }
                _ => return Err(malformed("dtmf", format!("payload {payload:?}"))),
            },
            KIND_ERROR => Frame::Error(payload),
            k => {
                if len == 0 || !len.is_multiple_of(2) {
                    return Err(malformed(
                        "audio",
                        format!("{len} bytes (must be even, > 0)"),
                    ));
                }
                Frame::Audio {
                    rate_hz: RATES[(k - KIND_AUDIO_8K) as usize],
                    pcm: payload,
                }
            }
        };
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for AudioSocketCodec {
    type Error = AudioSocketError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), AudioSocketError> {
        let (kind, payload): (u8, Bytes) = match frame {
            Frame::Hangup => (KIND_HANGUP, Bytes::new()),
            Frame::Uuid(u) => (KIND_UUID, Bytes::copy_from_slice(u.as_bytes())),
            Frame::Dtmf(d) => (KIND_DTMF, Bytes::copy_from_slice(&[d as u8])),
            Frame::Error(code) => (KIND_ERROR, code),
            Frame::Audio { rate_hz, pcm } => {
                let i = RATES
                    .iter()
                    .position(|r| *r == rate_hz)
                    .ok_or(AudioSocketError::UnsupportedRate(rate_hz))?;
                if pcm.is_empty() || !pcm.len().is_multiple_of(2) || pcm.len() > u16::MAX as usize {
                    return Err(AudioSocketError::Malformed {
                        kind: "audio",
                        why: format!("{} bytes", pcm.len()),
                    });
                }
                (KIND_AUDIO_8K + i as u8, pcm)
            }
        };
        dst.reserve(3 + payload.len());
        dst.put_u8(kind);
        dst.put_u16(payload.len() as u16);
        dst.put_slice(&payload);
        Ok(())
    }
}

/// What a session receives from the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// 20 ms (normally) of audio.
    Audio {
        /// Sample rate in Hz.
        rate_hz: u32,
        /// The samples.
        samples: Vec<i16>,
    },
    /// A DTMF digit.
    Dtmf(char),
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Time allowed for the UUID frame after connecting.
    pub uuid_timeout: Duration,
    /// Time without any frame after which the session is dropped (Asterisk sends audio every
    /// 20 ms while a call is up).
    pub idle_timeout: Duration,
    /// Outbound frames waiting to be played (20 ms each).
    pub play_queue: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            uuid_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            play_queue: 500, // 10 s of audio
        }
    }
}

/// One connected call.
pub struct Session {
    /// The call the switch connected.
    pub call_id: Uuid,
    /// Where from.
    pub peer: SocketAddr,
    frames: FramedRead<tokio::net::tcp::OwnedReadHalf, AudioSocketCodec>,
    idle_timeout: Duration,
    player: Player,
}

/// Plays audio into a session at real time (one 20 ms frame per 20 ms), and hangs it up.
#[derive(Clone)]
pub struct Player {
    tx: mpsc::Sender<Frame>,
}

impl Player {
    /// Queues one frame of audio; waits while the queue is full (so a producer is paced too).
    pub async fn play(&self, rate_hz: u32, samples: &[i16]) -> Result<(), AudioSocketError> {
        self.send(Frame::audio(rate_hz, samples)).await
    }

    /// Asks the switch to hang up (after what is queued).
    pub async fn hangup(&self) -> Result<(), AudioSocketError> {
        self.send(Frame::Hangup).await
    }

    /// Queues one frame of audio without waiting (for a caller that paces itself): false when
    /// the queue is full and the frame was dropped; an error once the session closed.
    pub fn try_play(&self, rate_hz: u32, samples: &[i16]) -> Result<bool, AudioSocketError> {
        match self.tx.try_send(Frame::audio(rate_hz, samples)) {
            Ok(()) => Ok(true),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(closed()),
        }
    }

    /// Asks the switch to hang up without waiting (after what is queued, if there is room).
    pub fn try_hangup(&self) {
        let _ = self.tx.try_send(Frame::Hangup);
    }

    async fn send(&self, f: Frame) -> Result<(), AudioSocketError> {
        self.tx.send(f).await.map_err(|_| closed())
    }
}

fn closed() -> AudioSocketError {
    AudioSocketError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "session closed",
    ))
}

impl Session {
    /// The next audio or DTMF from the switch; `None` once it hung up or closed. A malformed
    /// frame or a silent connection ends the session with an error (logged by the caller).
    pub async fn next(&mut self) -> Option<Result<Inbound, AudioSocketError>> {
        loop {
            let f = match tokio::time::timeout(self.idle_timeout, self.frames.next()).await {
                Err(_) => {
                    return Some(Err(AudioSocketError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no frame from the switch",
                    ))))
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(e)),
                Ok(Some(Ok(f))) => f,
            };
            return match f {
                Frame::Hangup => None,
                Frame::Audio { rate_hz, pcm } => Some(Ok(Inbound::Audio {
                    rate_hz,
                    samples: Frame::samples(&pcm),
                })),
                Frame::Dtmf(d) => Some(Ok(Inbound::Dtmf(d))),
                Frame::Error(code) => {
                    tracing::warn!(call_id = %self.call_id, code = ?&code[..], "AudioSocket peer reported an error");
                    continue;
                }
                Frame::Uuid(u) => Some(Err(AudioSocketError::Malformed {
                    kind: "uuid",
                    why: format!("a second UUID frame ({u})"),
                })),
            };
        }
    }

    /// The session's player (clone it into other tasks).
    pub fn player(&self) -> Player {
        self.player.clone()
    }
}

/// Binds the AudioSocket listener with a deep accept queue: a switch bringing up many calls
/// at once (or reconnecting after a restart) must not overflow the default queue of 128 and
/// have its connections reset.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Accepts AudioSocket connections until the listener fails, handing each session (once its
/// UUID frame arrived) to `on_session` in its own task. Connections that do not start with a
/// valid UUID frame are closed and logged.
pub async fn serve<F, Fut>(listener: TcpListener, settings: ServerSettings, on_session: F)
where
    F: Fn(Session) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let on_session = std::sync::Arc::new(on_session);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "AudioSocket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (settings, on_session) = (settings.clone(), on_session.clone());
        tokio::spawn(async move {
            match open(stream, peer, &settings).await {
                Ok(session) => {
                    metrics::gauge!("vbin_audiosocket_sessions").increment(1.0);
                    on_session(session).await;
                    metrics::gauge!("vbin_audiosocket_sessions").decrement(1.0);
                }
                Err(e) => {
                    metrics::counter!("vbin_audiosocket_refused_total").increment(1);
                    tracing::warn!(%peer, error = %e, "AudioSocket connection refused");
                }
            }
        });
    }
}

/// Reads the UUID frame and starts the paced writer.
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    settings: &ServerSettings,
) -> Result<Session, AudioSocketError> {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut frames = FramedRead::new(read, AudioSocketCodec);
    let first = tokio::time::timeout(settings.uuid_timeout, frames.next())
        .await
        .map_err(|_| AudioSocketError::NoUuid("none within the timeout".into()))?;
    let call_id = match first {
        Some(Ok(Frame::Uuid(u))) => u,
        Some(Ok(other)) => return Err(AudioSocketError::NoUuid(format!("got {other:?}"))),
        Some(Err(e)) => return Err(e),
        None => return Err(AudioSocketError::NoUuid("connection closed".into())),
    };
    let (tx, rx) = mpsc::channel(settings.play_queue);
    tokio::spawn(paced_writer(
        FramedWrite::new(write, AudioSocketCodec),
        rx,
        call_id,
    ));
    Ok(Session {
        call_id,
        peer,
        frames,
        idle_timeout: settings.idle_timeout,
        player: Player { tx },
    })
}

/// Writes queued frames, audio at real time: a frame of d ms is followed by the next one d ms
/// later (Asterisk plays what it receives at once; sending faster would overrun it).
async fn paced_writer(
    mut out: FramedWrite<tokio::net::tcp::OwnedWriteHalf, AudioSocketCodec>,
    mut rx: mpsc::Receiver<Frame>,
    call_id: Uuid,
) {
    let mut next_at = tokio::time::Instant::now();
    while let Some(f) = rx.recv().await {
        let play = match &f {
            Frame::Audio { rate_hz, pcm } => {
                Duration::from_micros(pcm.len() as u64 / 2 * 1_000_000 / u64::from(*rate_hz))
            }
            _ => Duration::ZERO,
        };
        let now = tokio::time::Instant::now();
        if next_at > now {
            tokio::time::sleep_until(next_at).await;
        } else {
            // Nothing was playing: start the clock now (no burst to catch up).
            next_at = now;
        }
        let hangup = f == Frame::Hangup;
        if let Err(e) = out.send(f).await {
            tracing::debug!(%call_id, error = %e, "AudioSocket write failed");
            return;
        }
        next_at += play;
        if hangup {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, AudioSocketError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = AudioSocketCodec.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Uuid(Uuid::new_v4()),
            Frame::Dtmf('#'),
            Frame::audio(8_000, &[0, 1, -1, i16::MAX, i16::MIN]),
            Frame::audio(16_000, &[7; 320]),
            Frame::audio(48_000, &[3; 960]),
            Frame::Error(Bytes::from_static(&[0x02])),
            Frame::Hangup,
        ];
        let mut buf = BytesMut::new();
        for f in frames.clone() {
            AudioSocketCodec.encode(f, &mut buf).unwrap();
        }
        assert_eq!(decode_all(&buf).unwrap(), frames);
    }

    #[test]
    fn wire_format_matches_asterisk() {
        let mut buf = BytesMut::new();
        AudioSocketCodec.encode(Frame::Hangup, &mut buf).unwrap();
        assert_eq!(&buf[..], &[0x00, 0x00, 0x00]);
        buf.clear();
        AudioSocketCodec
            .encode(Frame::audio(8_000, &[0x0102, -2]), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &[0x10, 0x00, 0x04, 0x02, 0x01, 0xfe, 0xff]);
        buf.clear();
        AudioSocketCodec
            .encode(Frame::audio(16_000, &[1]), &mut buf)
            .unwrap();
        assert_eq!(buf[0], 0x12);
        assert!(matches!(
            AudioSocketCodec.encode(Frame::audio(11_025, &[1]), &mut buf),
            Err(AudioSocketError::UnsupportedRate(11_025))
        ));
    }

    #[test]
    fn partial_frames_wait_for_the_rest() {
        let mut buf = BytesMut::from(&[0x10, 0x00, 0x04, 0x01][..]);
        assert_eq!(AudioSocketCodec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0x00, 0x02, 0x00]);
        assert_eq!(
            AudioSocketCodec.decode(&mut buf).unwrap(),
            Some(Frame::audio(8_000, &[1, 2]))
        );
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &[0x10, 0x00, 0x00][..],             // zero-length audio
            &[0x10, 0x00, 0x03, 1, 2, 3][..],    // odd audio
            &[0x01, 0x00, 0x04, 1, 2, 3, 4][..], // short UUID
            &[0x03, 0x00, 0x01, b'x'][..],       // not a DTMF digit
            &[0x03, 0x00, 0x02, b'1', b'2'][..], // two digits
            &[0x02, 0x00, 0x00][..],             // unknown kind
            &[0x19, 0x00, 0x00][..],             // past the audio kinds
            &[0x7f, 0xff, 0xff][..],             // garbage
        ] {
            assert!(decode_all(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A cheap fuzz: every prefix of pseudo-random byte strings decodes or errors.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_all(&bytes);
        }
    }
}
