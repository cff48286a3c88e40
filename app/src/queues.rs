//! Putting an answered call into a queue: by the API (`POST /v1.0/queues/{id}/calls`) and by
//! the queue process manager (a campaign's answered calls).

use crate::{new_id, Acting, App, AppError, ExecError, Executed, Executor};
use chrono::Utc;
use serde_json::Value;
use vbin_domain::{Call, Queue, QueueCommand};
use vbin_event_schema::{CallId, CallStatus, CustomerId, QueueEvent, QueueId};
use vbin_eventlog::CommandMeta;

/// The once-key of a call's join: a call joins one queue, once.
pub fn join_key(call_id: CallId) -> String {
    format!("queue-join:{call_id}")
}

/// Joins `call_id` to `queue_id` of `customer` once (a second join of the call, to any queue,
/// is `AlreadyApplied`).
pub async fn join(
    executor: &Executor,
    customer: CustomerId,
    queue_id: QueueId,
    call_id: CallId,
    meta: &CommandMeta,
) -> Result<Executed<Queue>, ExecError> {
    let cmd = QueueCommand::Join {
        queuecall_id: new_id(),
        call_id,
        at: Utc::now(),
    };
    let once = meta.clone().once(customer.as_uuid(), join_key(call_id));
    executor
        .execute::<Queue>(queue_id.as_uuid(), customer, Some(customer), cmd, &once)
        .await
}

impl App {
    /// Puts the tenant's answered (progressing) call into its queue; returns the queue call
    /// (waiting). A call joins at most one queue, once.
    pub async fn join_queue(
        &self,
        acting: &Acting,
        queue_id: QueueId,
        call_id: CallId,
    ) -> Result<Value, AppError> {
        self.find::<Queue>(queue_id.as_uuid(), acting.customer, "queue")
            .await?;
        let call = self
            .find::<Call>(call_id.as_uuid(), acting.customer, "call")
            .await?;
        if call.status != CallStatus::Progressing {
            return Err(AppError::Conflict(
                "only an answered (progressing) call can join a queue".into(),
            ));
        }
        let q = join(
            &self.executor,
            acting.customer,
            queue_id,
            call_id,
            &acting.meta,
        )
        .await?
        .state;
        let joined = QueueEvent::QueuecallJoined {
            call: q.waiting[&call_id].clone(),
            stats: q.stats,
        };
        Ok(q.queuecall_view(&joined).unwrap_or_default())
    }
}
