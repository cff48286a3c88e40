//! The conferences mixed in this process: one task per conference with members (or a
//! recording) here, running its [`Mix`] every 20 ms, publishing this process's partial sum
//! on core NATS and adding the partial sums other processes publish (see [`crate::mixer`]).
//!
//! A conference's recording is the full mix (every member on every process), taken by the
//! task of the one process that records it: that process needs no member of its own, since
//! its task hears the others' partial sums.

use crate::frame::{FRAME, FRAME_SAMPLES};
use crate::mixer::{limit, Mix};
use crate::port::PortEnd;
use crate::session::Recorder;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use vbin_event_schema::{CallId, ConferenceId, RecordingId};

/// How long a conference without members here keeps its task (members rejoining after a
/// takeover find it running).
const IDLE: Duration = Duration::from_secs(5);

enum Cmd {
    Add(CallId, PortEnd),
    Remove(CallId),
    Record(Box<Recorder>),
    StopRecording(RecordingId),
}

/// Where partial sums travel between processes.
#[derive(Clone)]
pub struct Mesh {
    /// Core NATS.
    pub client: async_nats::Client,
    /// `vbinmedia.<namespace>`: outside the event stream's subjects, so frames are never
    /// stored.
    pub prefix: String,
}

/// This process's conferences.
#[derive(Clone)]
pub struct Conferences {
    node: String,
    running: Arc<Mutex<HashMap<ConferenceId, mpsc::UnboundedSender<Cmd>>>>,
    mesh: Arc<std::sync::OnceLock<Mesh>>,
    /// The calls mixed here, by conference (what their transcriptions tap).
    members: Arc<Mutex<HashMap<ConferenceId, HashSet<CallId>>>>,
}

impl Conferences {
    /// Conferences of process `node`.
    pub fn new(node: String) -> Self {
        Self {
            node,
            running: Arc::default(),
            mesh: Arc::default(),
            members: Arc::default(),
        }
    }

    /// From now on, partial sums are exchanged over `mesh` (conferences started before mix
    /// their local members only).
    pub fn connect(&self, mesh: Mesh) {
        let _ = self.mesh.set(mesh);
    }

    /// Mixes `call` (the mixer's end of its port) into `conference`, starting the
    /// conference's task here if needed.
    pub fn add(&self, conference: ConferenceId, call: CallId, port: PortEnd) {
        self.members
            .lock()
            .expect("members")
            .entry(conference)
            .or_default()
            .insert(call);
        self.send(conference, Cmd::Add(call, port));
    }

    /// Sends `cmd` to the conference's task, starting it if needed.
    fn send(&self, conference: ConferenceId, cmd: Cmd) {
        let mut running = self.running.lock().expect("conferences");
        let tx = running.entry(conference).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            crate::runtime::media_runtime().spawn(self.clone().run(conference, rx));
            tx
        });
        let _ = tx.send(cmd);
    }

    /// Stops mixing `call` into `conference` (faded out).
    pub fn remove(&self, conference: ConferenceId, call: CallId) {
        let mut members = self.members.lock().expect("members");
        if let Some(m) = members.get_mut(&conference) {
            m.remove(&call);
            if m.is_empty() {
                members.remove(&conference);
            }
        }
        if let Some(tx) = self.running.lock().expect("conferences").get(&conference) {
            let _ = tx.send(Cmd::Remove(call));
        }
    }

    /// The calls of `conference` mixed here.
    pub fn members(&self, conference: ConferenceId) -> Vec<CallId> {
        self.members
            .lock()
            .expect("members")
            .get(&conference)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The conferences (and bridges across processes) with members mixed here.
    pub fn with_members(&self) -> Vec<ConferenceId> {
        self.members
            .lock()
            .expect("members")
            .keys()
            .copied()
            .collect()
    }

    /// Records the full mix of `conference` into `recorder` (mono, limited like what a member
    /// hears), from the next tick until [`Conferences::stop_recording`], a limit, or the
    /// conference's task ending.
    pub(crate) fn record(&self, conference: ConferenceId, recorder: Recorder) {
        self.send(conference, Cmd::Record(Box::new(recorder)));
    }

    /// Ends recording `id` of `conference` here (a no-op if it is not recorded here).
    pub fn stop_recording(&self, conference: ConferenceId, id: RecordingId) {
        if let Some(tx) = self.running.lock().expect("conferences").get(&conference) {
            let _ = tx.send(Cmd::StopRecording(id));
        }
    }

    /// The mesh, once connected.
    pub fn mesh(&self) -> Option<Mesh> {
        self.mesh.get().cloned()
    }

    /// Conferences mixed here.
    pub fn live(&self) -> usize {
        self.running.lock().expect("conferences").len()
    }

    async fn run(self, conference: ConferenceId, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut mix = Mix::default();
        let mesh = self.mesh.get().cloned();
        let subject = mesh
            .as_ref()
            .map(|m| format!("{}.mix.{conference}", m.prefix));
        // Other processes' partial sums, as (process, frame).
        let (remote_tx, mut remote) = mpsc::channel::<(String, Vec<i32>)>(256);
        let (out_tx, mut out) = mpsc::channel::<Vec<u8>>(16);
        let mut tasks = Vec::new();
        if let (Some(m), Some(subject)) = (mesh, subject) {
            match m.client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    let me = self.node.clone();
                    tasks.push(tokio::spawn(async move {
                        while let Some(msg) = sub.next().await {
                            if let Some((node, frame)) = decode(&msg.payload) {
                                if node != me {
                                    let _ = remote_tx.try_send((node, frame));
                                }
                            }
                        }
                    }));
                }
                Err(e) => {
                    tracing::warn!(%conference, error = %e, "conference: cannot hear other media processes")
                }
            }
            let client = m.client.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(bytes) = out.recv().await {
                    if client.publish(subject.clone(), bytes.into()).await.is_err() {
                        metrics::counter!("vbin_conference_frames_unsent_total").increment(1);
                    }
                }
            }));
        }
        metrics::gauge!("vbin_conferences_mixed").increment(1.0);
        let mut tick = tokio::time::interval(FRAME);
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut idle = 0u32;
        // Recordings taken here, with their limiter's gain.
        let mut recorders: BTreeMap<RecordingId, (Recorder, f32)> = BTreeMap::new();
        loop {
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    Some(Cmd::Add(call, port)) => mix.add(call, port),
                    Some(Cmd::Remove(call)) => mix.remove(call),
                    Some(Cmd::Record(r)) => {
                        recorders.entry(r.capture.id).or_insert((*r, 1.0));
                        idle = 0;
                    }
                    Some(Cmd::StopRecording(id)) => {
                        if let Some((r, _)) = recorders.remove(&id) {
                            r.end();
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    while let Ok((node, frame)) = remote.try_recv() {
                        mix.remote(&node).push(&frame);
                    }
                    mix.tick();
                    for (r, gain) in recorders.values_mut() {
                        r.push_mix(&limit(&mix.total, gain));
                    }
                    let over: Vec<RecordingId> = recorders
                        .iter()
                        .filter(|(_, (r, _))| r.over())
                        .map(|(id, _)| *id)
                        .collect();
                    for id in over {
                        if let Some((r, _)) = recorders.remove(&id) {
                            r.end();
                        }
                    }
                    if !mix.is_empty() {
                        idle = 0;
                        let _ = out_tx.try_send(encode(&self.node, &mix.local_sum));
                    } else if !recorders.is_empty() {
                        idle = 0;
                    } else {
                        idle += 1;
                        if FRAME * idle >= IDLE {
                            // Gone unless a member is being added right now (adds hold the
                            // registry's lock while they send).
                            let mut running = self.running.lock().expect("conferences");
                            match cmds.try_recv() {
                                Ok(Cmd::Add(call, port)) => {
                                    mix.add(call, port);
                                    idle = 0;
                                }
                                Ok(Cmd::Record(r)) => {
                                    recorders.insert(r.capture.id, (*r, 1.0));
                                    idle = 0;
                                }
                                Ok(Cmd::Remove(_) | Cmd::StopRecording(_)) => idle = 0,
                                Err(_) => {
                                    running.remove(&conference);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (_, (r, _)) in recorders {
            r.end();
        }
        for t in tasks {
            t.abort();
        }
        metrics::gauge!("vbin_conferences_mixed").decrement(1.0);
    }
}

/// `[node length][node][samples as i32 LE]`.
fn encode(node: &str, sum: &[i32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + node.len() + sum.len() * 4);
    b.push(node.len().min(255) as u8);
    b.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
    for v in sum {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn decode(b: &[u8]) -> Option<(String, Vec<i32>)> {
    let n = *b.first()? as usize;
    let node = std::str::from_utf8(b.get(1..1 + n)?).ok()?.to_string();
    let samples = b.get(1 + n..)?;
    if samples.len() != FRAME_SAMPLES * 4 {
        return None;
    }
    let frame = samples
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((node, frame))
}

#[cfg(test)]
mod tests {
    #[test]
    fn partial_sums_round_trip_and_bad_ones_are_dropped() {
        let sum: Vec<i32> = (0..super::FRAME_SAMPLES as i32)
            .map(|i| i * 1000 - 70_000)
            .collect();
        let b = super::encode("media-1", &sum);
        assert_eq!(super::decode(&b), Some(("media-1".into(), sum)));
        assert_eq!(super::decode(&b[..b.len() - 1]), None);
        assert_eq!(super::decode(&[]), None);
    }
}
