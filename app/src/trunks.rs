//! SIP trunks: a customer's carriers. The password is sealed here, on its way in, with the
//! platform's sealing key (bound to the trunk's id), so events and logs never hold it in clear.

use crate::ai::KeyChange;
use crate::{Acting, App, AppError};
use chrono::Utc;
use uuid::Uuid;
use vbin_domain::trunk::check_password;
use vbin_domain::{Trunk, TrunkCommand};
use vbin_event_schema::{CustomerId, TrunkId, TrunkSettings};

/// What the SIP carrier needs of a trunk to place a call through it.
#[derive(Clone, Debug)]
pub struct DialTrunk {
    /// Its settings (host, port, transport, user, codecs).
    pub settings: TrunkSettings,
    /// Its password, opened (never logged, never in an event).
    pub password: Option<String>,
}

impl App {
    /// The customer's live trunk `id`: another customer's trunk, or a deleted one, is not
    /// found. Its password stays sealed.
    pub async fn live_trunk(
        &self,
        customer: CustomerId,
        id: TrunkId,
    ) -> Result<TrunkSettings, AppError> {
        let trunk: Trunk = self.find(id.as_uuid(), customer, "trunk").await?;
        match (trunk.deleted, trunk.settings) {
            (false, Some(s)) => Ok(s),
            _ => Err(AppError::NotFound("trunk")),
        }
    }

    /// The customer's live trunk `id`, its password opened: what a call placed through it
    /// needs (see [`App::live_trunk`]).
    pub async fn dial_trunk(
        &self,
        customer: CustomerId,
        id: TrunkId,
    ) -> Result<DialTrunk, AppError> {
        let settings = self.live_trunk(customer, id).await?;
        let password = settings
            .password_sealed
            .as_deref()
            .map(|sealed| self.open_secret(id.as_uuid(), sealed, "password"))
            .transpose()?;
        Ok(DialTrunk { settings, password })
    }

    /// The password sealed for trunk `id`.
    fn seal_password(&self, id: Uuid, password: &str) -> Result<String, AppError> {
        check_password(password)?;
        self.seal_secret(id, password, "password")
    }

    /// Creates a trunk; `password` (in clear) is sealed into its events.
    pub async fn create_trunk(
        &self,
        acting: &Acting,
        mut settings: TrunkSettings,
        password: Option<String>,
    ) -> Result<Trunk, AppError> {
        let id = TrunkId(crate::new_id());
        settings.password_sealed = password
            .map(|p| self.seal_password(id.as_uuid(), &p))
            .transpose()?;
        let cmd = TrunkCommand::Create {
            trunk_id: id,
            customer_id: acting.customer,
            settings,
            at: Utc::now(),
        };
        self.create::<Trunk>(acting, id.as_uuid(), cmd).await
    }

    /// Replaces a trunk's settings.
    pub async fn update_trunk(
        &self,
        acting: &Acting,
        id: Uuid,
        mut settings: TrunkSettings,
        password: KeyChange,
    ) -> Result<Trunk, AppError> {
        settings.password_sealed = match password {
            KeyChange::Keep => {
                let current: Trunk = self.find(id, acting.customer, "trunk").await?;
                current.settings.and_then(|s| s.password_sealed)
            }
            KeyChange::Remove => None,
            KeyChange::Set(p) => Some(self.seal_password(id, &p)?),
        };
        let cmd = TrunkCommand::Update {
            settings,
            at: Utc::now(),
        };
        self.update::<Trunk>(acting, id, cmd).await
    }

    /// Deletes a trunk.
    pub async fn delete_trunk(&self, acting: &Acting, id: Uuid) -> Result<Trunk, AppError> {
        self.update::<Trunk>(acting, id, TrunkCommand::Delete { at: Utc::now() })
            .await
    }
}
