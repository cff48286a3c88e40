//! Recording calls through the API (flows record through their call's media session).

use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use vbin_domain::{Call, Recording, RecordingCommand};
use vbin_event_schema::{CallId, CallStatus, RecordingId, RecordingLimits, RecordingStatus};

impl App {
    /// Starts recording an answered call of the tenant's.
    pub async fn start_recording(
        &self,
        acting: &Acting,
        call: CallId,
        limits: RecordingLimits,
    ) -> Result<Recording, AppError> {
        let c = self
            .find::<Call>(call.as_uuid(), acting.customer, "call")
            .await?;
        if c.status != CallStatus::Progressing {
            return Err(AppError::Conflict(
                "the call is not answered (or has ended); only answered calls are recorded".into(),
            ));
        }
        let id = RecordingId(new_id());
        let cmd = RecordingCommand::Start {
            recording_id: id,
            customer_id: acting.customer,
            reference_id: call,
            limits,
            at: Utc::now(),
        };
        self.create::<Recording>(acting, id.as_uuid(), cmd).await
    }

    /// Asks the media session to stop the call's running recordings; returns them.
    pub async fn stop_recordings(
        &self,
        acting: &Acting,
        call: CallId,
    ) -> Result<Vec<Recording>, AppError> {
        self.find::<Call>(call.as_uuid(), acting.customer, "call")
            .await?;
        let running: Vec<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM rm_recordings WHERE customer_id = $1 AND reference_id = $2 \
             AND status = 'recording'",
        )
        .bind(acting.customer.as_uuid())
        .bind(call.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        let mut stopped = Vec::with_capacity(running.len());
        for id in running {
            let r = self
                .update::<Recording>(acting, id, RecordingCommand::RequestStop { at: Utc::now() })
                .await?;
            if r.status == RecordingStatus::Recording {
                stopped.push(r);
            }
        }
        Ok(stopped)
    }
}
