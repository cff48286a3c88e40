//! Conference mixing: every member hears the sum of the others, never itself.
//!
//! Each media process mixes the members whose sessions it runs (a [`Mix`] per conference,
//! ticking every 20 ms in its own task). When members live on several processes, each
//! process publishes its members' partial sum every tick on core NATS
//! (`vbinmedia.<namespace>.mix.<conference>`, not the event stream: frames are never
//! stored) and adds the partial sums the others publish. A member hears
//! `own process's sum − its own contribution + the other processes' sums`. No process owns a
//! conference, so a process that dies takes only its own members' audio with it.
//!
//! The arithmetic is integer: a member's contribution is computed once per sample and
//! subtracted from the same total, so its own voice cancels exactly. A member's gain ramps
//! from 0 to 1 over its first frame and from 1 to 0 over its last (no click on join or
//! leave). What a member hears goes through a peak limiter (gain interpolated across the
//! frame, released over ~50 ms) with a clamp as the last guard, so sums of loud members
//! never wrap.

use crate::frame::FRAME_SAMPLES;
use crate::port::{Jitter, PortEnd};
use std::collections::BTreeMap;
use vbin_event_schema::CallId;

/// Full gain in Q15.
const UNITY: i32 = 1 << 15;
/// Per-frame release of the limiter toward unity (~50 ms to recover from a peak).
const RELEASE: f32 = 0.35;

struct Member {
    port: PortEnd,
    /// Gain at the start of the next frame and its target (Q15).
    gain: i32,
    target: i32,
    /// The limiter's gain at the end of the last frame.
    limiter: f32,
    /// This frame's contribution (gain applied).
    contribution: Vec<i32>,
}

/// One process's share of one conference.
#[derive(Default)]
pub struct Mix {
    members: BTreeMap<CallId, Member>,
    /// Other processes' partial sums, by process.
    remote: BTreeMap<String, Jitter<i32>>,
    /// The last partial sum (what this process publishes).
    pub local_sum: Vec<i32>,
    /// The full mix of the last tick (every member, every process): what a recording of the
    /// conference holds.
    pub total: Vec<i32>,
}

impl Mix {
    /// Members mixed here.
    pub fn len(&self) -> usize {
        self.members.values().filter(|m| m.target > 0).count()
    }

    /// Whether no member is mixed here (leaving ones included).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A member joins, faded in over its first frame.
    pub fn add(&mut self, call: CallId, port: PortEnd) {
        self.members.insert(
            call,
            Member {
                port,
                gain: 0,
                target: UNITY,
                limiter: 1.0,
                contribution: vec![0; FRAME_SAMPLES],
            },
        );
    }

    /// A member leaves, faded out over one more frame.
    pub fn remove(&mut self, call: CallId) {
        if let Some(m) = self.members.get_mut(&call) {
            m.target = 0;
        }
    }

    /// Whether `call` is mixed here.
    pub fn has(&self, call: CallId) -> bool {
        self.members.get(&call).is_some_and(|m| m.target > 0)
    }

    /// The partial sums of process `node` (another process's members).
    pub fn remote(&mut self, node: &str) -> Jitter<i32> {
        self.remote.entry(node.to_string()).or_default().clone()
    }

    /// One 20 ms step: takes a frame from every member, sends each the mix of the others.
    pub fn tick(&mut self) {
        let mut local = vec![0i32; FRAME_SAMPLES];
        for m in self.members.values_mut() {
            if m.port.peer_gone() {
                // Its session ended: it leaves without being told.
                m.target = 0;
            }
            let input = m.port.recv();
            // A joining member fades in over its first frame of audio, not over the silence
            // before its first frame arrives.
            let target = if input.is_none() && m.target > m.gain {
                m.gain
            } else {
                m.target
            };
            let step = (target - m.gain) / FRAME_SAMPLES as i32;
            for (i, c) in m.contribution.iter_mut().enumerate() {
                let g = if i + 1 == FRAME_SAMPLES {
                    target
                } else {
                    m.gain + step * (i as i32 + 1)
                };
                let x = input.as_ref().map_or(0, |f| f[i] as i32);
                *c = (x * g) >> 15;
            }
            m.gain = target;
            for (s, c) in local.iter_mut().zip(&m.contribution) {
                *s += c;
            }
        }
        let mut others = vec![0i32; FRAME_SAMPLES];
        for j in self.remote.values() {
            if let Some(f) = j.pop() {
                for (o, v) in others.iter_mut().zip(f) {
                    *o += v;
                }
            }
        }
        for m in self.members.values_mut() {
            let heard: Vec<i32> = local
                .iter()
                .zip(&m.contribution)
                .zip(&others)
                .map(|((t, c), o)| t - c + o)
                .collect();
            m.port.send(&limit(&heard, &mut m.limiter));
        }
        // Gone once faded out.
        self.members.retain(|_, m| m.target > 0 || m.gain > 0);
        self.total = local.iter().zip(&others).map(|(a, b)| a + b).collect();
        self.local_sum = local;
    }
}

/// `frame` scaled so that its peak fits 16 bits: the gain moves from `gain` (where the last
/// frame ended) to what this frame needs (at once when lower, released slowly when higher),
/// interpolated across the frame; a clamp catches what is left.
pub fn limit(frame: &[i32], gain: &mut f32) -> Vec<i16> {
    let peak = frame.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as f32;
    let need = if peak > i16::MAX as f32 {
        i16::MAX as f32 / peak
    } else {
        1.0
    };
    let end = if need < *gain {
        need
    } else {
        *gain + (need - *gain) * RELEASE
    };
    let start = *gain;
    *gain = end;
    let n = frame.len().max(1) as f32;
    frame
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            // Toward `end` within the frame; a frame that needs less gain than the last one
            // ended with gets it from its first sample (no overshoot while it ramps down).
            let g = if end < start {
                end
            } else {
                start + (end - start) * (i as f32 + 1.0) / n
            };
            (v as f32 * g)
                .round()
                .clamp(i16::MIN as f32, i16::MAX as f32) as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::pair;

    /// A member's session end and the mixer's end.
    fn member(mix: &mut Mix) -> (CallId, PortEnd) {
        let call = CallId::new();
        let (session, mixer) = pair(call.to_string(), "mixer");
        mix.add(call, mixer);
        (call, session)
    }

    fn sine(hz: f32, amp: f32, frame: usize) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f32 / 16_000.0;
                (amp * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    /// Power of `hz` in `x` (Goertzel), relative to a full-scale sine's.
    fn level_db(x: &[i16], hz: f32) -> f32 {
        let w = 2.0 * std::f32::consts::PI * hz / 16_000.0;
        let (mut s1, mut s2) = (0f32, 0f32);
        for &v in x {
            let s = v as f32 / 32768.0 + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
        let full = (x.len() as f32 / 2.0).powi(2);
        10.0 * (power / full).max(1e-20).log10()
    }

    /// What a member's session took from the mixer so far (in order).
    fn take(port: &PortEnd, into: &mut Vec<i16>) {
        while let Some(f) = port.recv() {
            into.extend(f);
        }
    }

    /// Runs `frames` ticks with each member saying its sine; returns what each heard.
    fn run(mix: &mut Mix, members: &[(CallId, PortEnd, f32, f32)], frames: usize) -> Vec<Vec<i16>> {
        let mut heard = vec![vec![]; members.len()];
        for f in 0..frames {
            for (_, port, hz, amp) in members {
                port.send(&sine(*hz, *amp, f));
            }
            mix.tick();
            for (i, (_, port, ..)) in members.iter().enumerate() {
                take(port, &mut heard[i]);
            }
        }
        heard
    }

    #[test]
    fn each_member_hears_the_others_and_not_itself() {
        let mut mix = Mix::default();
        let tones = [440.0, 1000.0, 1700.0];
        let members: Vec<_> = tones
            .iter()
            .map(|hz| {
                let (c, p) = member(&mut mix);
                (c, p, *hz, 8000.0)
            })
            .collect();
        let heard = run(&mut mix, &members, 100);
        for (i, h) in heard.iter().enumerate() {
            let h = &h[20 * FRAME_SAMPLES..];
            for (j, hz) in tones.iter().enumerate() {
                let db = level_db(h, *hz);
                if i == j {
                    assert!(db < -60.0, "member {i} hears itself at {db} dB");
                } else {
                    assert!(db > -20.0, "member {i} hears {j} at only {db} dB");
                }
            }
        }
    }

    #[test]
    fn full_scale_members_never_wrap_and_joins_and_leaves_have_no_step() {
        let mut mix = Mix::default();
        let loud: Vec<_> = (0..4)
            .map(|i| {
                let (c, p) = member(&mut mix);
                (c, p, 300.0 + 7.0 * i as f32, 32_000.0)
            })
            .collect();
        // Four in-phase-ish full-scale members: the sums are far beyond 16 bits.
        let heard = run(&mut mix, &loud, 50);
        for h in &heard {
            // No wrap-around: a wrapped sample jumps by ~65536 between neighbours.
            let jump = h
                .windows(2)
                .map(|w| (w[1] as i32 - w[0] as i32).abs())
                .max()
                .unwrap();
            assert!(jump < 20_000, "a jump of {jump}: wrapped");
        }
        // A member joining mid-sentence is faded in: what the other hears rises from silence
        // over one frame; leaving, it falls to silence over one frame, then it is gone.
        let mut mix = Mix::default();
        let (a, pa) = member(&mut mix);
        let (_, pb) = member(&mut mix);
        let constant = vec![10_000i16; FRAME_SAMPLES];
        let mut heard = vec![];
        for i in 0..12 {
            if i == 6 {
                mix.remove(a);
            }
            pa.send(&constant);
            mix.tick();
            take(&pb, &mut heard);
        }
        let start = heard.iter().position(|v| *v != 0).expect("b hears a");
        assert!(heard[start] < 100, "fades in from {}", heard[start]);
        let steps = heard
            .windows(2)
            .map(|w| (w[1] as i32 - w[0] as i32).abs())
            .max()
            .unwrap();
        assert!(steps < 100, "largest step {steps}: a click");
        assert!(
            heard[start + FRAME_SAMPLES..].iter().any(|v| *v > 9_900),
            "full level"
        );
        assert_eq!(*heard.last().unwrap(), 0, "faded out");
        assert!(!mix.has(a) && mix.len() == 1);
        mix.tick();
        assert_eq!(mix.members.len(), 1, "gone once faded out");
    }

    #[test]
    fn another_process_partial_sum_is_heard_by_every_local_member() {
        let mut mix = Mix::default();
        let (_, pa) = member(&mut mix);
        let remote = mix.remote("p2");
        for f in 0..10 {
            pa.send(&sine(440.0, 8000.0, f));
            remote.push(
                &sine(1000.0, 8000.0, f)
                    .iter()
                    .map(|v| *v as i32)
                    .collect::<Vec<_>>(),
            );
            mix.tick();
        }
        let mut heard = vec![];
        take(&pa, &mut heard);
        assert!(level_db(&heard, 1000.0) > -20.0);
        assert!(level_db(&heard, 440.0) < -60.0);
        // What this process publishes is its own members only: the full mix less it is
        // exactly one of the other process's frames.
        let others: Vec<i32> = mix
            .total
            .iter()
            .zip(&mix.local_sum)
            .map(|(t, l)| t - l)
            .collect();
        assert!((0..10).any(|f| others
            == sine(1000.0, 8000.0, f)
                .iter()
                .map(|v| *v as i32)
                .collect::<Vec<_>>()));
    }
}
