//! Inline projections: lookup tables the command side needs exact at commit time (logins,
//! access keys, webhook secrets, balances, the queue each call joined, the running
//! transcriptions of each call, the stored recordings' files, the owners of phone numbers, the
//! AI conversations under way),
//! updated in the same transaction as the events that change them. Read models proper are
//! built asynchronously by the projections crate.

use crate::event::NewEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;
use vbin_event_schema::{
    AicallEvent, BillingEvent, CustomerEvent, NumberEvent, QueueEvent, RecordingEvent,
    TranscribeEvent,
};

/// Whether appends to this aggregate type update lookup tables (and so need a transaction).
pub fn applies_to(aggregate_type: &str) -> bool {
    matches!(
        aggregate_type,
        CustomerEvent::AGGREGATE
            | BillingEvent::AGGREGATE
            | QueueEvent::AGGREGATE
            | TranscribeEvent::AGGREGATE
            | RecordingEvent::AGGREGATE
            | NumberEvent::AGGREGATE
            | AicallEvent::AGGREGATE
    )
}

/// Keeps `numbers` equal to the live numbers: who owns each, which flow it runs and which
/// trunk its SIP calls come from. Its key refuses a number another customer (or another
/// number resource) holds.
async fn apply_number(
    tx: &mut Transaction<'_, Postgres>,
    number_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for e in events {
        match decode::<NumberEvent>(e)? {
            NumberEvent::NumberCreated {
                number,
                call_flow_id,
                trunk_id,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO numbers (number, number_id, customer_id, call_flow_id, trunk_id) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(number.as_str())
                .bind(number_id)
                .bind(customer_id)
                .bind(call_flow_id.as_uuid())
                .bind(trunk_id.map(|t| t.as_uuid()))
                .execute(&mut **tx)
                .await?;
            }
            NumberEvent::NumberUpdated {
                call_flow_id,
                trunk_id,
                ..
            } => {
                sqlx::query(
                    "UPDATE numbers SET call_flow_id = $2, trunk_id = $3 WHERE number_id = $1",
                )
                .bind(number_id)
                .bind(call_flow_id.as_uuid())
                .bind(trunk_id.map(|t| t.as_uuid()))
                .execute(&mut **tx)
                .await?;
            }
            NumberEvent::NumberDeleted { .. } => {
                sqlx::query("DELETE FROM numbers WHERE number_id = $1")
                    .bind(number_id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Keeps `recording_files` equal to the stored recordings' files: a row from
/// `recording_ended` (when it stored something) to `recording_deleted`.
async fn apply_recording(
    tx: &mut Transaction<'_, Postgres>,
    recording_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for e in events {
        match decode::<RecordingEvent>(e)? {
            RecordingEvent::RecordingEnded {
                file,
                size_bytes,
                at,
                ..
            } if size_bytes > 0 => {
                sqlx::query(
                    "INSERT INTO recording_files (recording_id, customer_id, file, ended_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (recording_id) DO NOTHING",
                )
                .bind(recording_id)
                .bind(customer_id)
                .bind(file)
                .bind(at)
                .execute(&mut **tx)
                .await?;
            }
            RecordingEvent::RecordingDeleted { .. } => {
                sqlx::query("DELETE FROM recording_files WHERE recording_id = $1")
                    .bind(recording_id)
                    .execute(&mut **tx)
                    .await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Keeps `billing_balances` equal to the account's state.
async fn apply_billing(
    tx: &mut Transaction<'_, Postgres>,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    // One upsert of the last balance and rate the events set (a round of charges is up to
    // 256 events: one statement, not one each).
    let (mut balance, mut rate) = (None, None);
    for e in events {
        let event: BillingEvent = decode(e)?;
        let (b, r) = match event {
            BillingEvent::BillingAccountCreated {
                balance_micros,
                rate_micros_per_minute,
                ..
            } => (Some(balance_micros.0), Some(rate_micros_per_minute.0)),
            BillingEvent::BillingAccountBalanceAdded { balance_micros, .. } => {
                (Some(balance_micros.0), None)
            }
            BillingEvent::BillingAccountRateChanged {
                rate_micros_per_minute,
                ..
            } => (None, Some(rate_micros_per_minute.0)),
            BillingEvent::BillingRecorded {
                balance_after_micros,
                ..
            } => (Some(balance_after_micros.0), None),
        };
        balance = b.or(balance);
        rate = r.or(rate);
    }
    if balance.is_none() && rate.is_none() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO billing_balances (customer_id, balance_micros, rate_micros_per_minute) \
         VALUES ($1, COALESCE($2, 0), COALESCE($3, 0)) ON CONFLICT (customer_id) DO UPDATE \
         SET balance_micros = COALESCE($2, billing_balances.balance_micros), \
             rate_micros_per_minute = COALESCE($3, billing_balances.rate_micros_per_minute)",
    )
    .bind(customer_id)
    .bind(balance)
    .bind(rate)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records in `queue_calls` which queue each joining call is in.
async fn apply_queue(
    tx: &mut Transaction<'_, Postgres>,
    queue_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for e in events {
        if e.event_type != QueueEvent::QUEUECALL_JOINED {
            continue;
        }
        let event: QueueEvent = decode(e)?;
        if let QueueEvent::QueuecallJoined { call, .. } = event {
            sqlx::query(
                "INSERT INTO queue_calls (call_id, queue_id, customer_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (call_id) DO NOTHING",
            )
            .bind(call.call_id.as_uuid())
            .bind(queue_id)
            .bind(customer_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// Keeps `transcribe_calls` equal to the running transcriptions: a row from
/// `transcribe_started` to `transcribe_completed`. Its `call_id` is what the transcription
/// listens to (a call's id, or a conference's: the ids are UUIDv7s and never collide). Its
/// unique (call, direction) key refuses a second running transcription of a call (or
/// conference) in the same direction.
async fn apply_transcribe(
    tx: &mut Transaction<'_, Postgres>,
    transcribe_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for e in events {
        if e.event_type == TranscribeEvent::TRANSCRIPT_CREATED {
            continue;
        }
        let event: TranscribeEvent = decode(e)?;
        match event {
            // An AI conversation's messages: nothing to tap or stop at a hangup (the
            // conversation's end completes it), and no claim on the call's directions.
            TranscribeEvent::TranscribeStarted {
                aicall_id: Some(_), ..
            } => {}
            TranscribeEvent::TranscribeStarted {
                reference_id,
                direction,
                language,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO transcribe_calls (transcribe_id, call_id, customer_id, direction, language) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(transcribe_id)
                .bind(reference_id)
                .bind(customer_id)
                .bind(direction.as_str())
                .bind(language)
                .execute(&mut **tx)
                .await?;
            }
            TranscribeEvent::TranscribeCompleted { .. } => {
                sqlx::query("DELETE FROM transcribe_calls WHERE transcribe_id = $1")
                    .bind(transcribe_id)
                    .execute(&mut **tx)
                    .await?;
            }
            TranscribeEvent::TranscriptCreated { .. } => {}
        }
    }
    Ok(())
}

/// Keeps `aicall_live` equal to the conversations under way (for the per-customer limit and
/// a call's hangup).
async fn apply_aicall(
    tx: &mut Transaction<'_, Postgres>,
    aicall_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    for e in events {
        if e.event_type == AicallEvent::AIMESSAGE_CREATED {
            continue;
        }
        match decode::<AicallEvent>(e)? {
            AicallEvent::AicallCreated { reference_id, .. } => {
                sqlx::query(
                    "INSERT INTO aicall_live (aicall_id, customer_id, call_id) VALUES ($1, $2, $3)",
                )
                .bind(aicall_id)
                .bind(customer_id)
                .bind(reference_id.as_uuid())
                .execute(&mut **tx)
                .await?;
            }
            AicallEvent::AicallStatusTerminated { .. } => {
                sqlx::query("DELETE FROM aicall_live WHERE aicall_id = $1")
                    .bind(aicall_id)
                    .execute(&mut **tx)
                    .await?;
            }
            AicallEvent::AicallStatusProgressing { .. } | AicallEvent::AimessageCreated { .. } => {}
        }
    }
    Ok(())
}

/// An appended event's payload as its aggregate's event type.
fn decode<T: serde::de::DeserializeOwned>(e: &NewEvent) -> Result<T, sqlx::Error> {
    serde_json::from_value(e.payload.clone()).map_err(|err| sqlx::Error::Decode(Box::new(err)))
}

/// Applies the events of one append to the lookup tables.
pub async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    aggregate_type: &str,
    aggregate_id: Uuid,
    customer_id: Uuid,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    match aggregate_type {
        CustomerEvent::AGGREGATE => {}
        BillingEvent::AGGREGATE => return apply_billing(tx, customer_id, events).await,
        QueueEvent::AGGREGATE => return apply_queue(tx, aggregate_id, customer_id, events).await,
        TranscribeEvent::AGGREGATE => {
            return apply_transcribe(tx, aggregate_id, customer_id, events).await
        }
        RecordingEvent::AGGREGATE => {
            return apply_recording(tx, aggregate_id, customer_id, events).await
        }
        NumberEvent::AGGREGATE => return apply_number(tx, aggregate_id, customer_id, events).await,
        AicallEvent::AGGREGATE => return apply_aicall(tx, aggregate_id, customer_id, events).await,
        _ => return Ok(()),
    }
    for e in events {
        let event: CustomerEvent = decode(e)?;
        match event {
            CustomerEvent::AgentCreated {
                agent_id,
                username,
                password_hash,
                permission,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO auth_agents (agent_id, customer_id, username, password_hash, permission) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(agent_id.as_uuid())
                .bind(customer_id)
                .bind(username)
                .bind(password_hash)
                .bind(permission.as_str())
                .execute(&mut **tx)
                .await?;
            }
            CustomerEvent::AgentUpdated {
                agent_id,
                permission,
                ..
            } => {
                sqlx::query("UPDATE auth_agents SET permission = $2 WHERE agent_id = $1")
                    .bind(agent_id.as_uuid())
                    .bind(permission.as_str())
                    .execute(&mut **tx)
                    .await?;
            }
            CustomerEvent::AgentDeleted { agent_id, .. } => {
                sqlx::query("DELETE FROM auth_agents WHERE agent_id = $1")
                    .bind(agent_id.as_uuid())
                    .execute(&mut **tx)
                    .await?;
            }
            CustomerEvent::AccessKeyCreated {
                key_id,
                token_hash,
                expire_at,
                ..
            } => {
                sqlx::query(
                    "INSERT INTO auth_access_keys (token_hash, key_id, customer_id, expire_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(token_hash)
                .bind(key_id.as_uuid())
                .bind(customer_id)
                .bind(expire_at)
                .execute(&mut **tx)
                .await?;
            }
            CustomerEvent::AccessKeyDeleted { key_id, .. } => {
                sqlx::query("DELETE FROM auth_access_keys WHERE key_id = $1")
                    .bind(key_id.as_uuid())
                    .execute(&mut **tx)
                    .await?;
            }
            CustomerEvent::CustomerCreated { webhook_secret, .. } => {
                sqlx::query("INSERT INTO webhook_secrets (customer_id, secret) VALUES ($1, $2)")
                    .bind(customer_id)
                    .bind(webhook_secret)
                    .execute(&mut **tx)
                    .await?;
            }
            CustomerEvent::WebhookSecretRotated {
                webhook_secret,
                previous_secret,
                previous_valid_until,
                ..
            } => {
                sqlx::query(
                    "UPDATE webhook_secrets SET secret = $2, previous_secret = $3, \
                     previous_valid_until = $4 WHERE customer_id = $1",
                )
                .bind(customer_id)
                .bind(webhook_secret)
                .bind(previous_secret)
                .bind(previous_valid_until)
                .execute(&mut **tx)
                .await?;
            }
            _ => {}
        }
    }
    Ok(())
}
