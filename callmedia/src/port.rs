//! Ports: how one media session's audio reaches another (a bridge between two calls).
//!
//! A [`PortEnd`] is one session's side of a two-way audio link: every tick the session sends
//! its far end's frame through it and mixes one received frame into what its far end hears.
//! Two sessions tick on their own intervals, so their phases differ and their clocks may
//! drift apart; each direction therefore goes through a small [`Jitter`] queue that starts
//! playing once [`PRIME_FRAMES`] frames wait, holds at most [`MAX_FRAMES`] (dropping the
//! oldest, counted) and gives silence when it runs dry (then primes again).

use crate::frame::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Frames that must wait before a queue plays (absorbs the two sessions' phase difference).
pub const PRIME_FRAMES: usize = 2;
/// Most frames a queue holds: beyond it the oldest is dropped (bounds the added delay).
pub const MAX_FRAMES: usize = 5;

struct Queue<T> {
    frames: VecDeque<Vec<T>>,
    playing: bool,
    dropped: u64,
    closed: bool,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            frames: VecDeque::new(),
            playing: false,
            dropped: 0,
            closed: false,
        }
    }
}

/// One direction of a link: frames pushed by one side and taken by the other (samples, or a
/// conference's partial sums).
pub struct Jitter<T = i16>(Arc<Mutex<Queue<T>>>);

impl<T> Clone for Jitter<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for Jitter<T> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<T: Clone> Jitter<T> {
    /// Queues a frame (dropping the oldest when full).
    pub fn push(&self, frame: &[T]) {
        let mut q = self.0.lock().expect("jitter");
        if q.closed {
            return;
        }
        if q.frames.len() >= MAX_FRAMES {
            q.frames.pop_front();
            q.dropped += 1;
            metrics::counter!("vbin_media_port_dropped_frames_total").increment(1);
        }
        q.frames.push_back(frame.to_vec());
    }

    /// The next frame to play, or `None` (silence) while priming or dry.
    pub fn pop(&self) -> Option<Vec<T>> {
        let mut q = self.0.lock().expect("jitter");
        if !q.playing {
            if q.frames.len() < PRIME_FRAMES {
                return None;
            }
            q.playing = true;
        }
        let f = q.frames.pop_front();
        if f.is_none() {
            q.playing = false;
        }
        f
    }

    /// Frames dropped so far because the taker fell behind.
    pub fn dropped(&self) -> u64 {
        self.0.lock().expect("jitter").dropped
    }

    /// Stops taking frames (the taker is gone); queued frames are dropped.
    fn close(&self) {
        let mut q = self.0.lock().expect("jitter");
        q.closed = true;
        q.frames.clear();
    }

    /// Whether the other side closed it.
    pub fn is_closed(&self) -> bool {
        self.0.lock().expect("jitter").closed
    }
}

/// One session's end of a link to another session.
pub struct PortEnd {
    /// What this side says: taken by the other side.
    out: Jitter,
    /// What the other side says: taken here.
    inp: Jitter,
    /// For logs and metrics: what the other side is.
    pub peer: String,
}

impl std::fmt::Debug for PortEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortEnd({})", self.peer)
    }
}

impl PortEnd {
    /// A port from its two queues (a remote link feeds `inp` and drains `out`).
    pub fn new(out: Jitter, inp: Jitter, peer: impl Into<String>) -> Self {
        Self {
            out,
            inp,
            peer: peer.into(),
        }
    }

    /// Sends this tick's frame to the other side.
    pub fn send(&self, frame: &[i16]) {
        self.out.push(frame);
    }

    /// The other side's frame for this tick, if any.
    pub fn recv(&self) -> Option<Vec<i16>> {
        self.inp.pop()
    }

    /// Adds the other side's frame for this tick (if any) into `mix`.
    pub fn mix_into(&self, mix: &mut [i32]) {
        if let Some(f) = self.inp.pop() {
            for (m, v) in mix.iter_mut().zip(f.iter().take(FRAME_SAMPLES)) {
                *m += *v as i32;
            }
        }
    }

    /// Whether the other side has gone (its end was dropped).
    pub fn peer_gone(&self) -> bool {
        self.out.is_closed()
    }
}

impl Drop for PortEnd {
    fn drop(&mut self) {
        // Nobody takes what the other side says any more, and it hears silence from here on.
        self.inp.close();
        self.out.close();
    }
}

/// Two cross-wired ends: what `a` sends `b` takes, and the other way round.
pub fn pair(a: impl Into<String>, b: impl Into<String>) -> (PortEnd, PortEnd) {
    let (ab, ba) = (Jitter::default(), Jitter::default());
    (
        PortEnd::new(ab.clone(), ba.clone(), b),
        PortEnd::new(ba, ab, a),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; FRAME_SAMPLES]
    }

    fn heard(p: &PortEnd) -> Option<i16> {
        let mut mix = vec![0i32; FRAME_SAMPLES];
        p.mix_into(&mut mix);
        (mix[0] != 0).then_some(mix[0] as i16)
    }

    #[test]
    fn each_side_hears_the_other_after_priming_and_never_itself() {
        let (a, b) = pair("a", "b");
        a.send(&frame(1));
        assert_eq!(heard(&b), None, "priming");
        assert_eq!(heard(&a), None, "a never hears itself");
        a.send(&frame(2));
        assert_eq!(heard(&b), Some(1));
        b.send(&frame(7));
        b.send(&frame(8));
        assert_eq!(heard(&a), Some(7));
        assert_eq!(heard(&a), Some(8));
        a.send(&frame(3));
        assert_eq!(heard(&b), Some(2));
        assert_eq!(heard(&b), Some(3));
        // Dry: silence, then it primes again.
        assert_eq!(heard(&b), None);
        a.send(&frame(4));
        assert_eq!(heard(&b), None);
    }

    #[test]
    fn a_fast_sender_is_bounded_and_its_drops_counted() {
        let (a, b) = pair("a", "b");
        // a ticks 1% faster than b for 10,000 frames.
        let mut sent = 0u64;
        for i in 0..10_000u64 {
            a.send(&frame(1));
            sent += 1;
            if i % 100 != 0 {
                heard(&b);
            }
            assert!(b.inp.0.lock().unwrap().frames.len() <= MAX_FRAMES);
        }
        assert!(b.inp.dropped() >= 90, "{}", b.inp.dropped());
        assert!(sent > 0);
    }

    #[test]
    fn a_dropped_end_silences_the_link() {
        let (a, b) = pair("a", "b");
        a.send(&frame(1));
        a.send(&frame(1));
        drop(a);
        assert!(b.peer_gone());
        assert_eq!(heard(&b), None);
    }
}
