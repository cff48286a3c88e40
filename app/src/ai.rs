//! AI voice agents: assistants (the engine key sealed on its way in) and their conversations
//! on calls, started through the API or a flow's `ai_talk`, limited per customer.

use crate::seal::Sealer;
use crate::{Acting, App, AppError};
use chrono::Utc;
use uuid::Uuid;
use vbin_domain::ai::check_engine_key;
use vbin_domain::{Ai, AiCommand, Aicall, AicallCommand, Call, NewAicall};
use vbin_event_schema::{
    ActiveflowId, AiId, AiSettings, AicallEndReason, AicallId, CallId, CallStatus, CustomerId,
};

/// What to do with the engine key on an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// Keep the current one (or none).
    Keep,
    /// Remove it.
    Remove,
    /// Replace it (in clear; sealed here).
    Set(String),
}

/// What a flow's `ai_talk` asks of its conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TalkOptions {
    /// The flow's `ai_talk` execution: (activeflow, seq).
    pub execution: Option<(ActiveflowId, u64)>,
    /// Language instead of the assistant's.
    pub language: Option<String>,
    /// Longest conversation, in seconds.
    pub max_secs: Option<u32>,
}

impl App {
    /// The platform's sealer (engine keys, trunk passwords), or why secrets cannot be kept.
    pub(crate) fn sealer(&self) -> Result<&Sealer, AppError> {
        self.sealer.as_deref().ok_or_else(|| {
            AppError::Invalid(
                "this platform has no sealing key: secrets (engine keys, trunk passwords) \
                 cannot be kept"
                    .into(),
            )
        })
    }

    /// `plain` sealed for the resource `owner`; `what` names the field in errors.
    pub(crate) fn seal_secret(
        &self,
        owner: Uuid,
        plain: &str,
        what: &str,
    ) -> Result<String, AppError> {
        self.sealer()?
            .seal(owner.as_bytes(), plain)
            .map_err(|e| AppError::Invalid(format!("{what}: {e}")))
    }

    /// A secret sealed for the resource `owner`, in clear; `what` names the field in errors.
    pub(crate) fn open_secret(
        &self,
        owner: Uuid,
        sealed: &str,
        what: &str,
    ) -> Result<String, AppError> {
        self.sealer()?
            .open(owner.as_bytes(), sealed)
            .map_err(|e| AppError::Invalid(format!("{what}: {e}")))
    }

    /// The key sealed for assistant `id`.
    fn seal_key(&self, id: Uuid, key: &str) -> Result<String, AppError> {
        check_engine_key(key)?;
        self.seal_secret(id, key, "engine_key")
    }

    /// Creates an assistant; `engine_key` (in clear) is sealed into its events.
    pub async fn create_ai(
        &self,
        acting: &Acting,
        mut settings: AiSettings,
        engine_key: Option<String>,
    ) -> Result<Ai, AppError> {
        let id = AiId(crate::new_id());
        settings.engine_key_sealed = engine_key
            .map(|k| self.seal_key(id.as_uuid(), &k))
            .transpose()?;
        let cmd = AiCommand::Create {
            ai_id: id,
            customer_id: acting.customer,
            settings,
            at: Utc::now(),
        };
        self.create::<Ai>(acting, id.as_uuid(), cmd).await
    }

    /// Replaces an assistant's settings (conversations under way keep theirs).
    pub async fn update_ai(
        &self,
        acting: &Acting,
        id: Uuid,
        mut settings: AiSettings,
        key: KeyChange,
    ) -> Result<Ai, AppError> {
        settings.engine_key_sealed = match key {
            KeyChange::Keep => {
                let current: Ai = self.find(id, acting.customer, "ai").await?;
                current.settings.and_then(|s| s.engine_key_sealed)
            }
            KeyChange::Remove => None,
            KeyChange::Set(k) => Some(self.seal_key(id, &k)?),
        };
        let cmd = AiCommand::Update {
            settings,
            at: Utc::now(),
        };
        self.update::<Ai>(acting, id, cmd).await
    }

    /// Deletes an assistant (conversations under way go on).
    pub async fn delete_ai(&self, acting: &Acting, id: Uuid) -> Result<Ai, AppError> {
        self.update::<Ai>(acting, id, AiCommand::Delete { at: Utc::now() })
            .await
    }

    /// The engine key of a conversation's assistant, in clear (for the media part).
    pub fn open_engine_key(
        &self,
        ai: AiId,
        settings: &AiSettings,
    ) -> Result<Option<String>, AppError> {
        settings
            .engine_key_sealed
            .as_deref()
            .map(|s| self.open_secret(ai.as_uuid(), s, "engine_key"))
            .transpose()
    }

    /// Starts a conversation of assistant `ai` on the tenant's answered call `call` (as
    /// `id`: a flow's `ai_talk` derives it, so a redelivery finds it), with what the flow's
    /// `ai_talk` asked if one did. Refused when the customer has its limit of conversations
    /// under way.
    pub async fn start_aicall(
        &self,
        acting: &Acting,
        id: AicallId,
        ai: AiId,
        call: CallId,
        talk: TalkOptions,
    ) -> Result<Aicall, AppError> {
        let customer = acting.customer;
        let assistant: Ai = self.find(ai.as_uuid(), customer, "ai").await?;
        let mut settings = match assistant.settings {
            Some(s) if assistant.live() => s,
            _ => return Err(AppError::NotFound("ai")),
        };
        if let Some(l) = talk.language {
            settings.stt_language = l;
        }
        let c: Call = self.find(call.as_uuid(), customer, "call").await?;
        if c.status != CallStatus::Progressing {
            return Err(AppError::Conflict(
                "only an answered call (progressing) can talk to an assistant".into(),
            ));
        }
        self.check_aicall_limit(customer).await?;
        let cmd = AicallCommand::Create {
            aicall: Box::new(NewAicall {
                aicall_id: id,
                customer_id: customer,
                ai_id: ai,
                settings,
                reference_id: call,
                activeflow_id: talk.execution.map(|(a, _)| a),
                activeflow_seq: talk.execution.map(|(_, seq)| seq),
                max_secs: talk.max_secs,
            }),
            at: Utc::now(),
        };
        self.create::<Aicall>(acting, id.as_uuid(), cmd).await
    }

    /// Refuses a new conversation when the customer has its limit under way. Exact at
    /// commit for each start taken alone (`aicall_live` is written with the events); starts
    /// racing each other may together pass it by the number racing.
    async fn check_aicall_limit(&self, customer: CustomerId) -> Result<(), AppError> {
        let live: i64 =
            sqlx::query_scalar("SELECT count(*) FROM aicall_live WHERE customer_id = $1")
                .bind(customer.as_uuid())
                .fetch_one(&self.pool)
                .await?;
        if live >= i64::from(self.max_live_aicalls) {
            return Err(AppError::Limit(format!(
                "{live} AI conversations are under way: the limit is {}",
                self.max_live_aicalls
            )));
        }
        Ok(())
    }

    /// Ends a conversation through the API (the flow that started it goes on).
    pub async fn stop_aicall(&self, acting: &Acting, id: Uuid) -> Result<Aicall, AppError> {
        let cmd = AicallCommand::Terminate {
            reason: AicallEndReason::StoppedByApi,
            detail: None,
            at: Utc::now(),
        };
        self.update::<Aicall>(acting, id, cmd).await
    }
}

/// The conversations under way on `call`, exact at commit (`aicall_live` is written with the
/// conversations' events; the read model may lag behind).
pub async fn live_on_call(pool: &sqlx::PgPool, call: CallId) -> Result<Vec<AicallId>, sqlx::Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT aicall_id FROM aicall_live WHERE call_id = $1")
        .bind(call.as_uuid())
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().map(AicallId).collect())
}
