//! The SIP carrier (issue 18): calls placed through a customer's trunk with rsipstack.
//!
//! One SIP endpoint per process (UDP and TCP on `VBIN_SIP_ADDR`, advertising
//! `VBIN_SIP_ADVERTISED_IP` in Via and Contact when the bind address is not the one the far end
//! can reach). [`SipCarrier::dial`] claims the call in `sip_calls` first (a redelivered
//! `call_created` finds the claim and sends nothing), then sends the INVITE through the trunk
//! (digest auth on 401 and 407 by rsipstack), reports 180/183 as ringing, 200 as answered and
//! a final failure with the cause [`outcome::cause_of_final`] gives it; at the dial timeout it
//! CANCELs (no_answer). Our hangup is a BYE (a CANCEL before the answer); the far end's BYE
//! hangs the call up as remote. The SIP Call-ID of a call is its id, which ties every dialog
//! state back to the call.
//!
//! Audio: each call gets an RTP socket on `VBIN_RTP_PORTS` at the INVITE; at the answer its
//! RTP becomes the far end of the call's media session ([`media`]), so flows, recording,
//! transcription and the AI agent work on SIP calls as on sandbox ones. The media engine must
//! run in the same process ([`SipCarrier::set_media`]).
//!
//! Incoming calls ([`inbound`]): an INVITE to a number routed to a trunk, from that trunk's
//! address, creates an incoming call running the number's flow; it rings (180) when the
//! platform has it, and the flow's answer is our 200 with the answer to the caller's offer.
//!
//! Crashes ([`recovery`]): live calls are leased by their process and confirmed dialogs saved;
//! the calls of a process that died are ended by another (or the restarted one), which BYEs
//! their far ends from the saved dialogs.
//!
//! Trunks get OPTIONS keepalives ([`keepalive`]); their reachability is an event of theirs.
//!
//! Session timers (RFC 4028, [`session_timer`]) are asked for, refreshed and enforced.
//!
//! A re-INVITE or UPDATE is answered in the mirrored direction of its offer (hold).
//!
//! Not yet: G.722 and Opus on the wire (docs/notes/sip-plan.md).

mod inbound;
mod keepalive;
mod lanes;
pub mod media;
pub mod outcome;
pub mod recovery;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod session_timer;
mod timers;

use async_trait::async_trait;
use chrono::Utc;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog::{
    Dialog, DialogState, DialogStateReceiver, DialogStateSender, TerminatedReason,
};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{HostWithPort, Method, StatusCode, Transport, Uri};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transaction::TransactionReceiver;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, TcpListenerConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use sqlx::PgPool;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vbin_app::{App, ExecError};
use vbin_carrier::{report, Carrier, CarrierError, DialRequest};
use vbin_domain::{CallCommand, HangupRequest};
use vbin_event_schema::{CallDirection, CallId, CustomerId, HangupCause, SipTransport};

/// Attempts after the first at writing what the network did (with [`backoff`]: about 40 s
/// in all).
const RETRIES: u32 = 10;

/// The wait before retry `attempt` (0-based): 100 ms doubling, at most 10 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(7)).min(10_000))
}

/// Where the SIP endpoint listens and what it tells the far end.
#[derive(Clone, Debug)]
pub struct SipSettings {
    /// UDP and TCP listen address.
    pub bind: SocketAddr,
    /// The address the far end reaches us at, when it is not the bind address (NAT, a
    /// wildcard bind): put in Via, Contact and SDP.
    pub advertised_ip: Option<IpAddr>,
    /// The UDP ports of calls' RTP (one even port per call).
    pub rtp_ports: std::ops::RangeInclusive<u16>,
    /// How often every trunk gets an OPTIONS keepalive (none: never).
    pub keepalive: Option<Duration>,
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 5060)),
            advertised_ip: None,
            rtp_ports: 20_000..=20_999,
            keepalive: Some(Duration::from_secs(30)),
        }
    }
}

impl SipSettings {
    /// The address put in Via and Contact.
    pub fn public(&self) -> SocketAddr {
        SocketAddr::new(
            self.advertised_ip.unwrap_or(self.bind.ip()),
            self.bind.port(),
        )
    }
}

/// Why the SIP endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    /// Binding or setting up the stack failed.
    #[error("SIP endpoint on {addr}: {message}")]
    Start {
        /// The listen address.
        addr: SocketAddr,
        /// rsipstack's error.
        message: String,
    },
}

/// A live call of this process: its dialog and what it has reported.
struct Live {
    call: CallId,
    customer: CustomerId,
    dialog: InviteDialog,
    direction: CallDirection,
    /// Outgoing: the far end's 200 was confirmed; incoming: our 200 went out.
    answered: bool,
    /// The call's RTP socket until its media starts.
    rtp: Option<std::net::UdpSocket>,
    /// Its port (in our SDP).
    rtp_port: u16,
    /// The formats of our SDP (the offer's, or the one our answer chose).
    ours: Vec<sdp::Format>,
    /// The payload type of telephone-event in our SDP.
    dtmf_pt: Option<u8>,
    /// Incoming: what the caller's offer settled.
    offer: Option<sdp::Negotiated>,
    /// The session timer (incoming: from the offer; outgoing: set at the answer).
    timer: Option<session_timer::SessionTimer>,
    /// Notified by each refresh of the far end's.
    refreshed: Arc<tokio::sync::Notify>,
    /// Our SDP's direction (the answer to the far end's last offer) and version.
    sdp_state: (sdp::Direction, u64),
    /// Whether our direction lets us send RTP (not while the far end holds the call).
    sending: media::Sending,
}

impl Live {
    /// Our current SDP.
    fn description(&self, ip: IpAddr) -> String {
        let (direction, version) = self.sdp_state;
        let session = sdp_session(self.call);
        sdp::describe_as(
            ip,
            self.rtp_port,
            &self.ours,
            self.dtmf_pt,
            session,
            version,
            direction,
        )
    }
}

/// The body of the ACK that confirmed `dialog` (the answer, when we offered in our 200).
fn dialog_ack(dialog: &InviteDialog) -> Option<Vec<u8>> {
    dialog.last_remote_ack().map(|a| a.body)
}

/// The codecs of SDP formats.
fn codecs_of(formats: &[sdp::Format]) -> Vec<vbin_event_schema::Codec> {
    formats.iter().map(|f| f.codec).collect()
}

/// The live calls of this process, by SIP Call-ID (an outgoing call's is its id; an
/// incoming one's is the caller's) and by call.
#[derive(Default)]
struct Calls {
    by_sip: HashMap<String, Live>,
    sip_of: HashMap<CallId, String>,
}

impl Calls {
    fn insert(&mut self, sip_call_id: String, live: Live) {
        self.sip_of.insert(live.call, sip_call_id.clone());
        self.by_sip.insert(sip_call_id, live);
    }

    fn get(&self, sip_call_id: &str) -> Option<&Live> {
        self.by_sip.get(sip_call_id)
    }

    fn get_mut(&mut self, sip_call_id: &str) -> Option<&mut Live> {
        self.by_sip.get_mut(sip_call_id)
    }

    fn of_call(&mut self, call: CallId) -> Option<&mut Live> {
        let sip = self.sip_of.get(&call)?;
        self.by_sip.get_mut(sip)
    }

    fn remove(&mut self, sip_call_id: &str) -> Option<Live> {
        let live = self.by_sip.remove(sip_call_id)?;
        self.sip_of.remove(&live.call);
        Some(live)
    }

    fn remove_call(&mut self, call: CallId) -> Option<Live> {
        let sip = self.sip_of.remove(&call)?;
        self.by_sip.remove(&sip)
    }

    /// Every call's dialog, and whether it is a caller we have not answered.
    fn dialogs(&self) -> Vec<(InviteDialog, bool)> {
        self.by_sip
            .values()
            .map(|l| {
                let ringing_in = l.direction == CallDirection::Incoming && !l.answered;
                (l.dialog.clone(), ringing_in)
            })
            .collect()
    }
}

/// The SIP carrier of one process.
#[derive(Clone)]
pub struct SipCarrier {
    inner: Arc<Inner>,
}

struct Inner {
    app: App,
    pool: PgPool,
    layer: Arc<DialogLayer>,
    endpoint: EndpointInnerRef,
    keepalive: Option<Duration>,
    states: DialogStateSender,
    public: SocketAddr,
    bind_ip: IpAddr,
    rtp_ports: std::ops::RangeInclusive<u16>,
    /// The media engine of this process, which the calls' RTP feeds.
    media: std::sync::OnceLock<vbin_callmedia::Media>,
    /// The live calls.
    live: Mutex<Calls>,
    node: String,
    /// The calls' database writes from the dialog-state loop, in order per call.
    lanes: lanes::Lanes<CallId>,
}

/// The endpoint's tasks, to run until shutdown ([`SipCarrier::start`]).
pub struct Endpoint {
    endpoint: EndpointInnerRef,
    incoming: TransactionReceiver,
    states: DialogStateReceiver,
    cancel: CancellationToken,
    carrier: SipCarrier,
}

impl SipCarrier {
    /// Binds the endpoint (UDP now, TCP when it runs) and returns the carrier and the tasks
    /// to run ([`Endpoint::run`]).
    pub async fn start(
        settings: &SipSettings,
        app: App,
        pool: PgPool,
    ) -> Result<(Self, Endpoint), SipError> {
        let err = |e: rsipstack::Error| SipError::Start {
            addr: settings.bind,
            message: e.to_string(),
        };
        let cancel = CancellationToken::new();
        let public = settings.public();
        let external = (public != settings.bind).then_some(public);
        let transports = TransportLayer::new(cancel.child_token());
        let udp =
            UdpConnection::create_connection(settings.bind, external, Some(cancel.child_token()))
                .await
                .map_err(err)?;
        // UDP first: rsipstack takes the first transport for requests that name none.
        transports.add_transport(udp.into());
        let tcp = TcpListenerConnection::new(settings.bind, external)
            .await
            .map_err(err)?;
        transports.add_transport(tcp.into());
        let endpoint = EndpointBuilder::new()
            .with_user_agent("vbin")
            .with_cancel_token(cancel.clone())
            .with_transport_layer(transports)
            .build();
        let incoming = endpoint.incoming_transactions().map_err(err)?;
        let layer = Arc::new(DialogLayer::new(endpoint.inner.clone()));
        let (states, state_rx) = layer.new_dialog_state_channel();
        let carrier = SipCarrier {
            inner: Arc::new(Inner {
                app,
                pool,
                layer,
                endpoint: endpoint.inner.clone(),
                keepalive: settings.keepalive,
                states,
                public,
                bind_ip: settings.bind.ip(),
                rtp_ports: settings.rtp_ports.clone(),
                media: std::sync::OnceLock::new(),
                live: Mutex::new(Calls::default()),
                node: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
                lanes: lanes::Lanes::default(),
            }),
        };
        tracing::info!(bind = %settings.bind, %public, "SIP endpoint bound (udp, tcp)");
        Ok((
            carrier.clone(),
            Endpoint {
                endpoint: endpoint.inner.clone(),
                incoming,
                states: state_rx,
                cancel,
                carrier,
            },
        ))
    }

    /// Feeds the calls' RTP to `media` (the media engine of this process). Without one, SIP
    /// calls have no audio.
    pub fn set_media(&self, media: vbin_callmedia::Media) {
        let _ = self.inner.media.set(media);
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `cmd` to the call, as the SIP carrier. What the network did is known only
    /// here, so a storage blip is retried (about 40 s) rather than lost; a refusal is not.
    async fn report(&self, call: CallId, customer: CustomerId, cmd: CallCommand) {
        let executor = &self.inner.app.executor;
        let mut attempt = 0u32;
        loop {
            let res = report(executor, "sip-carrier", call, customer, cmd.clone()).await;
            match res {
                Ok(_) => return,
                Err(e @ (ExecError::Store(_) | ExecError::Conflict)) if attempt < RETRIES => {
                    tracing::warn!(%call, error = %vbin_bus::Chain(&e), attempt, "SIP carrier: reporting to the call failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(%call, error = %vbin_bus::Chain(&e), "SIP carrier: reporting to the call failed");
                    return;
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// The network ended the call (`cause`): reported, and its SIP state ended.
    async fn hung_up(&self, call: CallId, customer: CustomerId, cause: HangupCause) {
        self.hung_up_at(call, customer, cause, Utc::now()).await;
    }

    /// [`Self::hung_up`] at `at` (when the network said so, not when it is written: a call's
    /// duration, and its bill, run to the hangup).
    async fn hung_up_at(
        &self,
        call: CallId,
        customer: CustomerId,
        cause: HangupCause,
        at: chrono::DateTime<Utc>,
    ) {
        self.report(call, customer, remote_hangup_at(cause, at))
            .await;
        self.set_state(call, "ended").await;
    }

    /// The call's RTP socket, on an even port of `VBIN_RTP_PORTS` (the search starts at a
    /// port spread by the call's id), and its port; None when none is free.
    fn bind_rtp(&self, call: CallId) -> Option<(std::net::UdpSocket, u16)> {
        let start = (call.as_uuid().as_u128() % u128::from(u16::MAX)) as u16;
        let socket = rtp::bind_in(self.inner.bind_ip, &self.inner.rtp_ports, start)?;
        let port = socket.local_addr().ok()?.port();
        Some((socket, port))
    }

    /// Records the call's SIP state (what a restarted process acts on), retried like
    /// [`Self::report`].
    async fn set_state(&self, call: CallId, state: &str) {
        self.set_state_with(call, state, None).await
    }

    /// The same, saving the call's confirmed dialog too ([`recovery`]).
    async fn set_state_with(&self, call: CallId, state: &str, dialog: Option<serde_json::Value>) {
        let mut attempt = 0u32;
        loop {
            let res = sqlx::query(
                // An ended call stays ended (a late write of another state loses).
                "UPDATE sip_calls SET state = $2, dialog = COALESCE($3, dialog), \
                 updated_at = now() WHERE call_id = $1 AND (state <> 'ended' OR $2 = 'ended')",
            )
            .bind(call.as_uuid())
            .bind(state)
            .bind(dialog.as_ref())
            .execute(&self.inner.pool)
            .await;
            match res {
                Ok(_) => return,
                Err(e) if attempt < RETRIES => {
                    tracing::warn!(%call, error = %e, attempt, "SIP carrier: recording the call's state failed; retrying");
                }
                Err(e) => {
                    tracing::warn!(%call, error = %e, "SIP carrier: recording the call's state failed");
                    return;
                }
            }
            tokio::time::sleep(backoff(attempt)).await;
            attempt += 1;
        }
    }

    /// The INVITE of `req` through its trunk, and what follows until the final response.
    async fn invite(&self, req: DialRequest) -> Result<(), CarrierError> {
        let (call, customer) = (req.call_id, req.customer_id);
        let Some(trunk_id) = req.trunk_id else {
            return Err(CarrierError(
                "the SIP carrier got a call without a trunk".into(),
            ));
        };
        let trunk = match self.inner.app.dial_trunk(customer, trunk_id).await {
            Ok(t) => t,
            Err(vbin_app::AppError::NotFound(_)) => {
                tracing::warn!(%call, %trunk_id, "the call's trunk is gone; the call fails");
                self.hung_up(call, customer, HangupCause::NetworkOutOfOrder)
                    .await;
                return Ok(());
            }
            Err(e) => return Err(CarrierError(format!("trunk {trunk_id}: {e}"))),
        };
        let s = &trunk.settings;
        let transport = match s.transport {
            SipTransport::Udp => Transport::Udp,
            SipTransport::Tcp => Transport::Tcp,
        };
        let uri =
            |s: String| Uri::try_from(s.as_str()).map_err(|e| CarrierError(format!("{s}: {e}")));
        let host = host_port(&s.host, s.port);
        let tcp = if s.transport == SipTransport::Tcp {
            ";transport=tcp"
        } else {
            ""
        };
        let public = self.inner.public;
        let Some((rtp, rtp_port)) = self.bind_rtp(call) else {
            tracing::error!(%call, ports = ?self.inner.rtp_ports, "no RTP port free (VBIN_RTP_PORTS): the call fails");
            self.hung_up(call, customer, HangupCause::NetworkOutOfOrder)
                .await;
            return Ok(());
        };
        let offered: Vec<sdp::Format> = s.codecs.iter().map(|c| sdp::Format::ours(*c)).collect();
        let session = sdp_session(call);
        let opt = InviteOption {
            caller: uri(format!("sip:{}@{public}", req.source))?,
            callee: uri(format!("sip:{}@{host}{tcp}", req.destination))?,
            contact: uri(format!("sip:{}@{public}{tcp}", req.source))?,
            destination: Some(SipAddr::new(
                transport,
                HostWithPort::try_from(host.as_str())
                    .map_err(|e| CarrierError(format!("{host}: {e}")))?,
            )),
            content_type: Some("application/sdp".into()),
            offer: Some(
                sdp::describe(
                    public.ip(),
                    rtp_port,
                    &offered,
                    Some(sdp::DTMF_PT),
                    session,
                    1,
                )
                .into_bytes(),
            ),
            credential: s.username.clone().map(|username| Credential {
                username,
                password: trunk.password.clone().unwrap_or_default(),
                realm: None,
                auth_username: None,
            }),
            call_id: Some(call.to_string()),
            headers: Some(session_timer::asked()),
            ..Default::default()
        };
        let (dialog, join) = self
            .inner
            .layer
            .do_invite_async(opt, self.inner.states.clone())
            .map_err(|e| CarrierError(format!("INVITE: {e}")))?;
        self.live().insert(
            call.to_string(),
            Live {
                call,
                customer,
                dialog: dialog.clone(),
                direction: CallDirection::Outgoing,
                answered: false,
                rtp: Some(rtp),
                rtp_port,
                ours: offered.clone(),
                dtmf_pt: Some(sdp::DTMF_PT),
                offer: None,
                timer: None,
                refreshed: Arc::default(),
                sdp_state: (sdp::Direction::SendRecv, 1),
                sending: media::Sending::default(),
            },
        );
        metrics::counter!("vbin_sip_invites_total").increment(1);
        let this = self.clone();
        let timeout = Duration::from_millis(u64::from(req.dial_timeout_ms));
        tokio::spawn(async move {
            let mut join = join;
            let outcome = match tokio::time::timeout(timeout, &mut join).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::info!(%call, "dial timeout: CANCEL");
                    if let Err(e) = dialog.cancel().await {
                        tracing::warn!(%call, error = %e, "CANCEL failed");
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(35), &mut join).await;
                    // An answer processed before the CANCEL went out (rsipstack then sends
                    // none): the call is up, and `follow` reported it.
                    if matches!(dialog.state(), DialogState::Confirmed(..)) {
                        return;
                    }
                    this.forget(call);
                    this.hung_up(call, customer, HangupCause::NoAnswer).await;
                    return;
                }
            };
            match outcome {
                Ok(Ok((_, Some(resp))))
                    if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful =>
                {
                    // `follow` reports the answer at the dialog's Confirmed state. A 2xx that
                    // crossed our CANCEL is ACKed and BYEd by rsipstack without confirming:
                    // the call was hung up here already.
                    if !matches!(dialog.state(), DialogState::Confirmed(..)) {
                        this.forget(call);
                        this.set_state(call, "ended").await;
                    }
                }
                Ok(Ok((_, Some(resp)))) => {
                    let code = resp.status_code.code();
                    tracing::info!(%call, code, "call refused by the far end");
                    this.forget(call);
                    this.hung_up(call, customer, outcome::cause_of_final(code))
                        .await;
                }
                Ok(Ok((_, None))) | Ok(Err(_)) | Err(_) => {
                    let why = match &outcome {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        _ => "no final response".into(),
                    };
                    tracing::warn!(%call, error = %why, "INVITE failed");
                    this.forget(call);
                    this.hung_up(call, customer, HangupCause::NetworkOutOfOrder)
                        .await;
                }
            }
        });
        Ok(())
    }

    /// Starts the call's audio: RTP to `remote` coded as `coding` says; the socket's RTP
    /// becomes the far end of the call's media session.
    fn start_media(
        &self,
        call: CallId,
        socket: std::net::UdpSocket,
        remote: SocketAddr,
        coding: media::Coding,
        sending: media::Sending,
    ) {
        let Some(engine) = self.inner.media.get().cloned() else {
            tracing::warn!(%call, "no media engine in this process (run the carrier and media parts together): the call has no audio");
            return;
        };
        let setup = || -> std::io::Result<_> {
            socket.set_nonblocking(true)?;
            let out = socket.try_clone()?;
            Ok((tokio::net::UdpSocket::from_std(socket)?, out))
        };
        let (reader, out) = match setup() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%call, error = %e, "RTP socket: the call has no audio");
                return;
            }
        };
        // RTCP on the port above (RFC 3550 11), to theirs above their RTP port; a call
        // whose odd port is taken goes without.
        let rtcp = out
            .local_addr()
            .and_then(|a| std::net::UdpSocket::bind(SocketAddr::new(a.ip(), a.port() + 1)))
            .and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(s)
            });
        let their_rtcp = SocketAddr::new(remote.ip(), remote.port().wrapping_add(1));
        let remote = media::Remote::new(remote);
        let seed = Uuid::new_v4().as_u128();
        let stats = Arc::new(rtcp::Stats::default());
        let outlet = match media::RtpOutlet::new(out, remote.clone(), &coding, seed, sending) {
            Ok(o) => o.with_stats(stats.clone()),
            Err(e) => {
                tracing::warn!(%call, error = %e, "RTP encoder: the call has no audio");
                return;
            }
        };
        // A far end without telephone-event sends its keys as tones in the audio.
        let inband = coding.send_dtmf.is_none().then(media::Inband::new);
        let (tx, rx) = vbin_callmedia::socket::channel();
        let far = vbin_callmedia::socket::SocketFar::new(call.as_uuid(), rx, Box::new(outlet))
            .sending_at(coding.send_rate());
        tracing::info!(%call, codec = coding.send.codec.as_str(), remote = %remote.get(), "RTP starts");
        let (rtcp_done, done) = tokio::sync::oneshot::channel();
        match rtcp {
            Ok(socket) => {
                let clock = media::clock_hz(coding.send.codec);
                let cname = format!("{call}@{}", self.inner.public.ip());
                tokio::spawn(rtcp::run(
                    socket,
                    their_rtcp,
                    seed as u32,
                    clock,
                    cname,
                    stats.clone(),
                    done,
                ));
            }
            Err(e) => tracing::debug!(%call, error = %e, "no RTCP port: the call goes without"),
        }
        tokio::spawn(async move {
            if let Err(why) = engine.attach_far(call, Box::new(far)).await {
                tracing::warn!(%call, why = %why, "the call's media session refused its RTP");
                return;
            }
            let ended = media::pump(reader, remote, coding, inband, Some(stats), tx).await;
            let _ = rtcp_done.send(());
            tracing::info!(%call, %ended, "RTP ended");
        });
    }

    /// What to do with an event of a call whose dialog is not in this process: if another
    /// live process holds it, fail (the dialer redelivers the event, to it in time); else
    /// there is nothing to do.
    async fn not_here(&self, call: CallId) -> Result<(), CarrierError> {
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT node FROM sip_calls WHERE call_id = $1 AND state <> 'ended' \
             AND lease_until > now() AND node <> $2",
        )
        .bind(call.as_uuid())
        .bind(&self.inner.node)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(|e| CarrierError(format!("looking up the call's SIP process: {e}")))?;
        match holder {
            Some(node) => Err(CarrierError(format!(
                "call {call}: its dialog is held by SIP process {node}"
            ))),
            None => {
                tracing::debug!(%call, "SIP call not live: nothing to do");
                Ok(())
            }
        }
    }

    fn forget(&self, call: CallId) {
        self.live().remove_call(call);
    }

    /// Runs `work` (database writes of `call`) after the call's earlier ones, off the
    /// dialog-state loop ([`lanes`]).
    fn later<F, Fut>(&self, call: CallId, work: F)
    where
        F: FnOnce(SipCarrier) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        use futures::FutureExt;
        self.inner.lanes.push(call, work(self.clone()).boxed());
    }

    /// Follows the dialogs' states: ringing, and the far end's BYE.
    async fn follow(&self, mut states: DialogStateReceiver) {
        while let Some(state) = states.recv().await {
            match state {
                DialogState::Early(id, _) => {
                    let who = self.live().get(&id.call_id).map(|l| (l.call, l.customer));
                    if let Some((call, customer)) = who {
                        let at = Utc::now();
                        self.later(call, move |this| async move {
                            this.report(call, customer, CallCommand::MarkRinging { at })
                                .await;
                        });
                    }
                }
                DialogState::Confirmed(id, resp) => {
                    // Before the INVITE's task hears of the 2xx, and before any Terminated of
                    // the dialog (one channel, in order): a BYE right after the answer finds
                    // the call answered. A re-INVITE's ACK confirms again: nothing to do.
                    let who = self.live().get_mut(&id.call_id).and_then(|l| {
                        let first = l.direction == CallDirection::Incoming || !l.answered;
                        l.answered = true;
                        let rtp = l.rtp.take();
                        let dialog = l.dialog.clone();
                        if l.direction == CallDirection::Outgoing && first {
                            l.timer = session_timer::of_answer(&resp);
                        }
                        let timer = l.timer.map(|t| (t, l.refreshed.clone()));
                        first.then(|| {
                            (
                                l.call,
                                l.customer,
                                l.direction,
                                rtp,
                                (l.ours.clone(), l.sending.clone()),
                                l.offer.clone(),
                                dialog,
                                timer,
                            )
                        })
                    });
                    let Some((
                        call,
                        customer,
                        direction,
                        rtp,
                        (ours, sending),
                        offer,
                        dialog,
                        timer,
                    )) = who
                    else {
                        continue;
                    };
                    let (at, first_answer) = (Utc::now(), rtp.is_some());
                    // Outgoing: the answer settles it, and the far end sends with our offer's
                    // payload types (RFC 3264: each side sends with the numbers the receiver
                    // declared). Incoming: the offer settled it, our answer kept its numbers;
                    // an incoming call without an offer had ours in our 200 and has the
                    // caller's answer in its ACK (read now: a later ACK replaces it).
                    let media = rtp.and_then(|socket| {
                        let we_offered = offer.is_none();
                        let settled = match offer {
                            Some(n) => Ok(n),
                            None if direction == CallDirection::Incoming => sdp::negotiate(
                                &dialog_ack(&dialog).unwrap_or_default(),
                                &codecs_of(&ours),
                            ),
                            None => sdp::negotiate(&resp.body, &codecs_of(&ours)),
                        };
                        let n = match settled {
                            Ok(n) => n,
                            Err(e) => {
                                tracing::warn!(%call, error = %e, "the answer's SDP is unusable: the call has no audio");
                                return None;
                            }
                        };
                        let send = sdp::Format {
                            codec: n.codec,
                            pt: n.pt,
                        };
                        let coding = if we_offered {
                            // The far end may send any codec of its answer, on our numbers;
                            // an answer that only receives, or takes nothing, holds our RTP.
                            sending.set(n.direction.answer().sends());
                            media::Coding {
                                send,
                                send_dtmf: n.dtmf_pt,
                                receive: n
                                    .formats
                                    .iter()
                                    .map(|f| sdp::Format::ours(f.codec))
                                    .collect(),
                                receive_dtmf: Some(sdp::DTMF_PT),
                            }
                        } else {
                            // Our answer named one format, on the offer's number.
                            media::Coding {
                                send,
                                send_dtmf: n.dtmf_pt,
                                receive: vec![send],
                                receive_dtmf: n.dtmf_pt,
                            }
                        };
                        Some((socket, n.remote, coding))
                    });
                    // The answer is written before the audio starts: the media engine takes
                    // a call's RTP once the call is answered.
                    self.later(call, move |this| async move {
                        if direction == CallDirection::Outgoing {
                            this.report(call, customer, CallCommand::MarkAnswered { at })
                                .await;
                        }
                        if first_answer {
                            this.answered_with(call, &dialog).await;
                            if let Some((timer, refreshed)) = timer {
                                this.keep_session(call, customer, dialog, timer, refreshed);
                            }
                        }
                        if let Some((socket, remote, coding)) = media {
                            this.start_media(call, socket, remote, coding, sending);
                        }
                    });
                }
                DialogState::Options(_, _, h) | DialogState::Info(_, _, h) => {
                    let _ = h.reply(StatusCode::OK).await;
                }
                DialogState::Updated(id, req, h) => {
                    // A re-INVITE or UPDATE (session refresh, hold): the session goes on as it
                    // is, on the same port with the same codecs, so the same description with
                    // the same version (RFC 3264 8: unchanged means the version stays). It
                    // refreshes the session timer, which our 2xx repeats (RFC 4028 9).
                    let ip = self.inner.public.ip();
                    // A new offer may hold or resume: our answer mirrors its direction (and is a
                    // new version when that changes it). An UPDATE without SDP gets none back;
                    // a re-INVITE without one gets ours as the offer.
                    let offered = !req.body.is_empty();
                    let found = self.live().get_mut(&id.call_id).map(|l| {
                        l.refreshed.notify_one();
                        let n =
                            offered.then(|| sdp::negotiate(&req.body, &codecs_of(&l.ours)).ok());
                        if let Some(n) = n.flatten() {
                            let ours = n.direction.answer();
                            if ours != l.sdp_state.0 {
                                l.sdp_state = (ours, l.sdp_state.1 + 1);
                            }
                            // On hold (we answered recvonly or inactive) our RTP stops.
                            l.sending.set(ours.sends());
                        }
                        let with_sdp = offered || req.method == Method::Invite;
                        (with_sdp.then(|| l.description(ip).into_bytes()), l.timer)
                    });
                    let (body, headers) = match found {
                        Some((sdp, timer)) => {
                            let mut headers = Vec::new();
                            if sdp.is_some() {
                                headers.push(rsipstack::sip::Header::ContentType(
                                    "application/sdp".into(),
                                ));
                            }
                            headers.extend(timer.map(|t| t.refreshing()));
                            (sdp, Some(headers))
                        }
                        None => (None, None),
                    };
                    let _ = h.respond(StatusCode::OK, headers, body).await;
                }
                DialogState::Terminated(id, reason) => {
                    self.inner.layer.remove_dialog(&id);
                    let l = {
                        let mut live = self.live();
                        // An outgoing call not answered: the INVITE's task reports the outcome.
                        if live
                            .get(&id.call_id)
                            .is_some_and(|l| l.direction == CallDirection::Outgoing && !l.answered)
                        {
                            continue;
                        }
                        live.remove(&id.call_id)
                    };
                    let Some(l) = l else { continue };
                    // rsipstack names the side by its role in the dialog: the UAC is whoever
                    // sent the INVITE.
                    let ours = matches!(
                        (l.direction, &reason),
                        (CallDirection::Outgoing, TerminatedReason::UacBye)
                            | (CallDirection::Incoming, TerminatedReason::UasBye)
                            | (CallDirection::Incoming, TerminatedReason::UasDecline)
                    );
                    if ours {
                        // Our BYE or refusal: the call is already hung up by us.
                        self.later(l.call, move |this| async move {
                            this.set_state(l.call, "ended").await;
                        });
                        continue;
                    }
                    let cause = match reason {
                        TerminatedReason::UacBye | TerminatedReason::UasBye => {
                            HangupCause::NormalClearing
                        }
                        // The caller gave up before our answer.
                        TerminatedReason::UacCancel => HangupCause::OriginatorCancel,
                        TerminatedReason::Timeout => HangupCause::NetworkOutOfOrder,
                        _ => HangupCause::NormalClearing,
                    };
                    let (call, customer, at) = (l.call, l.customer, Utc::now());
                    self.later(call, move |this| async move {
                        this.hung_up_at(call, customer, cause, at).await;
                    });
                }
                _ => {}
            }
        }
    }

    /// Requests that start no dialog of ours: in-dialog ones go to their dialog (BYE,
    /// re-INVITE), OPTIONS is answered, an INVITE is a call from the network
    /// ([`Self::take_call`]).
    async fn serve_incoming(&self, mut incoming: TransactionReceiver) {
        while let Some(mut tx) = incoming.recv().await {
            let in_dialog = tx
                .original
                .to_header()
                .ok()
                .and_then(|t| t.tag().ok().flatten())
                .is_some();
            if in_dialog {
                let dialog = self.inner.layer.match_dialog(&tx).or_else(|| {
                    // A BYE right after our ACK may come before rsipstack registers the
                    // confirmed dialog: find it by Call-ID among ours.
                    let call_id = tx.original.call_id_header().ok()?.value().to_string();
                    self.live()
                        .get(&call_id)
                        .map(|l| Dialog::Invite(l.dialog.clone()))
                });
                match dialog {
                    Some(mut d) => {
                        tokio::spawn(async move {
                            if let Err(e) = d.handle(&mut tx).await {
                                tracing::debug!(error = %e, "in-dialog request");
                            }
                        });
                    }
                    None if tx.original.method == Method::Ack => {}
                    None => {
                        let _ = tx.reply(StatusCode::CallTransactionDoesNotExist).await;
                    }
                }
                continue;
            }
            let status = match tx.original.method {
                Method::Options => StatusCode::OK,
                Method::Invite => {
                    let this = self.clone();
                    tokio::spawn(async move { this.take_call(tx).await });
                    continue;
                }
                Method::Ack => continue,
                _ => StatusCode::MethodNotAllowed,
            };
            let _ = tx.reply(status).await;
        }
    }
}

impl Endpoint {
    /// Runs the endpoint until `shutdown`, then BYEs or CANCELs the calls still up and gives
    /// up their leases ([`recovery`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Endpoint {
            endpoint,
            incoming,
            states,
            cancel,
            carrier,
        } = self;
        // Its own task: the transport and timers keep running while the calls are torn down.
        let ep = endpoint.clone();
        let mut serve = tokio::spawn(async move { ep.serve().await });
        tokio::select! {
            _ = shutdown => {}
            r = &mut serve => {
                if let Ok(Err(e)) = r {
                    tracing::error!(error = %e, "SIP endpoint stopped");
                }
            }
            _ = carrier.serve_incoming(incoming) => {}
            _ = carrier.follow(states) => {}
            _ = carrier.keep_leases() => {}
            _ = async {
                match carrier.inner.keepalive {
                    Some(every) => carrier.keep_trunks_alive(every).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        // All at once: BYE the confirmed, CANCEL our early ones, refuse callers still ringing.
        let dialogs = carrier.live().dialogs();
        let ends = dialogs.into_iter().map(|(d, ringing_in)| async move {
            if ringing_in {
                let _ = d.reject(Some(StatusCode::ServiceUnavailable), None);
            } else {
                let _ = tokio::time::timeout(Duration::from_secs(3), d.hangup()).await;
            }
        });
        futures::future::join_all(ends).await;
        // Writes still queued (a saved dialog would survive the release below, and a far end
        // would get a second BYE from recovery): let them land first, within reason.
        if !carrier.inner.lanes.idle(Duration::from_secs(5)).await {
            tracing::warn!("SIP calls' database writes still queued at shutdown");
        }
        // The far ends got their BYE or CANCEL; the calls themselves are ended by a carrier
        // process that finds their leases given up (recovery), without a second BYE.
        let released = sqlx::query(
            "UPDATE sip_calls SET dialog = NULL, lease_until = now() \
             WHERE node = $1 AND state <> 'ended'",
        )
        .bind(&carrier.inner.node)
        .execute(&carrier.inner.pool)
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "giving up the SIP calls' leases failed");
        }
        cancel.cancel();
        serve.abort();
    }
}

#[async_trait]
impl Carrier for SipCarrier {
    async fn dial(&self, req: &DialRequest) -> Result<(), CarrierError> {
        // The claim: the decision to send an INVITE, once per call whatever redelivers.
        let claimed = sqlx::query(
            "INSERT INTO sip_calls (call_id, customer_id, trunk_id, state, node) \
             VALUES ($1, $2, $3, 'inviting', $4) ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(req.call_id.as_uuid())
        .bind(req.customer_id.as_uuid())
        .bind(req.trunk_id.map(|t| t.as_uuid()))
        .bind(&self.inner.node)
        .execute(&self.inner.pool)
        .await
        .map_err(|e| CarrierError(format!("claiming the call: {e}")))?
        .rows_affected()
            == 1;
        if !claimed {
            tracing::debug!(call = %req.call_id, "INVITE already sent for this call");
            return Ok(());
        }
        self.invite(req.clone()).await
    }

    async fn hangup(&self, call_id: CallId) -> Result<(), CarrierError> {
        let found = self.live().of_call(call_id).map(|l| {
            let unanswered_in = l.direction == CallDirection::Incoming && !l.answered;
            (l.dialog.clone(), unanswered_in)
        });
        match found {
            // An incoming call we never answered: refused (its end comes back as a state).
            Some((d, true)) => {
                if let Err(e) = d.reject(Some(StatusCode::TemporarilyUnavailable), None) {
                    tracing::warn!(call = %call_id, error = %e, "refusing the incoming call failed");
                }
            }
            // BYE when confirmed, CANCEL while early; the dialog's end comes back as a state.
            Some((d, false)) => {
                tokio::spawn(async move {
                    // Not before the caller's ACK of our 200 (RFC 3261 15: a UAS MUST NOT),
                    // which comes within 64*T1 or never.
                    let t = std::time::Instant::now();
                    while matches!(d.state(), DialogState::WaitAck(..))
                        && t.elapsed() < Duration::from_secs(32)
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if let Err(e) = d.hangup().await {
                        tracing::warn!(call = %call_id, error = %e, "BYE/CANCEL failed");
                    }
                });
            }
            None => return self.not_here(call_id).await,
        }
        Ok(())
    }

    async fn arrived(&self, req: &DialRequest) -> Result<(), CarrierError> {
        // The caller hears ringing while the number's flow decides.
        let dialog = self
            .live()
            .of_call(req.call_id)
            .filter(|l| l.direction == CallDirection::Incoming && !l.answered)
            .map(|l| l.dialog.clone());
        let Some(d) = dialog else {
            return self.not_here(req.call_id).await;
        };
        if let Err(e) = d.ringing(None, None) {
            tracing::warn!(call = %req.call_id, error = %e, "180 Ringing failed");
        }
        self.report(
            req.call_id,
            req.customer_id,
            CallCommand::MarkRinging { at: Utc::now() },
        )
        .await;
        Ok(())
    }

    async fn answered(&self, req: &DialRequest) -> Result<(), CarrierError> {
        // The flow answered: 200 with our answer to the caller's offer; the audio starts at
        // the caller's ACK (`follow`).
        let ip = self.inner.public.ip();
        let found = self.live().of_call(req.call_id).and_then(|l| {
            if l.direction != CallDirection::Incoming || l.answered {
                return None;
            }
            l.answered = true;
            Some((l.dialog.clone(), l.description(ip), l.timer))
        });
        let Some((d, sdp, timer)) = found else {
            return self.not_here(req.call_id).await;
        };
        let mut headers = vec![rsipstack::sip::Header::ContentType(
            "application/sdp".into(),
        )];
        headers.extend(timer.map(|t| t.answering()).unwrap_or_default());
        d.accept(Some(headers), Some(sdp.into_bytes()))
            .map_err(|e| CarrierError(format!("200 OK: {e}")))
    }
}

/// The command of a call the network ended with `cause`.
fn remote_hangup(cause: HangupCause) -> CallCommand {
    remote_hangup_at(cause, Utc::now())
}

/// The same, at `at`.
fn remote_hangup_at(cause: HangupCause, at: chrono::DateTime<Utc>) -> CallCommand {
    CallCommand::Hangup {
        request: HangupRequest::Remote(cause),
        at,
    }
}

/// The SDP session id of `call`'s descriptions (o= line): stable for the call.
fn sdp_session(call: CallId) -> u64 {
    u64::from(call.as_uuid().as_u128() as u32)
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
