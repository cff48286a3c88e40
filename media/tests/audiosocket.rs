//! The AudioSocket server against clients speaking the protocol as Asterisk does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;
use vbin_media::audiosocket::{serve, Inbound, ServerSettings};

/// What the test server saw per call: the inbound items and how the session ended.
type Log = Arc<Mutex<Vec<(Uuid, Vec<Inbound>, String)>>>;

/// A server that records what it receives and, when it gets DTMF `1`, plays `play` frames of
/// 20 ms at 8 kHz back.
async fn server(settings: ServerSettings, play: usize) -> (std::net::SocketAddr, Log) {
    let listener = vbin_media::audiosocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    tokio::spawn(serve(listener, settings, move |mut s| {
        let l = l.clone();
        async move {
            let mut got = Vec::new();
            let end = loop {
                match s.next().await {
                    None => break "hangup".to_string(),
                    Some(Err(e)) => break format!("error: {e}"),
                    Some(Ok(i)) => {
                        if i == Inbound::Dtmf('1') {
                            let p = s.player();
                            tokio::spawn(async move {
                                for n in 0..play {
                                    p.play(8_000, &[n as i16; 160]).await.unwrap();
                                }
                            });
                        }
                        got.push(i);
                    }
                }
            };
            l.lock().unwrap().push((s.call_id, got, end));
        }
    }));
    (addr, log)
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn audio(samples: &[i16]) -> Vec<u8> {
    let pcm: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    frame(0x10, &pcm)
}

async fn wait_log(log: &Log, n: usize) -> Vec<(Uuid, Vec<Inbound>, String)> {
    let t = Instant::now();
    loop {
        let l = log.lock().unwrap().clone();
        if l.len() >= n {
            return l;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "sessions so far: {}",
            l.len()
        );
        drop(l);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads frames until `n` audio frames arrived; returns their arrival times.
async fn read_audio(c: &mut TcpStream, n: usize) -> Vec<Instant> {
    let mut at = Vec::new();
    while at.len() < n {
        let mut h = [0u8; 3];
        c.read_exact(&mut h).await.unwrap();
        let len = u16::from_be_bytes([h[1], h[2]]) as usize;
        let mut p = vec![0; len];
        c.read_exact(&mut p).await.unwrap();
        assert_eq!((h[0], len), (0x10, 320));
        at.push(Instant::now());
    }
    at
}

#[tokio::test]
async fn a_call_streams_audio_and_dtmf_and_gets_paced_audio_back() {
    let (addr, log) = server(ServerSettings::default(), 25).await;
    let call = Uuid::new_v4();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&frame(0x01, call.as_bytes())).await.unwrap();
    for i in 0..10 {
        c.write_all(&audio(&[i; 160])).await.unwrap();
    }
    c.write_all(&frame(0x03, b"1")).await.unwrap();
    // 25 frames of 20 ms come back at real time: about 480 ms from the first to the last.
    let at = read_audio(&mut c, 25).await;
    let span = at[24] - at[0];
    assert!(
        span >= Duration::from_millis(460) && span < Duration::from_millis(700),
        "25 frames over {span:?}"
    );
    c.write_all(&frame(0x00, &[])).await.unwrap();
    let l = wait_log(&log, 1).await;
    let (id, got, end) = &l[0];
    assert_eq!((*id, end.as_str()), (call, "hangup"));
    assert_eq!(got.len(), 11);
    assert_eq!(
        got[3],
        Inbound::Audio {
            rate_hz: 8_000,
            samples: vec![3; 160]
        }
    );
    assert_eq!(got[10], Inbound::Dtmf('1'));
}

#[tokio::test]
async fn bad_starts_and_malformed_frames_close_the_connection_cleanly() {
    let settings = ServerSettings {
        uuid_timeout: Duration::from_millis(300),
        ..ServerSettings::default()
    };
    let (addr, log) = server(settings, 0).await;
    // Audio before the UUID; garbage; nothing at all: closed, no session.
    for first in [audio(&[1; 160]), vec![0x42, 0x42, 0x42, 0x42], vec![]] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&first).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("the server closes the connection")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    // A malformed frame in the middle of a call ends that session with an error.
    let call = Uuid::new_v4();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&frame(0x01, call.as_bytes())).await.unwrap();
    c.write_all(&audio(&[5; 160])).await.unwrap();
    c.write_all(&frame(0x10, &[1, 2, 3])).await.unwrap();
    let l = wait_log(&log, 1).await;
    assert_eq!(l.len(), 1, "only the call with a UUID became a session");
    let (id, got, end) = &l[0];
    assert_eq!((*id, got.len()), (call, 1));
    assert!(end.starts_with("error: malformed audio frame"), "{end}");
}

#[tokio::test]
async fn many_sessions_at_once() {
    let (addr, log) = server(ServerSettings::default(), 0).await;
    let sessions = 300;
    let clients: Vec<_> = (0..sessions)
        .map(|_| {
            tokio::spawn(async move {
                let call = Uuid::new_v4();
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(&frame(0x01, call.as_bytes())).await.unwrap();
                // One second of audio at real time.
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                for i in 0..50 {
                    tick.tick().await;
                    if let Err(e) = c.write_all(&audio(&[i; 160])).await {
                        panic!("write {i}: {e}")
                    }
                }
                c.write_all(&frame(0x00, &[])).await.unwrap();
                call
            })
        })
        .collect();
    let mut calls = Vec::new();
    for c in clients {
        match c.await {
            Ok(call) => calls.push(call),
            Err(e) => {
                let l = log.lock().unwrap().clone();
                let ends: Vec<_> = l
                    .iter()
                    .filter(|x| x.2 != "hangup")
                    .map(|x| (x.1.len(), x.2.clone()))
                    .collect();
                panic!("{e}; sessions ended early: {ends:?}");
            }
        }
    }
    let l = wait_log(&log, sessions).await;
    for call in calls {
        let (_, got, end) = l.iter().find(|(id, _, _)| *id == call).unwrap();
        assert_eq!((got.len(), end.as_str()), (50, "hangup"));
    }
}
