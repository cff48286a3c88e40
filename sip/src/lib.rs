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
//! Not yet: incoming calls, OPTIONS keepalive of trunks, session timers
//! (docs/notes/sip-plan.md).

pub mod media;
pub mod outcome;
pub mod rtp;
pub mod sdp;

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
use vbin_app::App;
use vbin_carrier::{Carrier, CarrierError, DialRequest};
use vbin_domain::{Call, CallCommand, HangupRequest};
use vbin_event_schema::{CallId, CustomerId, HangupCause, SipTransport};
use vbin_eventlog::CommandMeta;

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
}

impl Default for SipSettings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 5060)),
            advertised_ip: None,
            rtp_ports: 20_000..=20_999,
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
    answered: bool,
    /// The call's RTP socket until its media starts.
    rtp: Option<std::net::UdpSocket>,
    /// Its port (in our SDP).
    rtp_port: u16,
    /// The codecs we offered.
    offered: Vec<vbin_event_schema::Codec>,
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
    states: DialogStateSender,
    public: SocketAddr,
    bind_ip: IpAddr,
    rtp_ports: std::ops::RangeInclusive<u16>,
    /// The media engine of this process, which the calls' RTP feeds.
    media: std::sync::OnceLock<vbin_callmedia::Media>,
    /// Live calls by SIP Call-ID (= the call's id).
    live: Mutex<HashMap<String, Live>>,
    node: String,
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
                states,
                public,
                bind_ip: settings.bind.ip(),
                rtp_ports: settings.rtp_ports.clone(),
                media: std::sync::OnceLock::new(),
                live: Mutex::new(HashMap::new()),
                node: format!("{}-{}", std::process::id(), Uuid::new_v4().simple()),
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

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `cmd` to the call, as the SIP carrier.
    async fn report(&self, call: CallId, customer: CustomerId, cmd: CallCommand) {
        let mut meta = CommandMeta::caused_by("sip-carrier", Uuid::now_v7(), &call.to_string());
        meta.customer_id = Some(customer.as_uuid());
        let res = self
            .inner
            .app
            .executor
            .execute::<Call>(call.as_uuid(), customer, Some(customer), cmd, &meta)
            .await;
        if let Err(e) = res {
            tracing::warn!(%call, error = %e, "SIP carrier: reporting to the call failed");
        }
    }

    async fn hung_up(&self, call: CallId, customer: CustomerId, cause: HangupCause) {
        let cmd = CallCommand::Hangup {
            request: HangupRequest::Remote(cause),
            at: Utc::now(),
        };
        self.report(call, customer, cmd).await;
        self.set_state(call, "ended").await;
    }

    async fn set_state(&self, call: CallId, state: &str) {
        let res =
            sqlx::query("UPDATE sip_calls SET state = $2, updated_at = now() WHERE call_id = $1")
                .bind(call.as_uuid())
                .bind(state)
                .execute(&self.inner.pool)
                .await;
        if let Err(e) = res {
            tracing::warn!(%call, error = %e, "SIP carrier: recording the call's state failed");
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
        let start = (call.as_uuid().as_u128() % u128::from(u16::MAX)) as u16;
        let Some(rtp) = rtp::bind_in(self.inner.bind_ip, &self.inner.rtp_ports, start) else {
            tracing::error!(%call, ports = ?self.inner.rtp_ports, "no RTP port free (VBIN_RTP_PORTS): the call fails");
            self.hung_up(call, customer, HangupCause::NetworkOutOfOrder)
                .await;
            return Ok(());
        };
        let rtp_port = rtp
            .local_addr()
            .map_err(|e| CarrierError(format!("RTP socket: {e}")))?
            .port();
        let offered = sdp::carried(&s.codecs);
        let session = call.as_uuid().as_u128() as u32 as u64;
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
            offer: Some(sdp::describe(public.ip(), rtp_port, &offered, session, 1).into_bytes()),
            credential: s.username.clone().map(|username| Credential {
                username,
                password: trunk.password.clone().unwrap_or_default(),
                realm: None,
                auth_username: None,
            }),
            call_id: Some(call.to_string()),
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
                answered: false,
                rtp: Some(rtp),
                rtp_port,
                offered,
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

    /// Starts the call's audio: the answer's SDP settles codec and address, the socket's RTP
    /// becomes the far end of the call's media session.
    fn start_media(
        &self,
        call: CallId,
        socket: std::net::UdpSocket,
        answer: &[u8],
        offered: &[vbin_event_schema::Codec],
    ) {
        let n = match sdp::negotiate(answer, offered) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%call, error = %e, "the answer's SDP is unusable: the call has no audio");
                return;
            }
        };
        let Some(media) = self.inner.media.get().cloned() else {
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
        let remote = media::Remote::new(n.remote);
        let seed = Uuid::new_v4().as_u128();
        let outlet = media::RtpOutlet::new(
            out,
            remote.clone(),
            rtp::Sender::new(n.pt, n.dtmf_pt, seed),
            n.codec,
        );
        // We receive with our offer's payload types (RFC 3264: each side sends with the
        // numbers the receiver declared); static G.711 ones are the same either way.
        let receiver = rtp::Receiver::new(
            sdp::payload_type(n.codec).unwrap_or(n.pt),
            Some(sdp::DTMF_PT),
        );
        let (tx, rx) = vbin_callmedia::socket::channel();
        let far = vbin_callmedia::socket::SocketFar::new(call.as_uuid(), rx, Box::new(outlet));
        tracing::info!(%call, codec = n.codec.as_str(), remote = %n.remote, "RTP starts");
        tokio::spawn(async move {
            if let Err(why) = media.attach_far(call, Box::new(far)).await {
                tracing::warn!(%call, why = %why, "the call's media session refused its RTP");
                return;
            }
            let ended = media::pump(reader, remote, receiver, n.codec, tx).await;
            tracing::info!(%call, %ended, "RTP ended");
        });
    }

    fn forget(&self, call: CallId) {
        self.live().remove(&call.to_string());
    }

    /// Follows the dialogs' states: ringing, and the far end's BYE.
    async fn follow(&self, mut states: DialogStateReceiver) {
        while let Some(state) = states.recv().await {
            match state {
                DialogState::Early(id, _) => {
                    let who = self.live().get(&id.call_id).map(|l| (l.call, l.customer));
                    if let Some((call, customer)) = who {
                        self.report(call, customer, CallCommand::MarkRinging { at: Utc::now() })
                            .await;
                    }
                }
                DialogState::Confirmed(id, resp) => {
                    // Before the INVITE's task hears of the 2xx, and before any Terminated of
                    // the dialog (one channel, in order): a BYE right after the answer finds
                    // the call answered.
                    let who = self.live().get_mut(&id.call_id).map(|l| {
                        l.answered = true;
                        (l.call, l.customer, l.rtp.take(), l.offered.clone())
                    });
                    if let Some((call, customer, rtp, offered)) = who {
                        self.report(call, customer, CallCommand::MarkAnswered { at: Utc::now() })
                            .await;
                        self.set_state(call, "answered").await;
                        if let Some(socket) = rtp {
                            self.start_media(call, socket, &resp.body, &offered);
                        }
                    }
                }
                DialogState::Options(_, _, h) | DialogState::Info(_, _, h) => {
                    let _ = h.reply(StatusCode::OK).await;
                }
                DialogState::Updated(id, _, h) => {
                    // A re-INVITE or UPDATE (session refresh, hold): the session goes on as it
                    // is, on the same port with the same codecs.
                    let ip = self.inner.public.ip();
                    let body = self.live().get(&id.call_id).map(|l| {
                        let session = l.call.as_uuid().as_u128() as u32 as u64;
                        sdp::describe(ip, l.rtp_port, &l.offered, session, 2).into_bytes()
                    });
                    let headers = body.as_ref().map(|_| {
                        vec![rsipstack::sip::Header::ContentType(
                            "application/sdp".into(),
                        )]
                    });
                    let _ = h.respond(StatusCode::OK, headers, body).await;
                }
                DialogState::Terminated(id, reason) => {
                    self.inner.layer.remove_dialog(&id);
                    let l = {
                        let mut live = self.live();
                        // Not answered: the INVITE's task reports the outcome.
                        if !live.get(&id.call_id).is_some_and(|l| l.answered) {
                            continue;
                        }
                        live.remove(&id.call_id)
                    };
                    let Some(l) = l else { continue };
                    let cause = match reason {
                        TerminatedReason::UacBye => {
                            // Our BYE: the call is already hung up by us.
                            self.set_state(l.call, "ended").await;
                            continue;
                        }
                        TerminatedReason::UasBye => HangupCause::NormalClearing,
                        TerminatedReason::Timeout => HangupCause::NetworkOutOfOrder,
                        _ => HangupCause::NormalClearing,
                    };
                    self.hung_up(l.call, l.customer, cause).await;
                }
                _ => {}
            }
        }
    }

    /// Requests that start no dialog of ours: in-dialog ones go to their dialog (BYE,
    /// re-INVITE), OPTIONS is answered, and calls from the network are not taken yet.
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
                // Incoming calls come with numbers routed to trunks (next step).
                Method::Invite => StatusCode::NotFound,
                Method::Ack => continue,
                _ => StatusCode::MethodNotAllowed,
            };
            let _ = tx.reply(status).await;
        }
    }
}

impl Endpoint {
    /// Runs the endpoint until `shutdown`, then BYEs or CANCELs the calls still up.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Endpoint {
            endpoint,
            incoming,
            states,
            cancel,
            carrier,
        } = self;
        let serve = endpoint.serve();
        tokio::select! {
            _ = shutdown => {}
            r = serve => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "SIP endpoint stopped");
                }
            }
            _ = carrier.serve_incoming(incoming) => {}
            _ = carrier.follow(states) => {}
        }
        let dialogs: Vec<InviteDialog> =
            carrier.live().values().map(|l| l.dialog.clone()).collect();
        for d in dialogs {
            let _ = tokio::time::timeout(Duration::from_secs(2), d.hangup()).await;
        }
        cancel.cancel();
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
        let dialog = self
            .live()
            .get(&call_id.to_string())
            .map(|l| l.dialog.clone());
        if let Some(d) = dialog {
            // BYE when confirmed, CANCEL while early; the dialog's end comes back as a state.
            tokio::spawn(async move {
                if let Err(e) = d.hangup().await {
                    tracing::warn!(call = %call_id, error = %e, "BYE/CANCEL failed");
                }
            });
        }
        Ok(())
    }

    async fn arrived(&self, req: &DialRequest) -> Result<(), CarrierError> {
        Err(CarrierError(format!(
            "call {}: incoming SIP calls are not taken yet",
            req.call_id
        )))
    }

    async fn answered(&self, req: &DialRequest) -> Result<(), CarrierError> {
        Err(CarrierError(format!(
            "call {}: incoming SIP calls are not taken yet",
            req.call_id
        )))
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
