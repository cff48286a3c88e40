//! Property tests of the command API's JSON decoding, in process and without a server: request
//! body bytes go through what every command handler runs before it touches a database — the
//! 64 KiB body limit and the envelope `Json` extractor (content type, syntax, serde), the body's
//! pure `validate()` — and, for the commands whose rules live in an aggregate (money, campaign
//! status, calls, targets, transcribes), the aggregate's decision.
//!
//! Whatever the input: no panic, and either a value fit to store or a client error (4xx with
//! the JSON error envelope), never a 5xx. For generated valid inputs: decoding succeeds and the
//! validated value carries exactly the input.
//!
//! Default 512 cases per property (about a second in a debug build); for a long run:
//! `PROPTEST_CASES=20000 cargo nextest run -p vbin-commands --test decode_props`.

use axum::body::{to_bytes, Body};
use axum::extract::{DefaultBodyLimit, FromRequest};
use axum::http::{header, Request, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use futures::executor::block_on;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;
use tower::{service_fn, Layer, ServiceExt};
use uuid::Uuid;
use vbin_app::ExecError;
use vbin_commands::api::error::CmdError;
use vbin_commands::api::{billing, calls, campaigns, flows, identity, queues, transcribes};
use vbin_domain::billing::MAX_MICROS;
use vbin_domain::{
    BillingAccount, BillingCommand, Call, CallCommand, Campaign, CampaignCommand, Customer,
    CustomerCommand, DomainError, NewAgent, NewCall, NewCampaign, NewOutplan, NewQueue,
    NewTranscribe, Outplan, OutplanCommand, Queue, QueueCommand, Target, TargetCommand, Transcribe,
    TranscribeCommand,
};
use vbin_event_schema::{
    AgentId, AgentStatus, CallDirection, CallId, CampaignId, CampaignStatus, CustomerId, EndHandle,
    FlowId, Micros, OutdialId, OutplanId, Permission, QueueId, RoutingMethod, TargetId,
    TranscribeDirection, TranscribeId, WebhookMethod,
};
use vbin_http::extract::Json;
use vbin_http::mw::MAX_BODY_BYTES;
use vbin_http::ApiError;

const JSON: Option<&str> = Some("application/json");

// ---------------------------------------------------------------------------------------------
// The pipeline

/// The handlers' extraction: the body limit layer around the envelope `Json` extractor.
fn extract<T: DeserializeOwned + Send + 'static>(
    bytes: &[u8],
    content_type: Option<&str>,
) -> Result<T, ApiError> {
    let mut req = Request::post("/v1.0/x")
        .body(Body::from(bytes.to_vec()))
        .unwrap();
    if let Some(ct) = content_type {
        req.headers_mut()
            .insert(header::CONTENT_TYPE, ct.parse().unwrap());
    }
    let svc =
        DefaultBodyLimit::max(MAX_BODY_BYTES).layer(service_fn(|req: Request<Body>| async move {
            Ok::<_, Infallible>(Json::<T>::from_request(req, &()).await.map(|Json(t)| t))
        }));
    block_on(svc.oneshot(req)).unwrap()
}

fn at() -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000, 0).unwrap()
}

/// The aggregate's decision on `state` (applied to it), as the executor would map its error.
fn decide<A>(state: &mut A, cmd: A::Command) -> Result<Vec<A::Event>, ApiError>
where
    A: Aggregate<Services = (), Error = DomainError>,
{
    let sink = EventSink::default();
    block_on(state.handle(cmd, &(), &sink)).map_err(|e| CmdError::from(ExecError::Domain(e)).0)?;
    Ok(block_on(sink.collect()))
}

fn stored<E: Serialize>(events: &[E]) -> Value {
    serde_json::to_value(events).unwrap()
}

/// An open account with `balance` (negative after charges, down to `i64::MIN` saturated).
fn opened_account(balance: i64) -> BillingAccount {
    BillingAccount {
        customer_id: Some(CustomerId::new()),
        balance_micros: Micros(balance),
        rate_micros_per_minute: Micros(10_000),
        tm_create: Some(at()),
        tm_update: Some(at()),
    }
}

fn campaign_in(status: CampaignStatus) -> Campaign {
    let mut c = Campaign::default();
    let create = CampaignCommand::Create {
        campaign: NewCampaign {
            campaign_id: CampaignId::new(),
            customer_id: CustomerId::new(),
            name: String::new(),
            outplan_id: OutplanId::new(),
            outdial_id: OutdialId::new(),
            end_handle: EndHandle::Stop,
            service_level: 100,
            queue_id: None,
            next_campaign_id: None,
            max_concurrent_calls: 10,
            flow_id: None,
        },
        at: at(),
    };
    decide(&mut c, create).unwrap();
    let steps: &[CampaignCommand] = match status {
        CampaignStatus::Pending => &[],
        CampaignStatus::Running => &[CampaignCommand::Request {
            status: CampaignStatus::Running,
            at: at(),
        }],
        CampaignStatus::Stopping => unimplemented!("needs a call in flight"),
        CampaignStatus::Stopped => &[
            CampaignCommand::Request {
                status: CampaignStatus::Running,
                at: at(),
            },
            CampaignCommand::Request {
                status: CampaignStatus::Stopped,
                at: at(),
            },
        ],
        CampaignStatus::Completed => &[
            CampaignCommand::Request {
                status: CampaignStatus::Running,
                at: at(),
            },
            CampaignCommand::Complete { at: at() },
        ],
    };
    for s in steps {
        decide(&mut c, s.clone()).unwrap();
    }
    c
}

/// One command endpoint: a valid body (the seed of mutations) and what its handler runs on the
/// body before any I/O, returning what would be stored (or looked up) on success.
struct Endpoint {
    name: &'static str,
    valid: fn() -> Value,
    run: fn(&[u8], Option<&str>) -> Result<Value, ApiError>,
}

const U1: &str = "0191a0d2-7c4e-7b0e-8f00-000000000001";
const U2: &str = "0191a0d2-7c4e-7b0e-8f00-000000000002";

fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint {
            name: "POST /v1.0/calls",
            valid: || {
                json!({"source": "+15550001111",
                    "destinations": ["+15550002222", {"type": "tel", "target": "+15550003333"}],
                    "variables": {"k": "v", "talk_seconds": 5}, "dial_timeout_ms": 20000,
                    "sandbox": {"script": [{"at_ms": 500, "say": "hello"}, {"at_ms": 900, "digits": "2#"},
                        {"at_ms": 3000, "hangup": true}]}})
            },
            run: |b, ct| {
                let v = extract::<calls::CreateCalls>(b, ct)?.validate()?;
                let mut events = Vec::new();
                for destination in v.destinations {
                    let call = NewCall {
                        call_id: CallId::new(),
                        customer_id: CustomerId::new(),
                        source: v.source.clone(),
                        destination,
                        variables: v.variables.clone(),
                        dial_timeout_ms: v.dial_timeout_ms,
                        campaign_id: None,
                        direction: CallDirection::Outgoing,
                        activeflow_id: None,
                        sandbox: v.sandbox.clone(),
                        trunk_id: None,
                        master_call_id: None,
                    };
                    let cmd = CallCommand::Create { call, at: at() };
                    events.extend(decide(&mut Call::default(), cmd)?);
                }
                Ok(stored(&events))
            },
        },
        Endpoint {
            name: "POST /v1.0/customers/{id}/balance_add",
            valid: || json!({"amount_micros": 1_000_000}),
            run: |b, ct| {
                let b = extract::<billing::BalanceAdd>(b, ct)?;
                let cmd = BillingCommand::AddBalance {
                    amount_micros: Micros(b.amount_micros),
                    at: at(),
                };
                // Near the top and far below zero (charges saturate): a refusal is a 4xx.
                for balance in [MAX_MICROS - 1, -MAX_MICROS, i64::MIN] {
                    if let Err(e) = decide(&mut opened_account(balance), cmd.clone()) {
                        assert!(e.status.is_client_error(), "{}", e.message);
                    }
                }
                Ok(stored(&decide(&mut opened_account(0), cmd)?))
            },
        },
        Endpoint {
            name: "PUT /v1.0/customers/{id}/billing_account",
            valid: || json!({"rate_micros_per_minute": 10_000}),
            run: |b, ct| {
                let b = extract::<billing::SetRate>(b, ct)?;
                let cmd = BillingCommand::SetRate {
                    rate_micros_per_minute: Micros(b.rate_micros_per_minute),
                    at: at(),
                };
                Ok(stored(&decide(&mut opened_account(0), cmd)?))
            },
        },
        Endpoint {
            name: "POST /v1.0/customers",
            valid: || {
                json!({"name": "Acme", "username": "acme.admin", "password": "correct horse",
                    "webhook_uri": "https://example.com/hook", "webhook_method": "PUT",
                    "balance_micros": 5_000_000, "rate_micros_per_minute": 10_000})
            },
            run: |b, ct| {
                let v = extract::<identity::CreateCustomer>(b, ct)?.validate()?;
                let customer_id = CustomerId::new();
                let open = BillingCommand::Open {
                    customer_id,
                    balance_micros: v.balance_micros,
                    rate_micros_per_minute: v.rate_micros_per_minute,
                    at: at(),
                };
                let account = decide(&mut BillingAccount::default(), open)?;
                let create = CustomerCommand::Create {
                    customer_id,
                    name: v.name,
                    webhook_uri: v.webhook_uri,
                    webhook_method: v.webhook_method,
                    webhook_secret: "secret".into(),
                    first_agent: NewAgent {
                        agent_id: AgentId::new(),
                        username: v.username.clone(),
                        password_hash: "$argon2id$hash".into(),
                        name: v.username,
                        permission: Permission::Admin,
                    },
                    at: at(),
                };
                let customer = decide(&mut Customer::default(), create)?;
                Ok(json!([stored(&account), stored(&customer)]))
            },
        },
        Endpoint {
            name: "POST /auth/login",
            valid: || json!({"username": "acme.admin", "password": "correct horse"}),
            run: |b, ct| {
                let v = extract::<identity::Login>(b, ct)?.validate()?;
                // The username is looked up in Postgres; the password only hashed.
                Ok(json!({"username": v.username}))
            },
        },
        Endpoint {
            name: "PUT /v1.0/customer",
            valid: || json!({"webhook_uri": "https://example.com/hook", "webhook_method": "POST"}),
            run: |b, ct| {
                let v = extract::<identity::UpdateCustomer>(b, ct)?.validate()?;
                Ok(json!({"webhook_uri": v.webhook_uri, "webhook_method": v.webhook_method}))
            },
        },
        Endpoint {
            name: "POST /v1.0/accesskeys",
            valid: || json!({"name": "ci", "expire_sec": 3600}),
            run: |b, ct| {
                let v = extract::<identity::CreateAccessKey>(b, ct)?.validate()?;
                // The handler adds expire_sec to now: must not overflow.
                let expire_at = v.expire_sec.map(|e| at() + chrono::Duration::seconds(e));
                Ok(json!({"name": v.name, "expire_at": expire_at}))
            },
        },
        Endpoint {
            name: "POST /v1.0/agents",
            valid: || {
                json!({"username": "agent.one", "password": "correct horse", "name": "One",
                    "permission": "agent"})
            },
            run: |b, ct| {
                let v = extract::<identity::CreateAgent>(b, ct)?.validate()?;
                Ok(json!({"username": v.username, "name": v.name, "permission": v.permission}))
            },
        },
        Endpoint {
            name: "PUT /v1.0/agents/{id}",
            valid: || json!({"name": "One", "permission": "admin"}),
            run: |b, ct| {
                let v = extract::<identity::UpdateAgent>(b, ct)?.validate()?;
                Ok(json!({"name": v.name, "permission": v.permission}))
            },
        },
        Endpoint {
            name: "PUT /v1.0/agents/{id}/status",
            valid: || json!({"status": "available"}),
            run: |b, ct| {
                let v = extract::<identity::AgentStatusBody>(b, ct)?;
                Ok(json!({"status": v.status}))
            },
        },
        Endpoint {
            name: "POST /v1.0/outplans",
            valid: || {
                json!({"name": "plan", "source": "+15550001111", "dial_timeout_ms": 30000,
                    "try_interval_ms": 60000, "max_try_count": 3})
            },
            run: |b, ct| {
                let v = extract::<campaigns::CreateOutplan>(b, ct)?.validate()?;
                let plan = NewOutplan {
                    outplan_id: OutplanId::new(),
                    customer_id: CustomerId::new(),
                    name: v.name,
                    source: v.source,
                    dial_timeout_ms: v.dial_timeout_ms,
                    try_interval_ms: v.try_interval_ms,
                    max_try_count: v.max_try_count,
                    trunk_id: v.trunk_id,
                };
                let cmd = OutplanCommand::Create { plan, at: at() };
                Ok(stored(&decide(&mut Outplan::default(), cmd)?))
            },
        },
        Endpoint {
            name: "POST /v1.0/outdials",
            valid: || json!({"name": "list"}),
            run: |b, ct| {
                let name = extract::<campaigns::CreateOutdial>(b, ct)?.validate()?;
                Ok(json!({"name": name}))
            },
        },
        Endpoint {
            name: "POST /v1.0/outdials/{id}/targets",
            valid: || {
                json!({"destinations": ["+15550002222", "+4930123456"], "variables": {"a": 1},
                             "sandbox": {"script": [{"at_ms": 500, "digits": "2"}]}})
            },
            run: |b, ct| {
                let v = extract::<campaigns::CreateTarget>(b, ct)?.validate()?;
                let cmd = TargetCommand::Create {
                    target_id: TargetId::new(),
                    outdial_id: OutdialId::new(),
                    customer_id: CustomerId::new(),
                    destinations: v.destinations,
                    variables: v.variables,
                    sandbox: v.sandbox,
                    at: at(),
                };
                Ok(stored(&decide(&mut Target::default(), cmd)?))
            },
        },
        Endpoint {
            name: "POST /v1.0/campaigns",
            valid: || {
                json!({"name": "c", "outplan_id": U1, "outdial_id": U2, "end_handle": "continue",
                    "service_level": 100, "next_campaign_id": U2,
                    "max_concurrent_calls": 10, "flow_id": U1})
            },
            run: |b, ct| {
                let v = extract::<campaigns::CreateCampaign>(b, ct)?.validate()?;
                let campaign = NewCampaign {
                    campaign_id: CampaignId::new(),
                    customer_id: CustomerId::new(),
                    name: v.name,
                    outplan_id: OutplanId(v.outplan_id),
                    outdial_id: OutdialId(v.outdial_id),
                    end_handle: v.end_handle,
                    service_level: v.service_level,
                    queue_id: v.queue_id.map(QueueId),
                    next_campaign_id: v.next_campaign_id.map(CampaignId),
                    max_concurrent_calls: v.max_concurrent_calls,
                    flow_id: v.flow_id.map(FlowId),
                };
                let cmd = CampaignCommand::Create { campaign, at: at() };
                Ok(stored(&decide(&mut Campaign::default(), cmd)?))
            },
        },
        Endpoint {
            name: "PUT /v1.0/campaigns/{id}/status",
            valid: || json!({"status": "running"}),
            run: |b, ct| {
                let v = extract::<campaigns::SetStatus>(b, ct)?;
                let mut events = Vec::new();
                for from in [
                    CampaignStatus::Pending,
                    CampaignStatus::Running,
                    CampaignStatus::Stopped,
                    CampaignStatus::Completed,
                ] {
                    let cmd = CampaignCommand::Request {
                        status: v.status,
                        at: at(),
                    };
                    match decide(&mut campaign_in(from), cmd) {
                        Ok(e) => events.extend(e),
                        // Refused from a completed campaign (409), whatever was asked.
                        Err(e) if from == CampaignStatus::Completed => {
                            assert_eq!(e.status, StatusCode::CONFLICT)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(stored(&events))
            },
        },
        Endpoint {
            name: "POST /v1.0/queues",
            valid: || {
                json!({"name": "q", "routing_method": "linear", "agent_ids": [U1, U2],
                    "wait_timeout_ms": 60000})
            },
            run: |b, ct| {
                let v = extract::<queues::QueueBody>(b, ct)?.validate()?;
                let queue = NewQueue {
                    queue_id: QueueId::new(),
                    customer_id: CustomerId::new(),
                    name: v.name,
                    routing_method: v.routing_method,
                    agent_ids: v.agent_ids,
                    wait_timeout_ms: v.wait_timeout_ms,
                    wait_flow_id: v.wait_flow_id,
                };
                let cmd = QueueCommand::Create { queue, at: at() };
                Ok(stored(&decide(&mut Queue::default(), cmd)?))
            },
        },
        Endpoint {
            name: "POST /v1.0/queues/{id}/calls",
            valid: || json!({"call_id": U1}),
            run: |b, ct| {
                let v = extract::<queues::JoinBody>(b, ct)?;
                Ok(json!({"call_id": v.call_id}))
            },
        },
        Endpoint {
            name: "POST /v1.0/transcribes",
            valid: || {
                json!({"reference_type": "call", "reference_id": U1, "language": "en-US",
                    "direction": "in"})
            },
            run: |b, ct| {
                let v = extract::<transcribes::TranscribeBody>(b, ct)?.validate()?;
                let transcribe = NewTranscribe {
                    transcribe_id: TranscribeId::new(),
                    customer_id: CustomerId::new(),
                    reference: v.reference,
                    language: v.language,
                    direction: v.direction,
                    aicall_id: None,
                };
                let cmd = TranscribeCommand::Start {
                    transcribe,
                    at: at(),
                };
                Ok(stored(&decide(&mut Transcribe::default(), cmd)?))
            },
        },
        Endpoint {
            name: "POST /v1.0/flows",
            valid: || {
                json!({"name": "ivr", "detail": "menu", "actions": [
                    {"id": U1, "type": "talk", "option": {"text": "press 1"}},
                    {"type": "digits_receive", "option": {"duration": 3000, "length": 1}},
                    {"type": "branch", "option": {"target_ids": {"1": U1}}},
                    {"type": "goto", "option": {"target_id": U1, "loop_count": 2}},
                    {"type": "hangup"}]})
            },
            run: |b, ct| {
                let v = extract::<flows::FlowBody>(b, ct)?.validate()?;
                let cmd = vbin_domain::FlowCommand::Create {
                    flow_id: FlowId::new(),
                    customer_id: CustomerId::new(),
                    name: v.name,
                    detail: v.detail,
                    actions: v.actions,
                    at: at(),
                };
                Ok(stored(&decide(&mut vbin_domain::Flow::default(), cmd)?))
            },
        },
    ]
}

/// Postgres cannot store a NUL character in `text` or `jsonb` (it fails the insert or the
/// query, which the API reports as 503): nothing accepted may contain one.
fn storable(v: &Value) -> bool {
    match v {
        Value::String(s) => !s.contains('\0'),
        Value::Array(a) => a.iter().all(storable),
        Value::Object(m) => m.iter().all(|(k, v)| !k.contains('\0') && storable(v)),
        _ => true,
    }
}

/// The outcome of one body on one endpoint is acceptable: a storable value, or a 4xx whose
/// response is the JSON error envelope.
fn check(ep: &Endpoint, out: Result<Value, ApiError>) -> Result<Option<ApiError>, TestCaseError> {
    match out {
        Ok(v) => {
            prop_assert!(storable(&v), "{}: accepted a NUL: {v}", ep.name);
            Ok(None)
        }
        Err(e) => {
            prop_assert!(
                e.status.is_client_error(),
                "{}: {} {} {}",
                ep.name,
                e.status,
                e.reason,
                e.message
            );
            let resp = e.clone().into_response();
            prop_assert_eq!(resp.status(), e.status);
            let body = block_on(to_bytes(resp.into_body(), usize::MAX)).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(&body["error"]["status"], &json!(e.status.as_u16()));
            prop_assert_eq!(&body["error"]["reason"], &json!(e.reason));
            Ok(Some(e))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input

/// Every field name of every body, so that generated objects often hit real fields.
const FIELDS: &[&str] = &[
    "source",
    "destinations",
    "variables",
    "dial_timeout_ms",
    "type",
    "target",
    "talk_seconds",
    "amount_micros",
    "rate_micros_per_minute",
    "name",
    "username",
    "password",
    "webhook_uri",
    "webhook_method",
    "balance_micros",
    "expire_sec",
    "permission",
    "status",
    "try_interval_ms",
    "max_try_count",
    "outplan_id",
    "outdial_id",
    "end_handle",
    "service_level",
    "queue_id",
    "next_campaign_id",
    "max_concurrent_calls",
    "flow_id",
    "routing_method",
    "agent_ids",
    "wait_timeout_ms",
    "call_id",
    "reference_type",
    "reference_id",
    "language",
    "direction",
];

const ODD: &[&str] = &[
    "",
    " ",
    "+",
    "+1",
    "+15550002000",
    "+015550002000",
    "+1555000200012345",
    "15550002000",
    "+1555\u{0}0002000",
    "\u{0}",
    "a\u{0}b",
    "😀",
    "\u{202e}evil",
    "\u{feff}",
    "\u{7f}",
    "\t\n\r",
    "tel",
    "call",
    "en-US",
    "zh-Hant-TW",
    "in",
    "out",
    "both",
    "running",
    "stopped",
    "completed",
    "available",
    "offline",
    "admin",
    "agent",
    "POST",
    "PUT",
    "get",
    "linear",
    "ringall",
    "continue",
    "https://example.com/hook",
    "http://example.com/\u{0}",
    "http://[::1]:80/x",
    "javascript:alert(1)",
    "http://",
    "' OR 1=1 --",
    "%s%s%n",
    "null",
    "-1",
    "1e999",
    "00000000-0000-0000-0000-000000000000",
    U1,
    "0191a0d2-7c4e-7b0e-8f00-00000000000",
];

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(ODD).prop_map(str::to_string),
        3 => any::<String>(),
        2 => "[\\x00-\\x1f\\x7f\u{80}-\u{9f}a-z+0-9]{0,12}",
        1 => "\\+[0-9]{0,18}",
        1 => (prop::sample::select(vec!["x", "é", "😀", "\u{0}"]), 0usize..5000)
            .prop_map(|(c, n)| c.repeat(n)),
        1 => Just("y".repeat(70_000)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(-1),
            json!(i64::MAX),
            json!(i64::MIN),
            json!(u64::MAX),
            json!(i64::MAX as u64 + 1),
            json!(u32::MAX),
            json!(u32::MAX as u64 + 1),
            json!(i32::MIN),
            json!(999),
            json!(1000),
            json!(300_000),
            json!(300_001),
            json!(3600),
            json!(3601),
            json!(MAX_MICROS),
            json!(MAX_MICROS + 1),
            json!(identity::MAX_EXPIRE_SEC + 1),
            json!(0.5),
            json!(-0.0),
            json!(1000.0),
            json!(1e308),
            json!(-1e308),
            json!(f64::EPSILON),
            json!(5e-324),
        ]),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        1 => string().prop_map(|s| s.chars().take(80).collect()),
    ]
}

/// Arbitrary JSON: nulls, bools, extreme numbers, odd and long strings, arrays and objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A change to a valid body.
#[derive(Clone, Debug)]
enum Mutation {
    /// Drop the i-th field.
    Remove(usize),
    /// Replace the i-th field's value.
    Replace(usize, Value),
    /// Add (or overwrite) a field.
    Insert(String, Value),
    /// Wrap the i-th field's value in an array.
    Wrap(usize),
    /// Insert a character at some place of the i-th string (value or key, at any depth).
    Poison(usize, usize, char),
    /// Replace the whole body.
    Whole(Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<usize>().prop_map(Mutation::Remove),
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        1 => (key(), json_value()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        1 => any::<usize>().prop_map(Mutation::Wrap),
        3 => (any::<usize>(), any::<usize>(), prop::sample::select(POISON))
            .prop_map(|(i, at, c)| Mutation::Poison(i, at, c)),
        1 => json_value().prop_map(Mutation::Whole),
    ]
}

/// Characters that are valid JSON but odd in a field: NUL (which Postgres cannot store), other
/// controls, bidi and zero-width marks, the last code points.
const POISON: &[char] = &[
    '\0',
    '\0',
    '\0',
    '\u{1}',
    '\n',
    '\u{7f}',
    '\u{85}',
    '\u{202e}',
    '\u{feff}',
    '\u{fffd}',
    '\u{10ffff}',
    '😀',
];

fn count_strings(v: &Value) -> usize {
    match v {
        Value::String(_) => 1,
        Value::Array(a) => a.iter().map(count_strings).sum(),
        Value::Object(m) => m.iter().map(|(_, v)| 1 + count_strings(v)).sum(),
        _ => 0,
    }
}

fn insert_char(s: &mut String, at: usize, c: char) {
    let n = s.chars().count();
    let pos = s
        .char_indices()
        .nth(at % (n + 1))
        .map_or(s.len(), |(b, _)| b);
    s.insert(pos, c);
}

/// Inserts `c` into the `i`-th string of `v` (depth first, a key before its value).
fn poison(v: &mut Value, i: &mut usize, at: usize, c: char) -> bool {
    match v {
        Value::String(s) if *i == 0 => {
            insert_char(s, at, c);
            true
        }
        Value::String(_) => {
            *i -= 1;
            false
        }
        Value::Array(a) => a.iter_mut().any(|x| poison(x, i, at, c)),
        Value::Object(m) => {
            let mut done = false;
            for (mut k, mut x) in std::mem::take(m) {
                if !done {
                    if *i == 0 {
                        insert_char(&mut k, at, c);
                        done = true;
                    } else {
                        *i -= 1;
                        done = poison(&mut x, i, at, c);
                    }
                }
                m.insert(k, x);
            }
            done
        }
        _ => false,
    }
}

fn mutate(valid: Value, m: &Mutation) -> Value {
    let Value::Object(mut fields) = valid else {
        unreachable!()
    };
    let keys: Vec<String> = fields.keys().cloned().collect();
    let nth = |i: &usize| keys[i % keys.len()].clone();
    match m {
        Mutation::Remove(i) => {
            fields.remove(&nth(i));
        }
        Mutation::Replace(i, v) => {
            fields.insert(nth(i), v.clone());
        }
        Mutation::Insert(k, v) => {
            fields.insert(k.clone(), v.clone());
        }
        Mutation::Wrap(i) => {
            let k = nth(i);
            let v = fields.remove(&k).unwrap();
            fields.insert(k, json!([v]));
        }
        Mutation::Whole(v) => return v.clone(),
        Mutation::Poison(i, at, c) => {
            let mut body = Value::Object(fields);
            let n = count_strings(&body);
            if n > 0 {
                poison(&mut body, &mut (i % n), *at, *c);
            }
            return body;
        }
    }
    Value::Object(fields)
}

/// Raw JSON texts serde_json's `Value` cannot produce: numbers out of every range, bad
/// literals, comments, duplicate-key fodder.
const RAW_VALUES: &[&str] = &[
    "1e400",
    "-1e400",
    "1.7976931348623157e309",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
    "0x10",
    "NaN",
    "Infinity",
    "-0",
    "01",
    "1.",
    ".5",
    "+1",
    "1e",
    "tru",
    "nul",
    "\"\\ud800\"",
    "\"\\udc00x\"",
    "\"\\u0000\"",
    "\"\\x41\"",
    "\"unterminated",
    "'single'",
    "/* c */ 1",
    "[1,]",
    "{\"a\":1,}",
    "\"\u{1}\"",
];

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(JSON),
        4 => prop::sample::select(vec![
            None,
            Some("application/json; charset=utf-8"),
            Some("application/vnd.api+json"),
            Some("application/problem+json"),
            Some("APPLICATION/JSON"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/jsonx"),
            Some("json"),
        ]),
    ]
}

/// axum's rule: `application/json` or `application/*+json`, any case, any parameters.
fn is_json_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return false };
    let essence = ct.split(';').next().unwrap().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Byte bodies: random bytes, truncated or corrupted valid bodies, raw bad values spliced into
/// a valid body, duplicate keys, deep nesting.
fn bytes_for(valid: Value) -> impl Strategy<Value = Vec<u8>> {
    let text = serde_json::to_string(&valid).unwrap();
    let keys: Vec<String> = valid.as_object().unwrap().keys().cloned().collect();
    let t1 = text.clone();
    let t2 = text.clone();
    let t3 = text.clone();
    let k1 = keys.clone();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        any::<prop::sample::Index>().prop_map(move |i| t1.as_bytes()[..i.index(t1.len())].to_vec()),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(move |(i, b)| {
            let mut v = t2.clone().into_bytes();
            let at = i.index(v.len());
            v[at] = b;
            v
        }),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(RAW_VALUES)
        )
            .prop_map(move |(i, raw)| {
                let mut m = valid.as_object().unwrap().clone();
                m.insert(k1[i.index(k1.len())].clone(), json!("@@RAW@@"));
                serde_json::to_string(&m)
                    .unwrap()
                    .replace("\"@@RAW@@\"", raw)
                    .into_bytes()
            }),
        any::<prop::sample::Index>().prop_map(move |i| {
            // The same key twice.
            let k = &keys[i.index(keys.len())];
            format!("{{\"{k}\":null,{}", &t3[1..]).into_bytes()
        }),
        (0usize..300, prop::bool::ANY).prop_map(|(n, arrays)| {
            let (open, close) = if arrays { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{}1{}", open.repeat(n), close.repeat(n)).into_bytes()
        }),
        Just(b"\xef\xbb\xbf{}".to_vec()),
        Just(b"{\"name\":\"\xff\xfe\"}".to_vec()),
        Just(Vec::new()),
    ]
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES, when set, overrides the default.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any JSON value as the body of any command: no panic, storable or 4xx.
    #[test]
    fn arbitrary_json_is_storable_or_a_client_error(body in json_value()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for ep in endpoints() {
            let out = (ep.run)(&bytes, JSON);
            if let Some(e) = check(&ep, out)? {
                prop_assert_eq!(
                    e.status == StatusCode::PAYLOAD_TOO_LARGE,
                    bytes.len() > MAX_BODY_BYTES
                );
            }
        }
    }

    /// A valid body with one field removed, retyped, wrapped or added: no panic, storable or
    /// 4xx.
    #[test]
    fn near_valid_bodies_are_storable_or_a_client_error(m in mutation()) {
        for ep in endpoints() {
            let body = mutate((ep.valid)(), &m);
            check(&ep, (ep.run)(&serde_json::to_vec(&body).unwrap(), JSON))?;
        }
    }

    /// Broken JSON, bad bytes, odd content types: 400, 413 or 415 (415 exactly when the
    /// content type is not JSON), never a panic.
    #[test]
    fn bad_bytes_and_content_types_are_client_errors(
        (ep, bytes) in (0..endpoints().len())
            .prop_flat_map(|i| (Just(i), bytes_for((endpoints()[i].valid)()))),
        ct in content_type(),
    ) {
        let ep = &endpoints()[ep];
        let out = (ep.run)(&bytes, ct);
        let err = check(ep, out)?;
        if !is_json_type(ct) {
            prop_assert_eq!(err.map(|e| e.status), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        } else if let Some(e) = err {
            prop_assert!(e.status != StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
    }

    /// Bodies around the 64 KiB limit: over it 413 `payload_too_large`, at or under it the
    /// body decodes.
    #[test]
    fn the_body_limit_is_413(ep in 0..endpoints().len(), extra in 0usize..64, over in any::<bool>()) {
        let ep = &endpoints()[ep];
        let mut bytes = serde_json::to_vec(&(ep.valid)()).unwrap();
        let target = if over { MAX_BODY_BYTES + 1 + extra } else { MAX_BODY_BYTES - extra };
        bytes.resize(target, b' ');
        let out = (ep.run)(&bytes, JSON);
        if over {
            let e = out.expect_err("over the limit");
            prop_assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
            prop_assert_eq!(e.reason, "payload_too_large");
        } else {
            prop_assert!(out.is_ok(), "{}: {:?}", ep.name, out.err().map(|e| e.message));
        }
    }
}

#[test]
fn every_valid_sample_is_accepted() {
    for ep in endpoints() {
        let bytes = serde_json::to_vec(&(ep.valid)()).unwrap();
        if let Err(e) = (ep.run)(&bytes, JSON) {
            panic!("{}: {} {}", ep.name, e.status, e.message);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Valid input decodes to exactly itself

fn e164() -> impl Strategy<Value = String> {
    "\\+[1-9][0-9]{7,14}"
}

fn address() -> impl Strategy<Value = (String, Value)> {
    (e164(), any::<bool>()).prop_map(|(n, typed)| {
        let v = if typed {
            json!({"type": "tel", "target": n})
        } else {
            json!(n)
        };
        (n, v)
    })
}

/// A scalar variable value: strings of at most 1024 bytes without NUL, any number, bools, null.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[^\\x00]{0,256}".prop_map(Value::String),
        Just(json!("é".repeat(512))),
    ]
}

/// Valid `variables`: up to 32 names of 1 to 64 bytes; `talk_seconds`, if present, 0 to 3600.
fn variables() -> impl Strategy<Value = Map<String, Value>> {
    let talk = prop_oneof![
        Just(None),
        (0u64..=3600).prop_map(|s| Some(json!(s))),
        (0u64..=3600).prop_map(|s| Some(json!(s.to_string()))),
    ];
    (
        prop::collection::btree_map("[^\\x00]{1,16}", scalar(), 0..31),
        talk,
    )
        .prop_map(|(m, talk)| {
            let mut m: Map<String, Value> =
                m.into_iter().filter(|(k, _)| k != "talk_seconds").collect();
            if let Some(t) = talk {
                m.insert("talk_seconds".into(), t);
            }
            m
        })
}

/// A name: at most 200 characters, no control characters.
fn name() -> impl Strategy<Value = String> {
    prop_oneof!["\\P{Cc}{0,40}", Just("ü".repeat(200)),]
}

fn username() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._@+-]{3,64}"
}

fn password() -> impl Strategy<Value = String> {
    "\\P{Cc}{8,64}"
}

fn webhook_uri() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (
            "https?",
            "[a-z][a-z0-9]{0,20}(\\.[a-z]{2,6}){1,2}",
            "(/[A-Za-z0-9._~-]{0,10}){0,4}"
        )
            .prop_map(|(s, h, p)| format!("{s}://{h}{p}")),
    ]
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn decode<T: DeserializeOwned + Send + 'static>(body: &Value) -> T {
    match extract::<T>(&serde_json::to_vec(body).unwrap(), JSON) {
        Ok(t) => t,
        Err(e) => panic!("{body}: {} {}", e.status, e.message),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_calls_decode_to_their_input(
        source in address(),
        destinations in prop::collection::vec(address(), 1..=calls::MAX_DESTINATIONS),
        variables in variables(),
        dial_timeout_ms in prop::option::of(1_000u32..=300_000),
    ) {
        let mut body = json!({
            "source": source.1,
            "destinations": destinations.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
            "variables": variables,
        });
        if let Some(t) = dial_timeout_ms {
            body["dial_timeout_ms"] = json!(t);
        }
        let v = decode::<calls::CreateCalls>(&body).validate().unwrap();
        prop_assert_eq!(v.source.as_str(), source.0.as_str());
        prop_assert_eq!(
            v.destinations.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            destinations.iter().map(|d| d.0.clone()).collect::<Vec<_>>()
        );
        prop_assert_eq!(&v.variables, &variables);
        prop_assert_eq!(v.dial_timeout_ms, dial_timeout_ms.unwrap_or(calls::DEFAULT_DIAL_TIMEOUT_MS));
        // The call carries it into its event.
        let call = NewCall {
            call_id: CallId::new(),
            customer_id: CustomerId::new(),
            source: v.source.clone(),
            destination: v.destinations[0].clone(),
            variables: v.variables.clone(),
            dial_timeout_ms: v.dial_timeout_ms,
            campaign_id: None,
            direction: CallDirection::Outgoing,
            activeflow_id: None,
            sandbox: None,
            trunk_id: None,
            master_call_id: None,
        };
        let events = decide(&mut Call::default(), CallCommand::Create { call, at: at() }).unwrap();
        let created = serde_json::to_value(&events[0]).unwrap();
        prop_assert_eq!(&created["source"], &json!(source.0));
        prop_assert_eq!(&created["variables"], &json!(variables));
    }

    #[test]
    fn money_decodes_exactly_and_the_account_decides_by_range(
        amount in prop_oneof![any::<i64>(), -2..=MAX_MICROS + 2, Just(MAX_MICROS)],
        balance in prop_oneof![Just(0), Just(MAX_MICROS), Just(i64::MIN), -MAX_MICROS..=MAX_MICROS],
    ) {
        let add = decode::<billing::BalanceAdd>(&json!({"amount_micros": amount}));
        prop_assert_eq!(add.amount_micros, amount);
        let cmd = BillingCommand::AddBalance { amount_micros: Micros(amount), at: at() };
        let ok = (1..=MAX_MICROS).contains(&amount)
            && i128::from(balance) + i128::from(amount) <= i128::from(MAX_MICROS);
        let out = decide(&mut opened_account(balance), cmd);
        prop_assert_eq!(out.is_ok(), ok, "{} + {}: {:?}", balance, amount, out.as_ref().err().map(|e| &e.message));
        if let Err(e) = out {
            prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let rate = decode::<billing::SetRate>(&json!({"rate_micros_per_minute": amount}));
        prop_assert_eq!(rate.rate_micros_per_minute, amount);
        let cmd = BillingCommand::SetRate { rate_micros_per_minute: Micros(amount), at: at() };
        prop_assert_eq!(decide(&mut opened_account(balance), cmd).is_ok(), (0..=MAX_MICROS).contains(&amount));
    }

    #[test]
    fn valid_customers_decode_to_their_input(
        name in "\\P{Cc}{1,40}",
        username in username(),
        password in password(),
        webhook_uri in webhook_uri(),
        put in any::<bool>(),
        balance in 0..=MAX_MICROS,
        rate in prop::option::of(0..=MAX_MICROS),
    ) {
        let mut body = json!({"name": name, "username": username, "password": password,
            "webhook_uri": webhook_uri, "webhook_method": if put { "PUT" } else { "POST" },
            "balance_micros": balance});
        if let Some(r) = rate {
            body["rate_micros_per_minute"] = json!(r);
        }
        let v = decode::<identity::CreateCustomer>(&body).validate().unwrap();
        prop_assert_eq!(&v.name, &name);
        prop_assert_eq!(&v.username, &username);
        prop_assert_eq!(&v.password, &password);
        prop_assert_eq!(&v.webhook_uri, &webhook_uri);
        prop_assert_eq!(v.webhook_method, if put { WebhookMethod::Put } else { WebhookMethod::Post });
        prop_assert_eq!(v.balance_micros.0, balance);
        prop_assert_eq!(v.rate_micros_per_minute.0, rate.unwrap_or(vbin_domain::billing::DEFAULT_RATE_MICROS_PER_MINUTE));
        let open = BillingCommand::Open {
            customer_id: CustomerId::new(),
            balance_micros: v.balance_micros,
            rate_micros_per_minute: v.rate_micros_per_minute,
            at: at(),
        };
        prop_assert!(decide(&mut BillingAccount::default(), open).is_ok());
    }

    #[test]
    fn valid_identity_bodies_decode_to_their_input(
        username in username(),
        password in password(),
        name in name(),
        admin in any::<bool>(),
        status in prop::sample::select(vec![
            ("available", AgentStatus::Available),
            ("busy", AgentStatus::Busy),
            ("offline", AgentStatus::Offline),
        ]),
        expire_sec in prop::option::of(60..=identity::MAX_EXPIRE_SEC),
        webhook_uri in webhook_uri(),
    ) {
        let (perm, permission) = if admin { ("admin", Permission::Admin) } else { ("agent", Permission::Agent) };
        let login = decode::<identity::Login>(&json!({"username": username, "password": password}))
            .validate()
            .unwrap();
        prop_assert_eq!((&login.username, &login.password), (&username, &password));

        let a = decode::<identity::CreateAgent>(
            &json!({"username": username, "password": password, "name": name, "permission": perm}),
        )
        .validate()
        .unwrap();
        prop_assert_eq!(&a.username, &username);
        prop_assert_eq!(&a.password, &password);
        prop_assert_eq!(&a.name, if name.is_empty() { &username } else { &name });
        prop_assert_eq!(a.permission, permission);

        if !name.is_empty() {
            let u = decode::<identity::UpdateAgent>(&json!({"name": name, "permission": perm}))
                .validate()
                .unwrap();
            prop_assert_eq!((&u.name, u.permission), (&name, permission));
        }

        let s = decode::<identity::AgentStatusBody>(&json!({"status": status.0}));
        prop_assert_eq!(s.status, status.1);

        let mut key = json!({"name": name});
        if let Some(e) = expire_sec {
            key["expire_sec"] = json!(e);
        }
        let k = decode::<identity::CreateAccessKey>(&key).validate().unwrap();
        prop_assert_eq!((&k.name, k.expire_sec), (&name, expire_sec));

        let w = decode::<identity::UpdateCustomer>(&json!({"webhook_uri": webhook_uri}))
            .validate()
            .unwrap();
        prop_assert_eq!((&w.webhook_uri, w.webhook_method), (&webhook_uri, WebhookMethod::Post));
    }

    #[test]
    fn valid_campaign_bodies_decode_to_their_input(
        name in name(),
        source in address(),
        dial_timeout_ms in 1_000u32..=300_000,
        try_interval_ms in 0u32..=86_400_000,
        max_try_count in 1u32..=10,
        destinations in prop::collection::vec(address(), 1..=vbin_domain::campaign::MAX_TARGET_DESTINATIONS),
        variables in variables(),
        ids in (uuid(), uuid(), prop::option::of(uuid()), prop::option::of(uuid())),
        cont in any::<bool>(),
        service_level in prop::option::of(1u32..=1000),
        max_concurrent_calls in prop::option::of(1u32..=campaigns::MAX_CONCURRENT_CALLS),
        status in prop::sample::select(vec![
            ("pending", CampaignStatus::Pending),
            ("running", CampaignStatus::Running),
            ("stopping", CampaignStatus::Stopping),
            ("stopped", CampaignStatus::Stopped),
            ("completed", CampaignStatus::Completed),
        ]),
    ) {
        let p = decode::<campaigns::CreateOutplan>(&json!({"name": name, "source": source.1,
            "dial_timeout_ms": dial_timeout_ms, "try_interval_ms": try_interval_ms,
            "max_try_count": max_try_count}))
            .validate()
            .unwrap();
        prop_assert_eq!(&p.name, &name);
        prop_assert_eq!(p.source.as_str(), source.0.as_str());
        prop_assert_eq!((p.dial_timeout_ms, p.try_interval_ms, p.max_try_count),
            (dial_timeout_ms, try_interval_ms, max_try_count));

        let d = decode::<campaigns::CreateOutdial>(&json!({"name": name})).validate().unwrap();
        prop_assert_eq!(&d, &name);

        let t = decode::<campaigns::CreateTarget>(&json!({
            "destinations": destinations.iter().map(|d| d.1.clone()).collect::<Vec<_>>(),
            "variables": variables,
        }))
        .validate()
        .unwrap();
        prop_assert_eq!(
            t.destinations.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            destinations.iter().map(|d| d.0.clone()).collect::<Vec<_>>()
        );
        prop_assert_eq!(&t.variables, &variables);

        let (outplan, outdial, queue, next) = ids;
        let mut body = json!({"name": name, "outplan_id": outplan, "outdial_id": outdial,
            "end_handle": if cont { "continue" } else { "stop" }, "queue_id": queue,
            "next_campaign_id": next});
        if let Some(s) = service_level {
            body["service_level"] = json!(s);
        }
        if let Some(m) = max_concurrent_calls {
            body["max_concurrent_calls"] = json!(m);
        }
        let c = decode::<campaigns::CreateCampaign>(&body).validate().unwrap();
        prop_assert_eq!(&c.name, &name);
        prop_assert_eq!((c.outplan_id, c.outdial_id, c.queue_id, c.next_campaign_id),
            (outplan, outdial, queue, next));
        prop_assert_eq!(c.end_handle, if cont { EndHandle::Continue } else { EndHandle::Stop });
        prop_assert_eq!(c.service_level, service_level.unwrap_or(100));
        prop_assert_eq!(c.max_concurrent_calls,
            max_concurrent_calls.unwrap_or(campaigns::DEFAULT_CONCURRENT_CALLS));

        let s = decode::<campaigns::SetStatus>(&json!({"status": status.0}));
        prop_assert_eq!(s.status, status.1);
        // Only running and stopped may be asked for.
        let asked = decide(&mut campaign_in(CampaignStatus::Pending),
            CampaignCommand::Request { status: s.status, at: at() });
        prop_assert_eq!(asked.is_ok(),
            matches!(s.status, CampaignStatus::Running | CampaignStatus::Stopped));
    }

    #[test]
    fn valid_queue_and_transcribe_bodies_decode_to_their_input(
        name in name(),
        linear in any::<bool>(),
        agents in prop::collection::hash_set(uuid(), 0..=vbin_domain::queue::MAX_QUEUE_AGENTS),
        wait_timeout_ms in prop::option::of(1_000u32..=3_600_000),
        call in uuid(),
        language in "[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8}){1,3}",
        direction in prop::sample::select(vec![
            (None, TranscribeDirection::Both),
            (Some("both"), TranscribeDirection::Both),
            (Some("in"), TranscribeDirection::In),
            (Some("out"), TranscribeDirection::Out),
        ]),
    ) {
        let agents: Vec<Uuid> = agents.into_iter().collect();
        let mut body = json!({"name": name, "routing_method": if linear { "linear" } else { "ringall" },
            "agent_ids": agents});
        if let Some(w) = wait_timeout_ms {
            body["wait_timeout_ms"] = json!(w);
        }
        let q = decode::<queues::QueueBody>(&body).validate().unwrap();
        prop_assert_eq!(&q.name, &name);
        prop_assert_eq!(q.routing_method, if linear { RoutingMethod::Linear } else { RoutingMethod::Ringall });
        prop_assert_eq!(q.agent_ids.iter().map(|a| a.as_uuid()).collect::<Vec<_>>(), agents);
        prop_assert_eq!(q.wait_timeout_ms, wait_timeout_ms.unwrap_or(queues::DEFAULT_WAIT_TIMEOUT_MS));

        let j = decode::<queues::JoinBody>(&json!({"call_id": call}));
        prop_assert_eq!(j.call_id, call);

        let mut body = json!({"reference_type": "call", "reference_id": call, "language": language});
        if let Some(d) = direction.0 {
            body["direction"] = json!(d);
        }
        let t = decode::<transcribes::TranscribeBody>(&body).validate().unwrap();
        prop_assert_eq!(t.reference.id(), call);
        prop_assert_eq!(&t.language, &language);
        prop_assert_eq!(t.direction, direction.1);
        let start = TranscribeCommand::Start {
            transcribe: NewTranscribe {
                transcribe_id: TranscribeId::new(),
                customer_id: CustomerId::new(),
                reference: t.reference,
                language: t.language,
                direction: t.direction,
                aicall_id: None,
            },
            at: at(),
        };
        prop_assert!(decide(&mut Transcribe::default(), start).is_ok());
    }
}
