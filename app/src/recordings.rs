//! Recording calls and conferences through the API (flows record through their call's media
//! session).

use crate::{new_id, Acting, App, AppError};
use chrono::Utc;
use vbin_domain::{Call, Conference, ConferenceStatus, Recording, RecordingCommand};
use vbin_event_schema::{
    CallStatus, CustomerId, MediaReference, RecordingId, RecordingLimits, RecordingStatus,
};

/// The customer's recordings of `reference` still recording, as the read model shows them.
pub async fn running(
    pool: &sqlx::PgPool,
    customer: CustomerId,
    reference: MediaReference,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM rm_recordings WHERE customer_id = $1 AND reference_id = $2 \
         AND status = 'recording'",
    )
    .bind(customer.as_uuid())
    .bind(reference.id())
    .fetch_all(pool)
    .await
}

impl App {
    /// Starts recording an answered call of the tenant's, or the mix of a conference of the
    /// tenant's that has not ended.
    pub async fn start_recording(
        &self,
        acting: &Acting,
        reference: MediaReference,
        limits: RecordingLimits,
    ) -> Result<Recording, AppError> {
        self.check_recordable(acting, reference).await?;
        let id = RecordingId(new_id());
        let cmd = RecordingCommand::Start {
            recording_id: id,
            customer_id: acting.customer,
            reference,
            limits,
            at: Utc::now(),
        };
        self.create::<Recording>(acting, id.as_uuid(), cmd).await
    }

    async fn check_recordable(
        &self,
        acting: &Acting,
        reference: MediaReference,
    ) -> Result<(), AppError> {
        match reference {
            MediaReference::Call(call) => {
                let c = self
                    .find::<Call>(call.as_uuid(), acting.customer, "call")
                    .await?;
                if c.status != CallStatus::Progressing {
                    return Err(AppError::Conflict(
                        "the call is not answered (or has ended); only answered calls are recorded"
                            .into(),
                    ));
                }
            }
            MediaReference::Conference(conference) => {
                let c = self
                    .find::<Conference>(conference.as_uuid(), acting.customer, "conference")
                    .await?;
                if c.status == ConferenceStatus::Terminated {
                    return Err(AppError::Conflict("the conference has ended".into()));
                }
            }
        }
        Ok(())
    }

    /// Asks the media processes to stop the running recordings of a call or conference;
    /// returns them.
    pub async fn stop_recordings(
        &self,
        acting: &Acting,
        reference: MediaReference,
    ) -> Result<Vec<Recording>, AppError> {
        match reference {
            MediaReference::Call(call) => {
                self.find::<Call>(call.as_uuid(), acting.customer, "call")
                    .await?;
            }
            MediaReference::Conference(conference) => {
                self.find::<Conference>(conference.as_uuid(), acting.customer, "conference")
                    .await?;
            }
        }
        let running = running(&self.pool, acting.customer, reference).await?;
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
