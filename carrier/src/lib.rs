//! The telephony boundary. A [`Carrier`] places and tears down calls on a network; it reports
//! what the network does only by sending commands to the Call aggregate (never by writing
//! tables of the write model). The [`dialer`] process manager feeds it `call_created` and
//! `call_hungup` events from JetStream. [`sandbox::SandboxCarrier`] is the built-in carrier.

pub mod dialer;
pub mod sandbox;

use async_trait::async_trait;
use uuid::Uuid;
use vbin_app::{ExecError, Executor};
use vbin_domain::{Call, CallCommand};
use vbin_event_schema::{CallId, CallStatus, CustomerId, TrunkId, E164};
use vbin_eventlog::CommandMeta;

/// Tells the call what its network did, as carrier `who` (the command's actor): the one way
/// a carrier writes. Returns the call's status after it (None: the call does not exist, which
/// is not an error: there is nothing to drive).
pub async fn report(
    executor: &Executor,
    who: &'static str,
    call: CallId,
    customer: CustomerId,
    cmd: CallCommand,
) -> Result<Option<CallStatus>, ExecError> {
    let mut meta = CommandMeta::caused_by(who, Uuid::now_v7(), &call.to_string());
    meta.customer_id = Some(customer.as_uuid());
    match executor
        .execute::<Call>(call.as_uuid(), customer, Some(customer), cmd, &meta)
        .await
    {
        Err(ExecError::Domain(vbin_domain::DomainError::NotFound(_))) => Ok(None),
        other => other.map(|done| Some(done.state.status)),
    }
}

/// What a carrier needs to place a call.
#[derive(Clone, Debug)]
pub struct DialRequest {
    /// The call.
    pub call_id: CallId,
    /// Its owner.
    pub customer_id: CustomerId,
    /// Caller id.
    pub source: E164,
    /// Number to dial.
    pub destination: E164,
    /// Give up with no_answer after this long.
    pub dial_timeout_ms: u32,
    /// Milliseconds the far end talks before hanging up (sandbox only: its script's hangup
    /// step, else `variables.talk_seconds`).
    pub talk_ms: u64,
    /// The SIP trunk it goes through (none: the sandbox).
    pub trunk_id: Option<TrunkId>,
}

/// A carrier failure (retried by the dialer).
#[derive(Debug, thiserror::Error)]
#[error("carrier: {0}")]
pub struct CarrierError(pub String);

/// A telephony network. Both operations must be idempotent: the dialer may deliver the same
/// event more than once.
#[async_trait]
pub trait Carrier: Send + Sync {
    /// Starts placing the call.
    async fn dial(&self, req: &DialRequest) -> Result<(), CarrierError>;
    /// Tears the call down (our side hung up).
    async fn hangup(&self, call_id: CallId) -> Result<(), CarrierError>;
    /// An incoming call from the network was created: it rings at our side until a flow
    /// answers it.
    async fn arrived(&self, req: &DialRequest) -> Result<(), CarrierError>;
    /// Our side answered an incoming call: the far end talks `req.talk_ms` before hanging up.
    async fn answered(&self, req: &DialRequest) -> Result<(), CarrierError>;
}
