//! Outbound campaign commands: outplans, outdials and their targets, campaigns and their
//! status. The dialing itself is the campaign dialer's (process managers crate).

use super::calls::{check_sandbox, check_variables, parse_destinations, Address};
use super::error::{ApiResult, CmdError};
use super::state::{CmdState, Tenant};
use axum::extract::State;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use uuid::Uuid;
use vbin_app::StoredAggregate;
use vbin_domain::campaign::MAX_TARGET_DESTINATIONS;
use vbin_domain::{
    Campaign, CampaignCommand, NewCampaign, NewOutplan, Outdial, OutdialCommand, Outplan,
    OutplanCommand, Target, TargetCommand,
};
use vbin_event_schema::flow::SandboxScript;
use vbin_event_schema::{
    CampaignId, CampaignStatus, CustomerId, EndHandle, FlowId, OutdialId, OutplanId, QueueId,
    TargetId, TrunkId, E164,
};
use vbin_http::extract::{Json, Path};
use vbin_http::ApiError;

/// Most calls a campaign may keep in flight.
pub const MAX_CONCURRENT_CALLS: u32 = 1000;
/// Default calls in flight of a campaign without a queue.
pub const DEFAULT_CONCURRENT_CALLS: u32 = 10;

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    let n = name.chars().count();
    if n > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be at most 200 characters, without control characters",
        ));
    }
    Ok(())
}

pub(crate) fn in_range(field: &str, v: u32, lo: u32, hi: u32) -> Result<u32, ApiError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!("{field} must be {lo} to {hi}")))
    }
}

/// Fails with 404 unless aggregate `id` exists and belongs to `customer`.
pub(crate) async fn require<A: StoredAggregate>(
    s: &CmdState,
    id: Uuid,
    customer: CustomerId,
    what: &'static str,
) -> Result<A, CmdError> {
    Ok(s.app.find::<A>(id, customer, what).await?)
}

/// `POST /v1.0/outplans` body.
#[derive(Deserialize)]
pub struct CreateOutplan {
    #[serde(default)]
    name: String,
    source: Address,
    #[serde(default = "default_dial_timeout")]
    dial_timeout_ms: u32,
    #[serde(default)]
    try_interval_ms: u32,
    #[serde(default = "one")]
    max_try_count: u32,
    /// The SIP trunk of the campaign's calls (none: the sandbox).
    #[serde(default)]
    trunk_id: Option<Uuid>,
}

fn default_dial_timeout() -> u32 {
    super::calls::DEFAULT_DIAL_TIMEOUT_MS
}

fn one() -> u32 {
    1
}

/// A validated `POST /v1.0/outplans` body.
#[derive(Debug)]
pub struct ValidOutplan {
    /// Label (at most 200 characters, no control characters).
    pub name: String,
    /// Caller id.
    pub source: E164,
    /// 1000 to 300000.
    pub dial_timeout_ms: u32,
    /// 0 to 86400000.
    pub try_interval_ms: u32,
    /// 1 to 10.
    pub max_try_count: u32,
    /// The SIP trunk (checked to be the customer's by the handler).
    pub trunk_id: Option<TrunkId>,
}

impl CreateOutplan {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidOutplan, ApiError> {
        check_name(&self.name)?;
        Ok(ValidOutplan {
            source: self.source.parse("source")?,
            dial_timeout_ms: in_range("dial_timeout_ms", self.dial_timeout_ms, 1_000, 300_000)?,
            try_interval_ms: in_range("try_interval_ms", self.try_interval_ms, 0, 86_400_000)?,
            max_try_count: in_range("max_try_count", self.max_try_count, 1, 10)?,
            trunk_id: self.trunk_id.map(TrunkId),
            name: self.name,
        })
    }
}

/// `POST /v1.0/outplans` -> the outplan.
pub async fn create_outplan(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<CreateOutplan>,
) -> ApiResult {
    let b = b.validate()?;
    if let Some(trunk) = b.trunk_id {
        match s.app.live_trunk(c.customer_id, trunk).await {
            Ok(_) => {}
            Err(vbin_app::AppError::NotFound(_)) => {
                return Err(
                    vbin_app::AppError::Invalid(format!("trunk_id: no trunk {trunk}")).into(),
                )
            }
            Err(e) => return Err(e.into()),
        }
    }
    let plan = NewOutplan {
        outplan_id: OutplanId(vbin_app::new_id()),
        customer_id: c.customer_id,
        name: b.name,
        source: b.source,
        dial_timeout_ms: b.dial_timeout_ms,
        try_interval_ms: b.try_interval_ms,
        max_try_count: b.max_try_count,
        trunk_id: b.trunk_id,
    };
    let id = plan.outplan_id.as_uuid();
    let cmd = OutplanCommand::Create {
        plan,
        at: Utc::now(),
    };
    Ok(Json(
        s.app.create::<Outplan>(&acting, id, cmd).await?.view(),
    ))
}

/// `POST /v1.0/outdials` body.
#[derive(Deserialize)]
pub struct CreateOutdial {
    #[serde(default)]
    name: String,
}

impl CreateOutdial {
    /// The handler's checks, without I/O: the name.
    pub fn validate(self) -> Result<String, ApiError> {
        check_name(&self.name)?;
        Ok(self.name)
    }
}

/// `POST /v1.0/outdials` -> the outdial.
pub async fn create_outdial(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<CreateOutdial>,
) -> ApiResult {
    let name = b.validate()?;
    let id = OutdialId(vbin_app::new_id());
    let cmd = OutdialCommand::Create {
        outdial_id: id,
        customer_id: c.customer_id,
        name,
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Outdial>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `POST /v1.0/outdials/{id}/targets` body.
#[derive(Deserialize)]
pub struct CreateTarget {
    destinations: Vec<Address>,
    #[serde(default)]
    variables: Map<String, Value>,
    sandbox: Option<SandboxScript>,
}

/// A validated `POST /v1.0/outdials/{id}/targets` body.
#[derive(Debug)]
pub struct ValidTarget {
    /// 1 to [`MAX_TARGET_DESTINATIONS`] numbers, tried in order.
    pub destinations: Vec<E164>,
    /// Scalar variables.
    pub variables: Map<String, Value>,
    /// The sandbox far end's script for the target's calls.
    pub sandbox: Option<SandboxScript>,
}

impl CreateTarget {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidTarget, ApiError> {
        let destinations = parse_destinations(&self.destinations, MAX_TARGET_DESTINATIONS)?;
        check_variables(&self.variables)?;
        if let Some(s) = &self.sandbox {
            check_sandbox(s)?;
        }
        Ok(ValidTarget {
            destinations,
            variables: self.variables,
            sandbox: self.sandbox,
        })
    }
}

/// `POST /v1.0/outdials/{id}/targets` -> the target (pending).
pub async fn create_target(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Path(outdial): Path<Uuid>,
    Json(b): Json<CreateTarget>,
) -> ApiResult {
    let ValidTarget {
        destinations,
        variables,
        sandbox,
    } = b.validate()?;
    require::<Outdial>(&s, outdial, c.customer_id, "outdial").await?;
    let id = TargetId(vbin_app::new_id());
    let cmd = TargetCommand::Create {
        target_id: id,
        outdial_id: OutdialId(outdial),
        customer_id: c.customer_id,
        destinations,
        variables,
        sandbox,
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Target>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `POST /v1.0/campaigns` body.
#[derive(Deserialize)]
pub struct CreateCampaign {
    #[serde(default)]
    name: String,
    outplan_id: Uuid,
    outdial_id: Uuid,
    #[serde(default)]
    end_handle: EndHandle,
    service_level: Option<u32>,
    queue_id: Option<Uuid>,
    next_campaign_id: Option<Uuid>,
    max_concurrent_calls: Option<u32>,
    flow_id: Option<Uuid>,
}

/// A validated `POST /v1.0/campaigns` body (the referenced resources are checked by the
/// handler).
#[derive(Debug)]
pub struct ValidCampaign {
    /// Label.
    pub name: String,
    /// Dial policy.
    pub outplan_id: Uuid,
    /// Targets.
    pub outdial_id: Uuid,
    /// What to do when no target is left.
    pub end_handle: EndHandle,
    /// 1 to 1000 (default 100).
    pub service_level: u32,
    /// Queue for answered calls.
    pub queue_id: Option<Uuid>,
    /// Campaign to start after this one.
    pub next_campaign_id: Option<Uuid>,
    /// 1 to [`MAX_CONCURRENT_CALLS`] (default [`DEFAULT_CONCURRENT_CALLS`]).
    pub max_concurrent_calls: u32,
    /// Flow that answered calls run (not with a queue).
    pub flow_id: Option<Uuid>,
}

impl CreateCampaign {
    /// The handler's checks, without I/O.
    pub fn validate(self) -> Result<ValidCampaign, ApiError> {
        check_name(&self.name)?;
        let service_level = in_range("service_level", self.service_level.unwrap_or(100), 1, 1000)?;
        let max_concurrent_calls = in_range(
            "max_concurrent_calls",
            self.max_concurrent_calls
                .unwrap_or(DEFAULT_CONCURRENT_CALLS),
            1,
            MAX_CONCURRENT_CALLS,
        )?;
        if self.queue_id.is_some() && self.flow_id.is_some() {
            // Both would act on an answered call at once.
            return Err(ApiError::invalid(
                "queue_id and flow_id cannot both be set: answered calls either join the queue or run the flow",
            ));
        }
        Ok(ValidCampaign {
            name: self.name,
            outplan_id: self.outplan_id,
            outdial_id: self.outdial_id,
            end_handle: self.end_handle,
            service_level,
            queue_id: self.queue_id,
            next_campaign_id: self.next_campaign_id,
            max_concurrent_calls,
            flow_id: self.flow_id,
        })
    }
}

/// `POST /v1.0/campaigns` -> the campaign (pending).
pub async fn create_campaign(
    State(s): State<Arc<CmdState>>,
    Tenant { caller: c, acting }: Tenant,
    Json(b): Json<CreateCampaign>,
) -> ApiResult {
    let b = b.validate()?;
    require::<Outplan>(&s, b.outplan_id, c.customer_id, "outplan").await?;
    require::<Outdial>(&s, b.outdial_id, c.customer_id, "outdial").await?;
    if let Some(queue) = b.queue_id {
        require::<vbin_domain::Queue>(&s, queue, c.customer_id, "queue").await?;
    }
    if let Some(next) = b.next_campaign_id {
        require::<Campaign>(&s, next, c.customer_id, "next campaign").await?;
    }
    if let Some(flow) = b.flow_id {
        s.app.live_flow(c.customer_id, FlowId(flow)).await?;
    }
    let id = CampaignId(vbin_app::new_id());
    let cmd = CampaignCommand::Create {
        campaign: NewCampaign {
            campaign_id: id,
            customer_id: c.customer_id,
            name: b.name,
            outplan_id: OutplanId(b.outplan_id),
            outdial_id: OutdialId(b.outdial_id),
            end_handle: b.end_handle,
            service_level: b.service_level,
            queue_id: b.queue_id.map(QueueId),
            next_campaign_id: b.next_campaign_id.map(CampaignId),
            max_concurrent_calls: b.max_concurrent_calls,
            flow_id: b.flow_id.map(FlowId),
        },
        at: Utc::now(),
    };
    Ok(Json(
        s.app
            .create::<Campaign>(&acting, id.as_uuid(), cmd)
            .await?
            .view(),
    ))
}

/// `PUT /v1.0/campaigns/{id}/status` body.
#[derive(Deserialize)]
pub struct SetStatus {
    /// `running` or `stopped` (the campaign refuses the others).
    pub status: CampaignStatus,
}

/// `PUT /v1.0/campaigns/{id}/status` `{status: running|stopped}` -> the campaign.
pub async fn set_campaign_status(
    State(s): State<Arc<CmdState>>,
    Tenant { acting, .. }: Tenant,
    Path(id): Path<Uuid>,
    Json(b): Json<SetStatus>,
) -> ApiResult {
    let cmd = CampaignCommand::Request {
        status: b.status,
        at: Utc::now(),
    };
    Ok(Json(
        s.app.update::<Campaign>(&acting, id, cmd).await?.view(),
    ))
}
