//! The media process: one media session per answered call ([`session`]), fed by a far end
//! ([`far`]; the sandbox's simulated person today), controlled through events.
//!
//! - A call with a flow or a sandbox script is answered (`call_progressing`), or one of its
//!   flow's media actions is executed: the session is started here, and this process claims
//!   the call in `media_sessions` (a lease it renews).
//! - `activeflow_action_executed` of a media action: the session carries it out (talk and beep
//!   once their audio is synthesised) and reports the end as `Complete{seq}`.
//! - `call_hungup`: the session ends and the claim is deleted.
//! - Crash: a claim whose lease ran out is taken over by a media process, which starts the
//!   session again and carries out the flow's pending media action again (a talk cut off is
//!   played again). [`hang_up_orphans`] hangs up a call nobody took over within the orphan
//!   timeout (cause `network_out_of_order`).

pub mod agents;
pub mod ai;
pub mod conference;
pub mod far;
pub mod frame;
pub mod mixer;
pub mod play;
pub mod port;
pub mod runtime;
pub mod session;
pub mod socket;

use chrono::Utc;
use far::{FarEnd, PersonStep, SandboxPerson, When};
use session::{Capture, Control, Execution, NewFar, RecChunk, Report, Session, Tap};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;
use vbin_app::{ExecError, Executor};
use vbin_bus::{Bus, ConsumerSpec, Route, Shared};
use vbin_domain::{
    Activeflow, ActiveflowCommand, Call, CallCommand, DomainError, HangupRequest, NewTranscribe,
    Recording, RecordingCommand, Transcribe, TranscribeCommand,
};
use vbin_event_schema::flow::{ActionKind, ActionResult, ActiveflowStatus, SandboxScript};
use vbin_event_schema::views::{CallView, RecordingView, ReferenceView, TranscribeView};
use vbin_event_schema::{
    ActiveflowEvent, ActiveflowId, AicallEvent, AicallId, CallEvent, CallId, CallStatus,
    ConferenceEvent, ConferenceId, CustomerId, HangupCause, MediaReference, PublishedEvent,
    QueueEvent, RecordingEvent, RecordingId, RecordingLimits, RecordingStatus, TranscribeDirection,
    TranscribeEvent, TranscribeId,
};
use vbin_eventlog::CommandMeta;
use vbin_media::tts::{Speech, TtsProvider, TtsRequest};
use vbin_storage::Store;
use vbin_transcription::Transcriber;

/// Durable consumer of the call events of [`CALLS_CONSUMER`], [`BRIDGES_CONSUMER`] and
/// [`GREETINGS_CONSUMER`] (routes of one shared consumer, [`vbin_bus::Shared`]).
pub const CALL_EVENTS_CONSUMER: &str = "media-call-events";
/// Route of calls answered and ended (a session per answered call).
pub const CALLS_CONSUMER: &str = "media-calls";
/// Durable consumer of queue calls waiting (wait music) and leaving the wait.
pub const QUEUES_CONSUMER: &str = "media-queues";
/// Durable consumer of conference members joining and leaving.
pub const CONFERENCES_CONSUMER: &str = "media-conferences";
/// Route of bridges (`call_bridged`, `call_chain_ended`), the dialing call's side.
pub const BRIDGES_CONSUMER: &str = "media-bridges";
/// The same events for the bridged leg's side.
pub const BRIDGE_LEGS_CONSUMER: &str = "media-bridge-legs";

/// Which call of a bridge a consumer looks after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The call that dialed.
    Master,
    /// The leg bridged to it.
    Leg,
}
/// Durable consumer of activeflow events.
pub const ACTIONS_CONSUMER: &str = "media-actions";
/// Durable consumer of recording events.
pub const RECORDINGS_CONSUMER: &str = "media-recordings";
/// Durable consumer of transcription starts and ends.
pub const TRANSCRIBES_CONSUMER: &str = "media-transcribes";
/// Durable consumer of AI conversation starts and ends.
pub const AICALLS_CONSUMER: &str = "media-aicalls";
/// Route of call creations (greetings made while calls ring).
pub const GREETINGS_CONSUMER: &str = "media-greetings";

/// Settings of the media process.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This process's name in `media_sessions.owner`.
    pub node: String,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            node: format!("media-{}", Uuid::now_v7()),
            lease: Duration::from_secs(6),
        }
    }
}

/// How often a conference's recording checks that its conference has not ended (it ends
/// then, even if the stop request went to a process that could not reach it).
const CONFERENCE_ENDED_CHECK: Duration = Duration::from_secs(5);

/// Why handling an event failed (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The event did not decode.
    #[error("undecodable event")]
    Decode(#[from] vbin_event_schema::DecodeError),
    /// A command or load failed.
    #[error("command failed")]
    Exec(#[from] ExecError),
    /// Postgres failed.
    #[error("database")]
    Database(#[from] sqlx::Error),
    /// Another live process owns the call's session.
    #[error("call {0} is owned by media process {1}")]
    OwnedElsewhere(CallId, String),
    /// This process is draining: it keeps its sessions and starts no new ones (the event goes
    /// back for another process).
    #[error("media process draining: call {0} is left to another media process")]
    Draining(CallId),
    /// Asking the other media processes failed (not: nobody answered).
    #[error("media mesh: {0}")]
    Mesh(String),
}

struct Handle {
    control: mpsc::Sender<Control>,
}

/// A conference member's stream to one of its conference's transcriptions.
type MemberTap = (CallId, TranscribeId);

/// The media process.
#[derive(Clone)]
pub struct Media {
    pool: sqlx::PgPool,
    executor: Executor,
    tts: Arc<dyn TtsProvider>,
    settings: Arc<Settings>,
    sessions: Arc<Mutex<HashMap<CallId, Handle>>>,
    /// One start at a time per call (starts of different calls run concurrently).
    starting: Arc<Mutex<HashMap<CallId, Arc<tokio::sync::Mutex<()>>>>>,
    store: Option<Store>,
    capturing: Arc<Mutex<std::collections::HashSet<RecordingId>>>,
    player: play::Player,
    transcriber: Option<Transcriber>,
    /// Transcriptions fed by this process's sessions (started once, however often told).
    tapped: Arc<Mutex<std::collections::HashSet<(CallId, TranscribeId)>>>,
    /// One [`Media::tap`] at a time, so that a tap finding its transcription in `tapped` knows
    /// the streams are already on the session's control channel (a flow's `transcribe_start`
    /// completes only then, and the `transcribe_started` consumer may be tapping the same one).
    tapping: Arc<tokio::sync::Mutex<()>>,
    /// What AI conversations use (None: they fail with that reason).
    agent_kit: Option<Arc<agents::AgentKit>>,
    /// The conversations running here: their call and their input.
    agents: Arc<Mutex<HashMap<AicallId, agents::Running>>>,
    /// Greetings made while calls ring, by call.
    greetings: Arc<Mutex<HashMap<CallId, agents::Prepared>>>,
    /// The conferences whose members here this process mixes.
    conferences: conference::Conferences,
    /// Draining: no new sessions from events (see [`Media::drain`]).
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// Bridges whose two sessions are cross-wired here, by master call.
    paired: Arc<Mutex<std::collections::HashSet<CallId>>>,
    /// The conference transcriptions' streams of members here, by conference.
    conference_taps: Arc<Mutex<HashMap<ConferenceId, HashSet<MemberTap>>>>,
    /// One reconciliation of conference taps at a time.
    reconciling: Arc<tokio::sync::Mutex<()>>,
}

fn meta(part_event: Uuid, correlation: &str, customer: CustomerId) -> CommandMeta {
    let mut meta = CommandMeta::caused_by("media", part_event, correlation);
    meta.customer_id = Some(customer.as_uuid());
    meta
}

impl Media {
    /// A media process speaking with `tts`, transcribing with `transcriber`.
    pub fn new(
        pool: sqlx::PgPool,
        executor: Executor,
        tts: Arc<dyn TtsProvider>,
        transcriber: Option<Transcriber>,
        store: Option<Store>,
        policy: vbin_netguard::AddressPolicy,
        settings: Settings,
    ) -> Self {
        Self {
            pool,
            executor,
            tts,
            sessions: Arc::default(),
            starting: Arc::default(),
            store,
            capturing: Arc::default(),
            // Up to ~30 minutes of fetched audio.
            player: play::Player::new(policy, 16_000 * 60 * 30),
            transcriber,
            tapped: Arc::default(),
            tapping: Arc::default(),
            agent_kit: None,
            agents: Arc::default(),
            greetings: Arc::default(),
            conferences: conference::Conferences::new(settings.node.clone()),
            draining: Arc::default(),
            paired: Arc::default(),
            conference_taps: Arc::default(),
            reconciling: Arc::default(),
            settings: Arc::new(settings),
        }
    }

    /// The same, running AI conversations with `kit`.
    pub fn with_agents(mut self, kit: agents::AgentKit) -> Self {
        self.agent_kit = Some(Arc::new(kit));
        self
    }

    /// Drains this process (rolling deploys, moving load away): it keeps running its
    /// sessions, but starts and takes over no others; events for them go back to the other
    /// media processes. A transport's own connection (an AudioSocket or a SIP call's RTP
    /// reaching this process) still gets its session here.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(node = %self.settings.node, "media process draining: no new sessions");
    }

    /// Live sessions in this process.
    pub fn live(&self) -> usize {
        self.sessions.lock().expect("sessions").len()
    }

    /// Runs the consumers and the lease keeper until `shutdown`.
    pub async fn run(self, bus: Bus, shutdown: impl std::future::Future<Output = ()>) {
        self.conferences.connect(conference::Mesh {
            client: bus.client.clone(),
            prefix: bus.namespace().prefix().replacen("vbin.", "vbinmedia.", 1),
        });
        let mut group = vbin_bus::Group::new(bus);
        group.task(|stop| self.clone().hear_taps_changing(stop));
        let (calls, bridges, greetings) = (self.clone(), self.clone(), self.clone());
        group
            // The call events this process handles on its own: one delivery for three routes
            // (their types do not overlap).
            .shared(
                Shared::new::<CallEvent>(CALL_EVENTS_CONSUMER)
                    .with_route(
                        Route::of::<CallEvent, _, _, _>(
                            CALLS_CONSUMER,
                            &[CallEvent::CALL_PROGRESSING, CallEvent::CALL_HUNGUP],
                            move |e| calls.clone().on_call(e),
                        )
                        .lanes(16),
                    )
                    .with_route(
                        Route::of::<CallEvent, _, _, _>(
                            BRIDGES_CONSUMER,
                            &[CallEvent::CALL_BRIDGED, CallEvent::CALL_CHAIN_ENDED],
                            move |e| bridges.clone().on_bridge(e, Side::Master),
                        )
                        .lanes(8),
                    )
                    .with_route(
                        Route::of::<CallEvent, _, _, _>(
                            GREETINGS_CONSUMER,
                            &[CallEvent::CALL_CREATED],
                            move |e| greetings.clone().prepare_greeting(e),
                        )
                        .lanes(8),
                    ),
            )
            // A bridge's other side: its own consumer, as the two sides may live in two media
            // processes and each event is delivered again until it reaches its side's owner
            // (in one shared consumer, each process would keep failing the other's side).
            .consumer(
                ConsumerSpec::for_events_of::<CallEvent>(
                    BRIDGE_LEGS_CONSUMER,
                    &[CallEvent::CALL_BRIDGED, CallEvent::CALL_CHAIN_ENDED],
                )
                .lanes(8),
                |e| self.clone().on_bridge(e, Side::Leg),
            )
            .consumer(
                ConsumerSpec::for_events_of::<QueueEvent>(
                    QUEUES_CONSUMER,
                    &[
                        QueueEvent::QUEUECALL_JOINED,
                        QueueEvent::QUEUECALL_REQUEUED,
                        QueueEvent::QUEUECALL_SERVED,
                        QueueEvent::QUEUECALL_ABANDONED,
                        QueueEvent::QUEUECALL_DONE,
                    ],
                )
                .lanes(8),
                |e| self.clone().on_queuecall(e),
            )
            .consumer(
                ConsumerSpec::for_events_of::<ConferenceEvent>(
                    CONFERENCES_CONSUMER,
                    &[
                        ConferenceEvent::CONFERENCECALL_JOINED,
                        ConferenceEvent::CONFERENCECALL_LEFT,
                    ],
                )
                .lanes(8),
                |e| self.clone().on_conference(e),
            )
            .consumer(
                ConsumerSpec::for_events_of::<ActiveflowEvent>(
                    ACTIONS_CONSUMER,
                    &[ActiveflowEvent::ACTIVEFLOW_ACTION_EXECUTED],
                )
                .lanes(16),
                |e| self.clone().on_action(e),
            )
            .consumer(
                ConsumerSpec::for_events_of::<RecordingEvent>(
                    RECORDINGS_CONSUMER,
                    &[
                        RecordingEvent::RECORDING_STARTED,
                        RecordingEvent::RECORDING_STOP_REQUESTED,
                    ],
                )
                .lanes(8),
                |e| self.clone().on_recording(e),
            )
            .consumer(
                ConsumerSpec::for_events_of::<TranscribeEvent>(
                    TRANSCRIBES_CONSUMER,
                    &[
                        TranscribeEvent::TRANSCRIBE_STARTED,
                        TranscribeEvent::TRANSCRIBE_COMPLETED,
                    ],
                )
                .lanes(8),
                |e| self.clone().on_transcribe(e),
            )
            .consumer(
                ConsumerSpec::for_events_of::<AicallEvent>(
                    AICALLS_CONSUMER,
                    &[
                        AicallEvent::AICALL_CREATED,
                        AicallEvent::AICALL_STATUS_TERMINATED,
                    ],
                )
                .lanes(8),
                |e| self.clone().on_aicall(e),
            )
            .task(|stop| self.clone().keep_leases(stop));
        group.run(shutdown).await;
        let handles: Vec<Handle> = self
            .sessions
            .lock()
            .expect("sessions")
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in handles {
            let _ = h.control.try_send(Control::Stop);
        }
    }

    async fn on_call(self, e: PublishedEvent) -> Result<(), MediaError> {
        let call = CallId(e.aggregate_id);
        match e.decode::<CallEvent>()? {
            CallEvent::CallProgressing { .. } => {
                let view = e.view::<CallView>()?;
                if view.activeflow_id.is_some()
                    || view.sandbox.is_some()
                    || view.master_call_id.is_some()
                {
                    self.ensure(call, CustomerId(e.customer_id)).await?;
                }
            }
            // `ensure` claims only a call that is progressing: one that was never answered
            // has no claim to release.
            CallEvent::CallHungup { status, .. } => self.end(call, status.was_answered()).await?,
            _ => {}
        }
        Ok(())
    }

    /// One side of a bridge (`side`: the master's or the leg's; each has its own consumer,
    /// so each reaches the process running that side's session). When both sessions run here
    /// they are cross-wired through a port (bit-exact, no extra task); otherwise this side is
    /// mixed with the other through the conference mesh, keyed by the master call (a bridge
    /// is a conference of two). The chain's end unlinks each side.
    async fn on_bridge(self, e: PublishedEvent, side: Side) -> Result<(), MediaError> {
        let master = CallId(e.aggregate_id);
        let customer = CustomerId(e.customer_id);
        let mesh_key = ConferenceId(master.as_uuid());
        match e.decode::<CallEvent>()? {
            CallEvent::CallBridged { peer_call_id, .. } => {
                let (mine, other) = match side {
                    Side::Master => (master, peer_call_id),
                    Side::Leg => (peer_call_id, master),
                };
                let Some(here) = self.ensure(mine, customer).await? else {
                    // Ended meanwhile: nothing to bridge.
                    return Ok(());
                };
                if let Some(there) = self.live_control(other) {
                    // Both here: one port, made once (the other side's consumer may come too).
                    if !self.paired.lock().expect("paired").insert(master) {
                        return Ok(());
                    }
                    self.conferences.remove(mesh_key, mine);
                    self.conferences.remove(mesh_key, other);
                    let (pa, pb) = port::pair(mine.to_string(), other.to_string());
                    let _ = here.send(Control::Link(pa)).await;
                    let _ = there.send(Control::Link(pb)).await;
                    metrics::counter!("vbin_media_bridges_total", "kind" => "local").increment(1);
                    tracing::info!(call = %master, peer = %peer_call_id, "bridged");
                } else {
                    let (session_end, mixer_end) =
                        port::pair(mine.to_string(), format!("bridge {master}"));
                    self.conferences.add(mesh_key, mine, mixer_end);
                    let _ = here.send(Control::Link(session_end)).await;
                    metrics::counter!("vbin_media_bridges_total", "kind" => "remote").increment(1);
                    tracing::info!(call = %mine, bridge = %master, "bridged to a session of another media process");
                }
            }
            CallEvent::CallChainEnded {
                bridged_call_id: Some(peer),
                ..
            } => {
                let mine = match side {
                    Side::Master => master,
                    Side::Leg => peer,
                };
                self.paired.lock().expect("paired").remove(&master);
                self.conferences.remove(mesh_key, mine);
                self.tell(mine, Control::Unlink).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A call waits in a queue: its session plays the queue's wait flow over and over until
    /// an agent takes it or it leaves.
    async fn on_queuecall(self, e: PublishedEvent) -> Result<(), MediaError> {
        let customer = CustomerId(e.customer_id);
        let (call, waits) = match e.decode::<QueueEvent>()? {
            QueueEvent::QueuecallJoined { call, .. }
            | QueueEvent::QueuecallRequeued { call, .. } => (call.call_id, true),
            QueueEvent::QueuecallServed { call, .. }
            | QueueEvent::QueuecallAbandoned { call, .. }
            | QueueEvent::QueuecallDone { call, .. } => (call.call_id, false),
            _ => return Ok(()),
        };
        if !waits {
            self.tell(call, Control::Unhold).await?;
            return Ok(());
        }
        let Some(flow) = self
            .executor
            .load::<vbin_domain::Queue>(e.aggregate_id, Some(customer))
            .await?
            .and_then(|q| q.wait_flow_id)
        else {
            return Ok(());
        };
        let Some(control) = self.ensure(call, customer).await? else {
            return Ok(());
        };
        let Some(flow) = self
            .executor
            .load::<vbin_domain::Flow>(flow.as_uuid(), Some(customer))
            .await?
        else {
            tracing::warn!(%call, %flow, "queue wait flow not found: waiting in silence");
            return Ok(());
        };
        let music = self.render(&flow.actions).await;
        let _ = control.send(Control::Hold(music.into())).await;
        Ok(())
    }

    /// The audio of a wait flow's talks, plays, beeps and sleeps, one after the other (at most
    /// ten minutes; what cannot be rendered is left out, logged).
    async fn render(&self, actions: &[vbin_event_schema::flow::Action]) -> Vec<i16> {
        const MAX: usize = 16_000 * 600;
        let mut out: Vec<i16> = Vec::new();
        for a in actions {
            match &a.kind {
                ActionKind::Talk(t) => {
                    let req = TtsRequest {
                        text: t.text.clone(),
                        language: t.language.clone(),
                        voice: t.voice_id.clone(),
                    };
                    match self.tts.synthesize(&req).await {
                        Ok(speech) => out.extend_from_slice(&speech),
                        Err(e) => tracing::warn!(error = %e, "wait flow: talk not synthesised"),
                    }
                }
                ActionKind::Play(p) => {
                    for url in &p.stream_urls {
                        match self.player.clip(url).await {
                            Ok(clip) => out.extend_from_slice(&clip),
                            Err(e) => tracing::warn!(error = %e, "wait flow: play not fetched"),
                        }
                    }
                }
                ActionKind::Beep(_) => out.extend_from_slice(&beep()),
                ActionKind::Sleep(s) => {
                    out.resize(out.len() + 16 * s.duration as usize, 0);
                }
                _ => {}
            }
            if out.len() >= MAX {
                out.truncate(MAX);
                break;
            }
        }
        out
    }

    /// A member joined: its session (claimed here, or the event goes back for the process
    /// that runs it) is linked to this process's mix of the conference. A member left: it is
    /// unlinked and faded out.
    async fn on_conference(self, e: PublishedEvent) -> Result<(), MediaError> {
        let conference = ConferenceId(e.aggregate_id);
        let customer = CustomerId(e.customer_id);
        match e.decode::<ConferenceEvent>()? {
            ConferenceEvent::ConferencecallJoined { member } => {
                self.join_conference(conference, member.call_id, customer)
                    .await?;
            }
            ConferenceEvent::ConferencecallLeft { member, .. } => {
                self.conferences.remove(conference, member.call_id);
                self.reconcile_conference_taps(&[conference]).await;
                self.tell(member.call_id, Control::Unlink).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Links the call's session (started here if needed) to this process's mix of
    /// `conference`.
    async fn join_conference(
        &self,
        conference: ConferenceId,
        call: CallId,
        customer: CustomerId,
    ) -> Result<(), MediaError> {
        let Some(control) = self.ensure(call, customer).await? else {
            // Not answered, or ended: nothing to mix.
            return Ok(());
        };
        let (session_end, mixer_end) =
            port::pair(call.to_string(), format!("conference {conference}"));
        self.conferences.add(conference, call, mixer_end);
        let _ = control.send(Control::Link(session_end)).await;
        tracing::info!(%call, %conference, "mixed into the conference");
        self.reconcile_conference_taps(&[conference]).await;
        Ok(())
    }

    /// Starts and stops the streams of the conferences' transcriptions for their members
    /// here: each running transcription of a conference hears every member mixed here (what
    /// it says), from its joining to its leaving. Run when a member joins or leaves here, when
    /// a conference's transcription starts or completes (any process may handle that event,
    /// so it tells every media process over the mesh), and every lease renewal (the mesh is
    /// not durable: what a process missed is caught up then).
    async fn reconcile_conference_taps(&self, conferences: &[ConferenceId]) {
        if conferences.is_empty() {
            return;
        }
        let _one = self.reconciling.lock().await;
        let ids: Vec<Uuid> = conferences.iter().map(|c| c.as_uuid()).collect();
        // Running transcriptions by what they listen to (here: conferences' ids).
        let rows: Vec<(Uuid, Uuid, Uuid, String)> = match sqlx::query_as(
            "SELECT call_id, transcribe_id, customer_id, language FROM transcribe_calls \
             WHERE call_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "looking up conference transcriptions failed; retried at the next lease renewal");
                return;
            }
        };
        for &conference in conferences {
            let running: Vec<&(Uuid, Uuid, Uuid, String)> = rows
                .iter()
                .filter(|r| r.0 == conference.as_uuid())
                .collect();
            let members = self.conferences.members(conference);
            let want: HashSet<MemberTap> = members
                .iter()
                .flat_map(|m| running.iter().map(move |r| (*m, TranscribeId(r.1))))
                .collect();
            // What still streams (a session that ended or was taken over lost its streams).
            let had: HashSet<MemberTap> = {
                let tapped = self.tapped.lock().expect("tapped");
                self.conference_taps
                    .lock()
                    .expect("conference taps")
                    .remove(&conference)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|k| tapped.contains(k))
                    .collect()
            };
            for &(member, id) in had.difference(&want) {
                self.tapped.lock().expect("tapped").remove(&(member, id));
                if let Some(control) = self.control_of(member) {
                    let _ = control.send(Control::Untap(id)).await;
                }
            }
            let mut now = had.intersection(&want).copied().collect::<HashSet<_>>();
            for &(member, id) in want.difference(&had) {
                let Some(r) = running.iter().find(|r| r.1 == id.as_uuid()) else {
                    continue;
                };
                if self.tap_member(member, CustomerId(r.2), id, &r.3).await {
                    now.insert((member, id));
                }
            }
            if !now.is_empty() {
                self.conference_taps
                    .lock()
                    .expect("conference taps")
                    .insert(conference, now);
            }
        }
    }

    /// Streams what conference member `member` (its session here) says to transcription `id`.
    async fn tap_member(
        &self,
        member: CallId,
        customer: CustomerId,
        id: TranscribeId,
        language: &str,
    ) -> bool {
        let (Some(t), Some(control)) = (&self.transcriber, self.control_of(member)) else {
            if self.transcriber.is_none() {
                tracing::warn!(call = %member, transcribe_id = %id, "no speech-to-text in this media process; not transcribing");
            }
            return false;
        };
        // Its transcripts are timed from the transcription's start.
        let offset_ms = match self
            .executor
            .load::<vbin_domain::Transcribe>(id.as_uuid(), Some(customer))
            .await
        {
            Ok(Some(tr)) => tr
                .tm_create
                .map_or(0, |at| (Utc::now() - at).num_milliseconds().max(0) as u64),
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(transcribe_id = %id, error = %vbin_bus::Chain(&e), "cannot load the transcription; not tapping");
                return false;
            }
        };
        match t.start_member(member, customer, id, language, offset_ms) {
            Ok(feed) => {
                self.tapped.lock().expect("tapped").insert((member, id));
                let side = vbin_event_schema::TranscriptDirection::In;
                let _ = control.send(Control::Tap(Tap { id, side, feed })).await;
                true
            }
            Err(e) => {
                tracing::error!(call = %member, transcribe_id = %id, error = %vbin_bus::Chain(&e), "starting speech-to-text failed");
                false
            }
        }
    }

    /// The mesh subject on which a conference's transcriptions changing is told.
    fn taps_subject(mesh: &conference::Mesh) -> String {
        format!("{}.ctl.transcribes", mesh.prefix)
    }

    /// Tells every media process that `conference`'s transcriptions changed. This process
    /// hears its own message like the others (`hear_taps_changing`); without the mesh it
    /// reconciles at once.
    async fn tell_taps_changed(&self, conference: ConferenceId) {
        if let Some(mesh) = self.conferences.mesh() {
            let payload = conference.as_uuid().as_bytes().to_vec();
            match mesh
                .client
                .publish(Self::taps_subject(&mesh), payload.into())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(%conference, error = %e, "cannot tell the media processes a conference transcription changed; they catch up at their next lease renewal");
                }
            }
        }
        self.reconcile_conference_taps(&[conference]).await;
    }

    /// Hears other processes telling that a conference's transcriptions changed.
    async fn hear_taps_changing(self, shutdown: impl std::future::Future<Output = ()>) {
        let Some(mesh) = self.conferences.mesh() else {
            return;
        };
        let mut sub = match mesh.client.subscribe(Self::taps_subject(&mesh)).await {
            Ok(sub) => sub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hear conference transcriptions changing; caught up at lease renewals only");
                return;
            }
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                m = futures::StreamExt::next(&mut sub) => {
                    let Some(m) = m else { return };
                    let Ok(id) = Uuid::from_slice(&m.payload) else { continue };
                    let conference = ConferenceId(id);
                    if !self.conferences.members(conference).is_empty() {
                        self.reconcile_conference_taps(&[conference]).await;
                    }
                }
            }
        }
    }

    /// Tells the call's session `c` if it runs here (true). A session another process runs
    /// with a live lease must hear it there: `OwnedElsewhere`, so the event goes back for that
    /// process. False: no process runs it (it ended).
    async fn tell(&self, call: CallId, c: Control) -> Result<bool, MediaError> {
        if let Some(control) = self.control_of(call) {
            let _ = control.send(c).await;
            return Ok(true);
        }
        self.not_elsewhere(call).await?;
        Ok(false)
    }

    /// `OwnedElsewhere` if another process runs the call's session with a live lease (the
    /// event must go back for it).
    async fn not_elsewhere(&self, call: CallId) -> Result<(), MediaError> {
        let other: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM media_sessions \
             WHERE call_id = $1 AND owner <> $2 AND lease_until > now()",
        )
        .bind(call.as_uuid())
        .bind(&self.settings.node)
        .fetch_optional(&self.pool)
        .await?;
        match other {
            Some(other) => Err(MediaError::OwnedElsewhere(call, other)),
            None => Ok(()),
        }
    }

    async fn on_action(self, e: PublishedEvent) -> Result<(), MediaError> {
        let ActiveflowEvent::ActiveflowActionExecuted { seq, action, .. } =
            e.decode::<ActiveflowEvent>()?
        else {
            return Ok(());
        };
        if !action.kind.is_media() {
            return Ok(());
        }
        let Some(call) = e.view::<ReferenceView>()?.reference_id else {
            return Ok(());
        };
        let exec = Execution {
            activeflow: ActiveflowId(e.aggregate_id),
            seq,
        };
        let customer = CustomerId(e.customer_id);
        if let ActionKind::TranscribeStart(t) = &action.kind {
            return self.transcribe_start(call, customer, exec, t).await;
        }
        let Some(control) = self.ensure(call, customer).await? else {
            // The call is not answered or has ended: the action cannot run; say so.
            let result = ActionResult {
                error: Some("the call has no media (not answered or ended)".into()),
                ..Default::default()
            };
            return self.complete(customer, exec, result).await;
        };
        self.dispatch(control, call, customer, exec, action.kind)
            .await;
        Ok(())
    }

    /// Hands a media action to its session (synthesising speech first).
    async fn dispatch(
        &self,
        control: mpsc::Sender<Control>,
        call: CallId,
        customer: CustomerId,
        exec: Execution,
        kind: ActionKind,
    ) {
        match kind {
            ActionKind::Talk(t) => {
                let done = (!t.is_async).then_some(exec);
                let req = TtsRequest {
                    text: t.text,
                    language: t.language,
                    voice: t.voice_id,
                };
                let me = self.clone();
                tokio::spawn(async move {
                    match me.tts.synthesize(&req).await {
                        Ok(speech) => {
                            let _ = control.send(Control::Play(done, speech)).await;
                        }
                        Err(err) => {
                            tracing::warn!(activeflow = %exec.activeflow, seq = exec.seq, error = %err, "talk: synthesis failed");
                            if let Some(exec) = done {
                                let result = ActionResult {
                                    error: Some(format!("talk: {err}")),
                                    ..Default::default()
                                };
                                let _ = me.complete(customer, exec, result).await;
                            }
                        }
                    }
                });
            }
            ActionKind::Beep(_) => {
                let _ = control.send(Control::Play(Some(exec), beep())).await;
            }
            ActionKind::Play(p) => {
                let me = self.clone();
                tokio::spawn(async move {
                    let mut all: Vec<i16> = Vec::new();
                    let mut errors = Vec::new();
                    for url in &p.stream_urls {
                        match me.player.clip(url).await {
                            Ok(clip) => all.extend_from_slice(&clip),
                            Err(e) => errors.push(e),
                        }
                    }
                    if !errors.is_empty() {
                        tracing::warn!(activeflow = %exec.activeflow, seq = exec.seq, errors = ?errors, "play: not every file could be played");
                    }
                    if all.is_empty() {
                        let result = ActionResult {
                            error: Some(format!("play: {}", errors.join("; "))),
                            ..Default::default()
                        };
                        let _ = me.complete(customer, exec, result).await;
                    } else if errors.is_empty() {
                        let _ = control.send(Control::Play(Some(exec), all.into())).await;
                    } else {
                        // What could be fetched is played; the failed URLs are the error.
                        let error = format!("play: {}", errors.join("; "));
                        let _ = control
                            .send(Control::PlayPartly(exec, all.into(), error))
                            .await;
                    }
                });
            }
            ActionKind::RecordingStart(r) => {
                // One recording per execution: a redelivered or re-executed action finds it.
                let id = RecordingId(Uuid::new_v5(
                    &exec.activeflow.as_uuid(),
                    &exec.seq.to_be_bytes(),
                ));
                let limits = RecordingLimits {
                    duration_ms: r.duration,
                    end_of_silence_ms: r.end_of_silence,
                    end_of_key: r.end_of_key,
                };
                let result = match self
                    .start_recording(&control, customer, call, id, limits)
                    .await
                {
                    Ok(()) => {
                        if r.beep_start {
                            let _ = control.send(Control::Play(None, beep())).await;
                        }
                        ActionResult::default()
                    }
                    Err(e) => ActionResult {
                        error: Some(format!("recording_start: {e}")),
                        ..Default::default()
                    },
                };
                if let Err(e) = self.complete(customer, exec, result).await {
                    tracing::warn!(activeflow = %exec.activeflow, seq = exec.seq, error = %vbin_bus::Chain(&e), "recording_start: reporting its end failed");
                }
            }
            ActionKind::RecordingStop(_) => {
                let _ = control.send(Control::StopRecordings(exec)).await;
            }
            ActionKind::TranscribeStart(t) => {
                if let Err(e) = self.transcribe_start(call, customer, exec, &t).await {
                    tracing::warn!(activeflow = %exec.activeflow, seq = exec.seq, error = %vbin_bus::Chain(&e), "transcribe_start failed");
                }
            }
            kind => {
                let _ = control.send(Control::Execute(exec, kind)).await;
            }
        }
    }

    /// Carries out a `transcribe_start`: starts the execution's transcription of the call
    /// (its id follows from the execution, so a redelivery starts none twice) and taps it
    /// before the execution completes. The tap goes down the session's control channel
    /// ahead of the next action's audio, so the recognizer hears that audio from its first
    /// frame (tapping only on `transcribe_started`, another consumer, raced the next talk).
    /// Before the answer the session taps it when it starts.
    async fn transcribe_start(
        &self,
        call: CallId,
        customer: CustomerId,
        exec: Execution,
        t: &vbin_event_schema::flow::TranscribeStart,
    ) -> Result<(), MediaError> {
        let id = TranscribeId(Uuid::new_v5(
            &exec.activeflow.as_uuid(),
            format!("transcribe_start:{}", exec.seq).as_bytes(),
        ));
        let cmd = TranscribeCommand::Start {
            transcribe: NewTranscribe {
                transcribe_id: id,
                customer_id: customer,
                reference: MediaReference::Call(call),
                language: t.language.clone(),
                direction: t.direction,
                aicall_id: None,
            },
            at: Utc::now(),
        };
        let u = id.as_uuid();
        let error = match self
            .executor
            .execute::<Transcribe>(
                u,
                customer,
                Some(customer),
                cmd,
                &meta(u, &exec.activeflow.to_string(), customer),
            )
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::AlreadyExists(_))) => None,
            Err(ExecError::Taken(what)) => Some(format!("transcribe_start: {what} is running")),
            Err(ExecError::Domain(d)) => Some(format!("transcribe_start: {d}")),
            Err(err) => return Err(err.into()),
        };
        if error.is_none() {
            if let Some(control) = self.ensure(call, customer).await? {
                self.tap(&control, call, customer, id, &t.language, t.direction)
                    .await;
            }
        }
        let result = ActionResult {
            error,
            ..Default::default()
        };
        self.complete(customer, exec, result).await
    }

    /// Starts recording `id` of `call` (creating the Recording unless it exists) in the
    /// session `control`.
    async fn start_recording(
        &self,
        control: &mpsc::Sender<Control>,
        customer: CustomerId,
        call: CallId,
        id: RecordingId,
        limits: RecordingLimits,
    ) -> Result<(), String> {
        if self.store.is_none() {
            return Err("no recording storage is configured".into());
        }
        let cmd = RecordingCommand::Start {
            recording_id: id,
            customer_id: customer,
            reference: MediaReference::Call(call),
            limits: limits.clone(),
            at: Utc::now(),
        };
        let u = id.as_uuid();
        match self
            .executor
            .execute::<Recording>(
                u,
                customer,
                Some(customer),
                cmd,
                &meta(u, &call.to_string(), customer),
            )
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::AlreadyExists(_))) => {}
            Err(e) => return Err(vbin_bus::Chain(&e).to_string()),
        }
        self.capture(control, customer, id, limits).await;
        Ok(())
    }

    /// Starts capturing a recording that exists, with its uploader.
    async fn capture(
        &self,
        control: &mpsc::Sender<Control>,
        customer: CustomerId,
        id: RecordingId,
        limits: RecordingLimits,
    ) {
        match self.claim_capture(customer, id).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(recording = %id, error = %vbin_bus::Chain(&e), "cannot load the recording; not capturing");
                return;
            }
        }
        // Up to ~4 minutes of audio waits for storage before frames are dropped.
        let (chunks, rx) = mpsc::channel(256);
        tokio::spawn(self.clone().upload(customer, id, rx, 2));
        let _ = control
            .send(Control::Record(Capture { id, limits, chunks }))
            .await;
    }

    /// Whether this process is to capture recording `id` now (then it is marked as captured
    /// here): once per recording (a flow's recording_start, then its recording_started
    /// event), and never again once ended (a redelivered event would overwrite its file).
    async fn claim_capture(
        &self,
        customer: CustomerId,
        id: RecordingId,
    ) -> Result<bool, ExecError> {
        match self
            .executor
            .load::<Recording>(id.as_uuid(), Some(customer))
            .await?
        {
            Some(r) if r.status == RecordingStatus::Recording => {
                Ok(self.capturing.lock().expect("capturing").insert(id))
            }
            _ => Ok(false),
        }
    }

    /// Streams a recording's audio (of `channels`) to storage, then ends the Recording.
    async fn upload(
        self,
        customer: CustomerId,
        id: RecordingId,
        mut rx: mpsc::Receiver<RecChunk>,
        channels: u16,
    ) {
        let key = Store::recording_key(customer.as_uuid(), id.as_uuid());
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut error = None;
        let mut writer = match store.writer(&key).await {
            Ok(w) => Some(w),
            Err(e) => {
                error = Some(format!("storage: {}", vbin_bus::Chain(&e)));
                None
            }
        };
        let header = vbin_storage::wav::header(channels, session::RATE_HZ, None);
        let mut frames = 0;
        let mut audio_bytes: u64 = 0;
        if let Some(w) = writer.as_mut() {
            if let Err(e) = w.write(&header).await {
                error = Some(format!("storage: {}", vbin_bus::Chain(&e)));
            }
        }
        while let Some(chunk) = rx.recv().await {
            match chunk {
                RecChunk::Audio(bytes) => {
                    audio_bytes += bytes.len() as u64;
                    if let (Some(w), None) = (writer.as_mut(), &error) {
                        if let Err(e) = w.write(&bytes).await {
                            error = Some(format!("storage: {}", vbin_bus::Chain(&e)));
                        }
                    }
                }
                RecChunk::End { frames: n, dropped } => {
                    frames = n;
                    if dropped && error.is_none() {
                        error = Some("storage fell behind; some audio was lost".into());
                    }
                    break;
                }
            }
        }
        if frames == 0 {
            frames = audio_bytes / (2 * channels as u64 * session::FRAME_SAMPLES as u64);
        }
        let size = match writer {
            Some(w) if error.is_none() => match w.finish().await {
                Ok(n) => n,
                Err(e) => {
                    error = Some(format!("storage: {}", vbin_bus::Chain(&e)));
                    0
                }
            },
            Some(w) => {
                let n = w.written();
                let _ = w.abort().await;
                n
            }
            None => 0,
        };
        if let Some(e) = &error {
            tracing::warn!(recording = %id, error = %e, "recording not stored whole");
        }
        self.capturing.lock().expect("capturing").remove(&id);
        let cmd = RecordingCommand::End {
            duration_ms: frames * session::FRAME.as_millis() as u64,
            file: key,
            size_bytes: size,
            error,
            at: Utc::now(),
        };
        let u = id.as_uuid();
        for attempt in 0..5u32 {
            match self
                .executor
                .execute::<Recording>(
                    u,
                    customer,
                    Some(customer),
                    cmd.clone(),
                    &meta(u, &u.to_string(), customer),
                )
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(recording = %id, error = %vbin_bus::Chain(&e), attempt, "ending a recording failed");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn on_recording(self, e: PublishedEvent) -> Result<(), MediaError> {
        let customer = CustomerId(e.customer_id);
        let id = RecordingId(e.aggregate_id);
        let call = match e.view::<RecordingView>()?.reference() {
            Some(MediaReference::Call(call)) => call,
            Some(MediaReference::Conference(conference)) => {
                return match e.decode::<RecordingEvent>()? {
                    RecordingEvent::RecordingStarted { limits, .. } => {
                        self.record_conference(customer, id, conference, limits)
                            .await
                    }
                    RecordingEvent::RecordingStopRequested { .. } => {
                        self.stop_conference_recording(customer, id, conference)
                            .await
                    }
                    _ => Ok(()),
                };
            }
            None => return Ok(()),
        };
        match e.decode::<RecordingEvent>()? {
            RecordingEvent::RecordingStarted { limits, .. } => {
                match self.ensure(call, customer).await? {
                    Some(control) => self.capture(&control, customer, id, limits).await,
                    None => {
                        self.end_unrecorded(
                            customer,
                            id,
                            "the call has no media (not answered or ended)",
                        )
                        .await?
                    }
                }
            }
            RecordingEvent::RecordingStopRequested { .. } => {
                let told = self.tell(call, Control::StopRecording(id)).await?;
                if !told {
                    self.end_unrecorded(customer, id, "the call's media session is gone")
                        .await?
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn on_transcribe(self, e: PublishedEvent) -> Result<(), MediaError> {
        let customer = CustomerId(e.customer_id);
        let id = TranscribeId(e.aggregate_id);
        let call = match e.view::<TranscribeView>()?.reference() {
            Some(MediaReference::Call(call)) => call,
            Some(MediaReference::Conference(conference)) => {
                // Its members may be mixed by any media process: each taps its own.
                if matches!(
                    e.decode::<TranscribeEvent>()?,
                    TranscribeEvent::TranscribeStarted { .. }
                        | TranscribeEvent::TranscribeCompleted { .. }
                ) {
                    self.tell_taps_changed(conference).await;
                }
                return Ok(());
            }
            None => return Ok(()),
        };
        match e.decode::<TranscribeEvent>()? {
            // An AI conversation's messages: written by the conversation, nothing to hear.
            TranscribeEvent::TranscribeStarted {
                aicall_id: Some(_), ..
            } => {}
            TranscribeEvent::TranscribeStarted {
                language,
                direction,
                ..
            } => {
                // Not answered yet: the session taps it when it starts.
                if let Some(control) = self.ensure(call, customer).await? {
                    self.tap(&control, call, customer, id, &language, direction)
                        .await;
                }
            }
            TranscribeEvent::TranscribeCompleted { .. } => {
                self.tapped.lock().expect("tapped").remove(&(call, id));
                self.tell(call, Control::Untap(id)).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Feeds the sides of transcription `id` from the session `control`.
    async fn tap(
        &self,
        control: &mpsc::Sender<Control>,
        call: CallId,
        customer: CustomerId,
        id: TranscribeId,
        language: &str,
        direction: TranscribeDirection,
    ) {
        let Some(t) = &self.transcriber else {
            tracing::warn!(%call, transcribe_id = %id, "no speech-to-text in this media process; not transcribing");
            return;
        };
        // Held until the streams are sent: another tap of the same transcription waits for
        // them rather than returning before they are on the control channel. Taps are rare
        // (one per transcription and call) and only the sends below await.
        let _one_at_a_time = self.tapping.lock().await;
        if !self.tapped.lock().expect("tapped").insert((call, id)) {
            return;
        }
        for &side in vbin_transcription::sides(direction) {
            match t.start(call, customer, id, language, side) {
                Ok(feed) => {
                    let _ = control.send(Control::Tap(Tap { id, side, feed })).await;
                }
                Err(e) => {
                    tracing::error!(%call, transcribe_id = %id, error = %vbin_bus::Chain(&e), "starting speech-to-text failed");
                }
            }
        }
    }

    /// Taps the call's running transcriptions (a session just started: after an answer, a
    /// takeover or a restart).
    async fn tap_running(&self, control: &mpsc::Sender<Control>, call: CallId) {
        let running = match vbin_app::transcription::running_transcribes(&self.pool, call).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%call, error = %e, "looking up the call's transcriptions failed");
                return;
            }
        };
        for r in running {
            self.tap(
                control,
                call,
                r.customer_id,
                r.transcribe_id,
                &r.language,
                r.direction,
            )
            .await;
        }
    }

    /// The control channel of the call's session, if this process runs it.
    fn control_of(&self, call: CallId) -> Option<mpsc::Sender<Control>> {
        self.sessions
            .lock()
            .expect("sessions")
            .get(&call)
            .map(|h| h.control.clone())
    }

    /// Serves AudioSocket connections on `listener` until `shutdown`: each connection (its
    /// UUID frame names the call) becomes the far end of the call's media session, started
    /// here if needed. A call that is unknown or not answered within a few seconds, or whose
    /// session another media process owns, is refused (logged, connection closed).
    pub async fn serve_audiosocket(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let me = self.clone();
        let serve = vbin_media::audiosocket::serve(
            listener,
            vbin_media::audiosocket::ServerSettings::default(),
            move |s| me.clone().audiosocket(s),
        );
        tokio::select! {
            _ = serve => {}
            _ = shutdown => {}
        }
    }

    async fn audiosocket(self, s: vbin_media::audiosocket::Session) {
        let call = CallId(s.call_id);
        let peer = s.peer;
        let (tx, rx) = socket::channel();
        let far = socket::SocketFar::new(s.call_id, rx, Box::new(s.player()));
        if let Err(why) = self.attach_far(call, Box::new(far)).await {
            metrics::counter!("vbin_audiosocket_refused_total").increment(1);
            tracing::warn!(%call, %peer, why = %why, "AudioSocket connection refused");
            s.player().try_hangup();
            return;
        }
        tracing::info!(%call, %peer, "AudioSocket connected: the call's far end");
        let ended = socket::pump(s, tx).await;
        tracing::info!(%call, %peer, %ended, "AudioSocket session ended");
    }

    /// Makes `far` (a transport: AudioSocket, the SIP carrier's RTP) the far end of call
    /// `call`'s media session, started here if needed (the call must be answered within a
    /// few seconds). Err says why not: an unknown or ended call, a session another media
    /// process owns.
    pub async fn attach_far(&self, call: CallId, far: Box<dyn FarEnd>) -> Result<(), String> {
        let control = self.session_for_switch(call).await?;
        control
            .send(Control::Attach(NewFar(far)))
            .await
            .map_err(|_| "the call's media session ended".to_string())
    }

    /// The session of a call the switch connected (waiting up to 5 s for its answer).
    async fn session_for_switch(&self, call: CallId) -> Result<mpsc::Sender<Control>, String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(c) = self.control_of(call) {
                return Ok(c);
            }
            let loaded = self
                .executor
                .load::<Call>(call.as_uuid(), None)
                .await
                .map_err(|e| vbin_bus::Chain(&e).to_string())?;
            let why = match loaded {
                None => return Err("no such call".into()),
                Some(c) if c.status.is_terminal() => format!("the call is {}", c.status.as_str()),
                Some(c) => match self.ensure_with(call, c.customer_id, true).await {
                    Ok(Some(control)) => return Ok(control),
                    Ok(None) => format!("the call is {}", c.status.as_str()),
                    Err(e) => return Err(vbin_bus::Chain(&e).to_string()),
                },
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ends a recording that captured nothing.
    /// Records the mix of `conference` here (this process needs no member of it: its mix
    /// hears the other processes'). The recording answers stop requests on the mesh
    /// (`<prefix>.rec.<id>`) while it runs, and ends by itself once the conference has ended.
    async fn record_conference(
        &self,
        customer: CustomerId,
        id: RecordingId,
        conference: ConferenceId,
        limits: RecordingLimits,
    ) -> Result<(), MediaError> {
        if self.store.is_none() {
            return self
                .end_unrecorded(customer, id, "no recording storage is configured")
                .await;
        }
        if !self.claim_capture(customer, id).await? {
            return Ok(());
        }
        let stops = match self.conferences.mesh() {
            Some(mesh) => match mesh.client.subscribe(Self::rec_subject(&mesh, id)).await {
                Ok(sub) => Some((mesh.client, sub)),
                Err(e) => {
                    self.capturing.lock().expect("capturing").remove(&id);
                    return Err(MediaError::Mesh(e.to_string()));
                }
            },
            None => None,
        };
        let (chunks, rx) = mpsc::channel(256);
        self.conferences.record(
            conference,
            session::Recorder::new(Capture { id, limits, chunks }),
        );
        tracing::info!(recording = %id, %conference, "recording the conference's mix");
        let me = self.clone();
        tokio::spawn(async move {
            let (done_tx, mut done) = tokio::sync::oneshot::channel::<()>();
            let uploader = me.clone();
            tokio::spawn(async move {
                uploader.upload(customer, id, rx, 1).await;
                let _ = done_tx.send(());
            });
            let (client, mut sub) = match stops {
                Some((c, s)) => (Some(c), Some(s)),
                None => (None, None),
            };
            let mut check = tokio::time::interval(CONFERENCE_ENDED_CHECK);
            loop {
                tokio::select! {
                    _ = &mut done => return,
                    m = async {
                        match sub.as_mut() {
                            Some(s) => futures::StreamExt::next(s).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let Some(m) = m else {
                            // The subscription ended (the connection closed for good): stop
                            // polling it, or this loop spins; the check below still stops it.
                            sub = None;
                            continue;
                        };
                        me.conferences.stop_recording(conference, id);
                        if let (Some(c), Some(reply)) = (&client, m.reply) {
                            let _ = c.publish(reply, Vec::new().into()).await;
                        }
                    }
                    _ = check.tick() => {
                        let ended = match me.executor.load::<vbin_domain::Conference>(conference.as_uuid(), Some(customer)).await {
                            Ok(c) => c.is_none_or(|c| c.status == vbin_domain::ConferenceStatus::Terminated),
                            Err(_) => false,
                        };
                        if ended {
                            me.conferences.stop_recording(conference, id);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Where the process recording `id` hears stop requests.
    fn rec_subject(mesh: &conference::Mesh, id: RecordingId) -> String {
        format!("{}.rec.{id}", mesh.prefix)
    }

    /// Stops a conference's recording: here, or by asking the process that records it; when
    /// none does (it died, or never started it), the recording ends without a file.
    async fn stop_conference_recording(
        &self,
        customer: CustomerId,
        id: RecordingId,
        conference: ConferenceId,
    ) -> Result<(), MediaError> {
        if self.capturing.lock().expect("capturing").contains(&id) {
            self.conferences.stop_recording(conference, id);
            return Ok(());
        }
        let Some(mesh) = self.conferences.mesh() else {
            return Ok(());
        };
        let ask = mesh
            .client
            .request(Self::rec_subject(&mesh, id), Vec::new().into());
        match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                self.end_unrecorded(customer, id, "no media process is recording it any more")
                    .await
            }
            Ok(Err(e)) => Err(MediaError::Mesh(e.to_string())),
            Err(_) => Err(MediaError::Mesh(
                "the recording process did not answer".into(),
            )),
        }
    }

    async fn end_unrecorded(
        &self,
        customer: CustomerId,
        id: RecordingId,
        why: &str,
    ) -> Result<(), MediaError> {
        let cmd = RecordingCommand::End {
            duration_ms: 0,
            file: String::new(),
            size_bytes: 0,
            error: Some(why.into()),
            at: Utc::now(),
        };
        self.command::<Recording>(customer, id.as_uuid(), cmd).await
    }

    /// Runs `cmd` on the customer's aggregate `id` as the media part; an aggregate that is
    /// gone is not an error (nothing left to report to).
    async fn command<A: vbin_app::StoredAggregate>(
        &self,
        customer: CustomerId,
        id: Uuid,
        cmd: A::Command,
    ) -> Result<(), MediaError>
    where
        A::Command: Clone,
    {
        match self
            .executor
            .execute::<A>(
                id,
                customer,
                Some(customer),
                cmd,
                &meta(id, &id.to_string(), customer),
            )
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reports the end of a media action to its activeflow.
    async fn complete(
        &self,
        customer: CustomerId,
        exec: Execution,
        result: ActionResult,
    ) -> Result<(), MediaError> {
        let cmd = ActiveflowCommand::Complete {
            seq: exec.seq,
            result,
            at: Utc::now(),
        };
        self.command::<Activeflow>(customer, exec.activeflow.as_uuid(), cmd)
            .await
    }

    /// The call's session here, started (and claimed) if needed; `None` when the call has
    /// no media (not answered, or ended).
    async fn ensure(
        &self,
        call_id: CallId,
        customer: CustomerId,
    ) -> Result<Option<mpsc::Sender<Control>>, MediaError> {
        self.ensure_with(call_id, customer, false).await
    }

    /// [`Media::ensure`]; `for_switch`: a transport connected here (started even while
    /// draining).
    async fn ensure_with(
        &self,
        call_id: CallId,
        customer: CustomerId,
        for_switch: bool,
    ) -> Result<Option<mpsc::Sender<Control>>, MediaError> {
        if let Some(c) = self.live_control(call_id) {
            return Ok(Some(c));
        }
        if !for_switch && self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(MediaError::Draining(call_id));
        }
        let one = self
            .starting
            .lock()
            .expect("starting")
            .entry(call_id)
            .or_default()
            .clone();
        let _one = one.lock().await;
        let started = self.start_locked(call_id, customer).await;
        self.starting.lock().expect("starting").remove(&call_id);
        started
    }

    /// The call's session here if it is running; a session whose task ended without being
    /// told (it panicked) is forgotten, so the next start replaces it.
    fn live_control(&self, call_id: CallId) -> Option<mpsc::Sender<Control>> {
        let mut sessions = self.sessions.lock().expect("sessions");
        match sessions.get(&call_id) {
            Some(h) if !h.control.is_closed() => Some(h.control.clone()),
            Some(_) => {
                sessions.remove(&call_id);
                metrics::gauge!("vbin_media_sessions").decrement(1.0);
                tracing::error!(call = %call_id, "media session ended unexpectedly; starting it again");
                None
            }
            None => None,
        }
    }

    /// [`Media::ensure`] once this call's start lock is held.
    async fn start_locked(
        &self,
        call_id: CallId,
        customer: CustomerId,
    ) -> Result<Option<mpsc::Sender<Control>>, MediaError> {
        if let Some(c) = self.live_control(call_id) {
            return Ok(Some(c));
        }
        let Some(call) = self
            .executor
            .load::<Call>(call_id.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(None);
        };
        if call.status != CallStatus::Progressing {
            return Ok(None);
        }
        let owner: Option<String> = sqlx::query_scalar(
            "INSERT INTO media_sessions (call_id, customer_id, owner, lease_until) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (call_id) DO UPDATE SET owner = EXCLUDED.owner, \
               lease_until = EXCLUDED.lease_until \
             WHERE media_sessions.lease_until < now() OR media_sessions.owner = EXCLUDED.owner \
             RETURNING owner",
        )
        .bind(call_id.as_uuid())
        .bind(customer.as_uuid())
        .bind(&self.settings.node)
        .bind(self.settings.lease.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        if owner.is_none() {
            let other: String =
                sqlx::query_scalar("SELECT owner FROM media_sessions WHERE call_id = $1")
                    .bind(call_id.as_uuid())
                    .fetch_one(&self.pool)
                    .await?;
            return Err(MediaError::OwnedElsewhere(call_id, other));
        }
        let control = self.start(call_id, customer, &call);
        Ok(Some(control))
    }

    fn start(&self, call_id: CallId, customer: CustomerId, call: &Call) -> mpsc::Sender<Control> {
        // The script runs on the call's clock: steps are relative to its answer.
        let since_answer = call
            .tm_progressing
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or_default();
        let answered = Instant::now() - since_answer;
        let (steps_tx, steps_rx) = mpsc::unbounded_channel();
        if let Some(script) = call.sandbox.clone() {
            self.prepare_script(script, steps_tx);
        }
        let far = SandboxPerson::new(answered, steps_rx);
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let session = Session::new(Box::new(far), reports_tx);
        let (control, control_rx) = mpsc::channel(64);
        {
            let mut sessions = self.sessions.lock().expect("sessions");
            // A start that raced this one (its lock was released and renewed) won.
            if let Some(h) = sessions.get(&call_id) {
                return h.control.clone();
            }
            sessions.insert(
                call_id,
                Handle {
                    control: control.clone(),
                },
            );
        }
        metrics::gauge!("vbin_media_sessions").increment(1.0);
        runtime::media_runtime().spawn(session.run(control_rx));
        tokio::spawn(self.clone().reports(call_id, customer, reports_rx));
        let (me, c) = (self.clone(), control.clone());
        tokio::spawn(async move { me.tap_running(&c, call_id).await });
        tracing::info!(call = %call_id, "media session started");
        control
    }

    /// Synthesises the person's lines and hands each step to it when ready.
    fn prepare_script(
        &self,
        script: SandboxScript,
        steps: mpsc::UnboundedSender<(When, PersonStep)>,
    ) {
        let tts = self.tts.clone();
        tokio::spawn(async move {
            for step in script.script {
                let ms = |v: Option<u32>| Duration::from_millis(v.unwrap_or(0) as u64);
                let when = When {
                    at: ms(Some(step.at_ms)),
                    heard: ms(step.heard_ms),
                    quiet: ms(step.quiet_ms),
                };
                if let Some(keys) = step.digits {
                    let _ = steps.send((when, PersonStep::Keys(keys)));
                }
                if let Some(text) = &step.say {
                    match tts
                        .synthesize(&TtsRequest::new(text.clone(), "en-US"))
                        .await
                    {
                        Ok(speech) => {
                            let _ = steps.send((when, PersonStep::Say(speech)));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "sandbox far end: cannot synthesise its line")
                        }
                    }
                }
            }
        });
    }

    /// Turns a session's reports into commands.
    async fn reports(
        self,
        call: CallId,
        customer: CustomerId,
        mut rx: mpsc::UnboundedReceiver<Report>,
    ) {
        let mut last_digit: Option<Instant> = None;
        while let Some(r) = rx.recv().await {
            match r {
                Report::Done(exec, result) => {
                    // Retried: the report is idempotent (a stale seq is ignored).
                    for attempt in 0..5u32 {
                        match self.complete(customer, exec, result.clone()).await {
                            Ok(()) => break,
                            Err(e) => {
                                tracing::warn!(error = %vbin_bus::Chain(&e), attempt, "reporting a media action's end failed");
                                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                            }
                        }
                    }
                }
                Report::Digit(_, at) => last_digit = Some(at),
                Report::FirstFrame(Some(_), at) => {
                    if let Some(d) = last_digit.take() {
                        metrics::histogram!("vbin_media_digit_to_talk_seconds")
                            .record(at.saturating_duration_since(d).as_secs_f64());
                    }
                }
                Report::FirstFrame(None, _) => {}
                Report::FarEndGone => {
                    tracing::info!(%call, "the far end hung up");
                    let cmd = CallCommand::Hangup {
                        request: HangupRequest::Remote(HangupCause::NormalClearing),
                        at: Utc::now(),
                    };
                    if let Err(e) = self.command::<Call>(customer, call.as_uuid(), cmd).await {
                        tracing::warn!(%call, error = %vbin_bus::Chain(&e), "hanging up after the far end failed");
                    }
                }
            }
        }
    }

    /// Ends the call's session and releases its claim (`claimed`: it may have one; the claim
    /// may be another process's, so only the table knows).
    async fn end(&self, call: CallId, claimed: bool) -> Result<(), MediaError> {
        // A hangup that reaches a process not running the session must not delete the claim
        // of the one that does (its session would never stop, its recordings never be
        // stored): it goes back for that process. A claim whose lease ran out is removed.
        if claimed && self.control_of(call).is_none() {
            self.not_elsewhere(call).await?;
        }
        self.stop_conversations(call).await;
        self.greetings.lock().expect("greetings").remove(&call);
        let handle = self.sessions.lock().expect("sessions").remove(&call);
        self.tapped
            .lock()
            .expect("tapped")
            .retain(|(c, _)| *c != call);
        if let Some(h) = handle {
            let _ = h.control.send(Control::Stop).await;
            metrics::gauge!("vbin_media_sessions").decrement(1.0);
            tracing::info!(%call, "media session ended");
        }
        if claimed {
            sqlx::query("DELETE FROM media_sessions WHERE call_id = $1")
                .bind(call.as_uuid())
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Renews this process's claims; takes over claims whose lease ran out (their process
    /// died) and carries out their flows' pending media actions again.
    async fn keep_leases(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let every = self.settings.lease / 3;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.renew_and_take_over().await {
                tracing::warn!(error = %vbin_bus::Chain(&e), "media leases: will retry");
            }
            self.reconcile_conference_taps(&self.conferences.with_members())
                .await;
        }
    }

    async fn renew_and_take_over(&self) -> Result<(), MediaError> {
        sqlx::query(
            "UPDATE media_sessions SET lease_until = now() + make_interval(secs => $2) \
             WHERE owner = $1",
        )
        .bind(&self.settings.node)
        .bind(self.settings.lease.as_secs_f64())
        .execute(&self.pool)
        .await?;
        let expired: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT call_id, customer_id FROM media_sessions WHERE lease_until < now() LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        for (call, customer) in expired {
            let (call, customer) = (CallId(call), CustomerId(customer));
            if self
                .sessions
                .lock()
                .expect("sessions")
                .remove(&call)
                .is_some()
            {
                // Its lease ran out here (renewals failed): it is started afresh.
                metrics::gauge!("vbin_media_sessions").decrement(1.0);
            }
            self.tapped
                .lock()
                .expect("tapped")
                .retain(|(c, _)| *c != call);
            match self.ensure(call, customer).await {
                Ok(Some(control)) => {
                    tracing::warn!(%call, "took over the media session of a call whose owner stopped");
                    self.resume(call, customer, control).await?;
                }
                Ok(None) => {
                    // Ended meanwhile.
                    sqlx::query("DELETE FROM media_sessions WHERE call_id = $1")
                        .bind(call.as_uuid())
                        .execute(&self.pool)
                        .await?;
                }
                Err(MediaError::OwnedElsewhere(..) | MediaError::Draining(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Carries out the call's flow's pending media action again, and settles the call's AI
    /// conversations (one that never started starts; one that ran in the dead process ends).
    async fn resume(
        &self,
        call: CallId,
        customer: CustomerId,
        control: mpsc::Sender<Control>,
    ) -> Result<(), MediaError> {
        self.resume_conversations(call, customer).await?;
        let Some(c) = self
            .executor
            .load::<Call>(call.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(());
        };
        let Some(af) = c.activeflow_id else {
            return Ok(());
        };
        let Some(flow) = self
            .executor
            .load::<Activeflow>(af.as_uuid(), Some(customer))
            .await?
        else {
            return Ok(());
        };
        if flow.status != ActiveflowStatus::Running {
            return Ok(());
        }
        if let (Some(_), Some(ActionKind::ConferenceJoin(j))) =
            (flow.waiting, flow.current.as_ref().map(|a| &a.kind))
        {
            // Still a member (its flow waits in the conference): mixed in again here.
            let member = self
                .executor
                .load::<vbin_domain::Conference>(j.conference_id.as_uuid(), Some(customer))
                .await?
                .is_some_and(|c| c.members.contains_key(&call));
            if member {
                tracing::warn!(%call, conference = %j.conference_id, "rejoining the conference after a takeover");
                self.join_conference(j.conference_id, call, customer)
                    .await?;
            }
            return Ok(());
        }
        if let (Some(seq), Some(action)) = (flow.waiting, flow.current) {
            if action.kind.is_media() {
                let exec = Execution {
                    activeflow: af,
                    seq,
                };
                self.dispatch(control, call, customer, exec, action.kind)
                    .await;
            }
        }
        Ok(())
    }
}

/// Hangs up answered calls whose media claim has not been renewed for `after` (their media
/// process died and none took over). Returns how many.
pub async fn hang_up_orphans(
    pool: &sqlx::PgPool,
    executor: &Executor,
    after: Duration,
) -> Result<usize, MediaError> {
    let orphans: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT call_id, customer_id FROM media_sessions \
         WHERE lease_until < now() - make_interval(secs => $1) LIMIT 100",
    )
    .bind(after.as_secs_f64())
    .fetch_all(pool)
    .await?;
    for (call, customer) in &orphans {
        tracing::warn!(%call, "media session orphaned: hanging up the call");
        let cmd = CallCommand::Hangup {
            request: HangupRequest::Remote(HangupCause::NetworkOutOfOrder),
            at: Utc::now(),
        };
        let c = CustomerId(*customer);
        match executor
            .execute::<Call>(*call, c, Some(c), cmd, &meta(*call, &call.to_string(), c))
            .await
        {
            Ok(_) | Err(ExecError::Domain(DomainError::NotFound(_))) => {}
            Err(e) => return Err(e.into()),
        }
        sqlx::query("DELETE FROM media_sessions WHERE call_id = $1")
            .bind(call)
            .execute(pool)
            .await?;
    }
    Ok(orphans.len())
}

/// The beep of `beep` and `recording_start`'s `beep_start`: 1 kHz for 400 ms.
fn beep() -> Speech {
    vbin_media::clip::beep(400).into()
}
