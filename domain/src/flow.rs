//! The Flow aggregate (a customer's program of actions) and the validation every program
//! passes before it is stored or run: flows, inline call actions, and actions returned by a
//! customer's `webhook_send` or fetched with `fetch_flow`.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashSet;
use vbin_event_schema::flow::is_dtmf;
use vbin_event_schema::flow::*;
use vbin_event_schema::{check_language, CustomerId, FlowEvent, FlowId};

/// Most actions in one program.
pub const MAX_ACTIONS: usize = 200;
/// Longest name of a flow.
pub const MAX_NAME: usize = 255;
/// Longest detail of a flow.
pub const MAX_DETAIL: usize = 2_048;
/// Longest wait of one action (sleep, digits_receive, recording), ms.
pub const MAX_ACTION_MS: u32 = 3_600_000;
/// Most jumps of one goto.
pub const MAX_LOOP_COUNT: u32 = 1_000;
/// Longest URL in an option.
pub const MAX_URL: usize = 2_048;

/// Parses and checks a program: every action's type and options, unique ids (missing ones
/// are taken from `new_id`), and every `next_id` and jump target pointing at an action of the
/// program. Errors name the action by index.
pub fn validate_actions(
    raw: Vec<RawAction>,
    mut new_id: impl FnMut() -> ActionId,
) -> Result<Vec<Action>, DomainError> {
    if raw.is_empty() || raw.len() > MAX_ACTIONS {
        return Err(DomainError::Invalid(format!(
            "actions must hold 1 to {MAX_ACTIONS} actions"
        )));
    }
    let mut actions = Vec::with_capacity(raw.len());
    let mut ids = HashSet::new();
    for (i, mut r) in raw.into_iter().enumerate() {
        let at = |e: String| DomainError::Invalid(format!("actions[{i}]: {e}"));
        let id = *r.id.get_or_insert_with(&mut new_id);
        if !ids.insert(id) {
            return Err(at(format!("id {id} is used twice")));
        }
        let action = Action::try_from(r).map_err(|e| at(e.to_string()))?;
        check_option(&action.kind).map_err(at)?;
        actions.push(action);
    }
    for (i, a) in actions.iter().enumerate() {
        for target in a.next_id.iter().chain(jump_targets(&a.kind).iter()) {
            if !ids.contains(target) {
                return Err(DomainError::Invalid(format!(
                    "actions[{i}]: target {target} is not an action of this flow"
                )));
            }
        }
    }
    Ok(actions)
}

/// Gives a program fresh ids (rewriting its `next_id`s and jump targets), so that it can be
/// spliced into a running flow more than once (a fetched flow, a webhook's actions).
pub fn renumber(actions: Vec<Action>, mut new_id: impl FnMut() -> ActionId) -> Vec<Action> {
    let map: std::collections::HashMap<ActionId, ActionId> =
        actions.iter().map(|a| (a.id, new_id())).collect();
    let m = |id: ActionId| map.get(&id).copied().unwrap_or(id);
    actions
        .into_iter()
        .map(|mut a| {
            a.id = m(a.id);
            a.next_id = a.next_id.map(m);
            match &mut a.kind {
                ActionKind::Branch(b) => {
                    b.target_ids.values_mut().for_each(|t| *t = m(*t));
                    b.default_target_id = b.default_target_id.map(m);
                }
                ActionKind::ConditionVariable(c) => c.false_target_id = m(c.false_target_id),
                ActionKind::Goto(g) => g.target_id = m(g.target_id),
                _ => {}
            }
            a
        })
        .collect()
}

/// The actions an action may jump to (besides its `next_id`).
pub fn jump_targets(kind: &ActionKind) -> Vec<ActionId> {
    match kind {
        ActionKind::Branch(b) => b
            .target_ids
            .values()
            .copied()
            .chain(b.default_target_id)
            .collect(),
        ActionKind::ConditionVariable(c) => vec![c.false_target_id],
        ActionKind::Goto(g) => vec![g.target_id],
        _ => vec![],
    }
}

fn bounded(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{field} must be 1 to {max} bytes"));
    }
    Ok(())
}

fn ms(field: &str, v: u32) -> Result<(), String> {
    if v > MAX_ACTION_MS {
        return Err(format!("{field} must be at most {MAX_ACTION_MS} ms"));
    }
    Ok(())
}

fn keys(field: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.chars().count() > max || !s.chars().all(is_dtmf) {
        return Err(format!(
            "{field} must be 1 to {max} of the keys 0-9 * # A-D"
        ));
    }
    Ok(())
}

/// An http(s) URL, unless it is built from variables (checked again when it runs).
fn url(field: &str, s: &str) -> Result<(), String> {
    bounded(field, s, MAX_URL)?;
    if s.contains("${") {
        return Ok(());
    }
    match url_scheme(s) {
        Some("http" | "https") => Ok(()),
        _ => Err(format!("{field} must be an http or https URL")),
    }
}

fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, rest) = s.split_once("://")?;
    (!rest.is_empty()).then_some(scheme)
}

fn language(l: &str) -> Result<(), String> {
    if l.contains("${") {
        return Ok(());
    }
    check_language(l).map_err(|e| e.to_string())
}

fn check_option(kind: &ActionKind) -> Result<(), String> {
    match kind {
        ActionKind::Talk(t) => {
            bounded("talk text", &t.text, vbin_text_max())?;
            language(&t.language)?;
            if let Some(v) = &t.voice_id {
                bounded("voice_id", v, 64)?;
            }
            if let Some(p) = &t.provider {
                bounded("provider", p, 64)?;
            }
            Ok(())
        }
        ActionKind::Play(p) => {
            if p.stream_urls.is_empty() || p.stream_urls.len() > 10 {
                return Err("stream_urls must hold 1 to 10 URLs".into());
            }
            p.stream_urls.iter().try_for_each(|u| url("stream_urls", u))
        }
        ActionKind::Sleep(s) => ms("duration", s.duration),
        ActionKind::AiTalk(a) => {
            if let Some(l) = &a.language {
                language(l)?;
            }
            if a.duration.is_some_and(|d| !(1..=86_400).contains(&d)) {
                return Err("duration must be 1 to 86400 seconds".into());
            }
            a.gender
                .as_deref()
                .map_or(Ok(()), |g| bounded("gender", g, 16))
        }
        ActionKind::DigitsReceive(d) => {
            ms("duration", d.duration)?;
            if d.duration == 0 {
                return Err("duration must be more than 0 ms".into());
            }
            if let Some(l) = d.length {
                if !(1..=64).contains(&l) {
                    return Err("length must be 1 to 64".into());
                }
            }
            d.key.as_deref().map_or(Ok(()), |k| keys("key", k, 16))
        }
        ActionKind::DigitsSend(d) => {
            if !d.digits.contains("${") {
                keys("digits", &d.digits, 100)?;
            }
            if d.duration.is_some_and(|v| !(40..=2_000).contains(&v)) {
                return Err("duration must be 40 to 2000 ms".into());
            }
            if d.interval.is_some_and(|v| v > 5_000) {
                return Err("interval must be at most 5000 ms".into());
            }
            Ok(())
        }
        ActionKind::Branch(b) => {
            if b.target_ids.is_empty() || b.target_ids.len() > 64 {
                return Err("target_ids must hold 1 to 64 entries".into());
            }
            b.variable
                .as_deref()
                .map_or(Ok(()), |v| bounded("variable", v, 64))
        }
        ActionKind::ConditionVariable(c) => {
            bounded("variable", &c.variable, 64)?;
            let has = match c.value_type {
                ValueType::String => c.value_string.is_some(),
                ValueType::Number => c.value_number.is_some_and(f64::is_finite),
                ValueType::Length => c.value_length.is_some(),
            };
            if !has {
                return Err(format!(
                    "value_type {:?} needs its value_{} option",
                    c.value_type,
                    serde_json::to_value(c.value_type)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ));
            }
            Ok(())
        }
        ActionKind::Goto(g) => {
            if !(1..=MAX_LOOP_COUNT).contains(&g.loop_count) {
                return Err(format!("loop_count must be 1 to {MAX_LOOP_COUNT}"));
            }
            Ok(())
        }
        ActionKind::VariableSet(v) => {
            bounded("key", &v.key, 64)?;
            if v.value.len() > 1_024 {
                return Err("value must be at most 1024 bytes".into());
            }
            Ok(())
        }
        ActionKind::WebhookSend(w) => {
            url("uri", &w.uri)?;
            if let Some(m) = &w.method {
                if !matches!(m.as_str(), "POST" | "PUT" | "GET") {
                    return Err("method must be POST, PUT or GET".into());
                }
            }
            if let Some(t) = &w.data_type {
                bounded("data_type", t, 128)?;
            }
            if w.data
                .as_ref()
                .is_some_and(|d| d.to_string().len() > 16_384)
            {
                return Err("data must be at most 16 KiB".into());
            }
            Ok(())
        }
        ActionKind::TranscribeStart(t) => {
            vbin_event_schema::check_language(&t.language).map_err(|e| e.to_string())
        }
        ActionKind::TranscribeStop(_) => Ok(()),
        ActionKind::RecordingStart(r) => {
            if r.format != "wav" {
                return Err("format must be \"wav\"".into());
            }
            if let Some(d) = r.duration {
                ms("duration", d)?;
            }
            if let Some(d) = r.end_of_silence {
                ms("end_of_silence", d)?;
            }
            r.end_of_key
                .as_deref()
                .map_or(Ok(()), |k| keys("end_of_key", k, 16))
        }
        ActionKind::Hangup(h) => h
            .reason
            .as_deref()
            .map_or(Ok(()), |r| bounded("reason", r, 256)),
        ActionKind::Connect(c) => {
            dial("destinations", c.destinations.len(), c.dial_timeout)?;
            c.sandbox
                .as_ref()
                .map_or(Ok(()), crate::call::check_sandbox)
        }
        ActionKind::Call(c) => {
            dial("destinations", c.destinations.len(), c.dial_timeout)?;
            if let Some(s) = &c.sandbox {
                crate::call::check_sandbox(s)?;
            }
            match (&c.flow_id, &c.actions) {
                (Some(_), None) => Ok(()),
                (None, Some(actions)) => {
                    // Throwaway ids: the call's flow gets its own when it is attached.
                    let mut n = 0u128;
                    let parsed = validate_actions(actions.clone(), || {
                        n += 1;
                        ActionId(uuid::Uuid::from_u128(n))
                    })
                    .map_err(|e| format!("actions: {e}"))?;
                    if parsed.iter().any(|a| matches!(a.kind, ActionKind::Call(_))) {
                        return Err("actions: a call's own actions cannot place calls".into());
                    }
                    Ok(())
                }
                _ => Err("give flow_id or actions (one of them)".into()),
            }
        }
        ActionKind::QueueJoin(q) => q
            .sandbox
            .as_ref()
            .map_or(Ok(()), crate::call::check_sandbox),
        ActionKind::Answer(_)
        | ActionKind::ConferenceJoin(_)
        | ActionKind::Beep(_)
        | ActionKind::FetchFlow(_)
        | ActionKind::RecordingStop(_)
        | ActionKind::Stop(_) => Ok(()),
    }
}

/// Checks the legs of a `connect` or `call`: 1 to [`crate::call::MAX_LEGS`], ringing 1 s to
/// 5 minutes.
fn dial(field: &str, n: usize, timeout: Option<u32>) -> Result<(), String> {
    let max = crate::call::MAX_LEGS;
    if n == 0 || n > max {
        return Err(format!("{field} must hold 1 to {max} numbers"));
    }
    if timeout.is_some_and(|t| !(1_000..=300_000).contains(&t)) {
        return Err("dial_timeout must be 1000 to 300000 ms".into());
    }
    Ok(())
}

/// Longest text of one talk (the text-to-speech limit).
const fn vbin_text_max() -> usize {
    4_096
}

/// Flow commands (the API validated names and actions).
#[derive(Clone, Debug, PartialEq)]
pub enum FlowCommand {
    /// Create it.
    Create {
        /// Id.
        flow_id: FlowId,
        /// Owner.
        customer_id: CustomerId,
        /// Name.
        name: String,
        /// Description.
        detail: String,
        /// Validated program.
        actions: Vec<Action>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Replace name, detail and actions.
    Update {
        /// Name.
        name: String,
        /// Description.
        detail: String,
        /// Validated program.
        actions: Vec<Action>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Delete it.
    Delete {
        /// When.
        at: DateTime<Utc>,
    },
}

/// A flow's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// None until created.
    pub id: Option<FlowId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Name.
    pub name: String,
    /// Description.
    pub detail: String,
    /// The program.
    pub actions: Vec<Action>,
    /// Deleted flows refuse everything.
    pub deleted: bool,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
    /// Deleted.
    pub tm_delete: Option<DateTime<Utc>>,
}

/// Checks a flow's name and detail.
pub fn check_names(name: &str, detail: &str) -> Result<(), DomainError> {
    if name.trim().is_empty() || name.len() > MAX_NAME {
        return Err(DomainError::Invalid(format!(
            "name must be 1 to {MAX_NAME} bytes"
        )));
    }
    if detail.len() > MAX_DETAIL {
        return Err(DomainError::Invalid(format!(
            "detail must be at most {MAX_DETAIL} bytes"
        )));
    }
    Ok(())
}

impl Flow {
    /// The API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "flow",
            "customer_id": self.customer_id,
            "name": self.name,
            "detail": self.detail,
            "actions": self.actions,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
            "tm_delete": self.tm_delete,
        })
    }

    /// Whether it exists and is not deleted.
    pub fn is_live(&self) -> bool {
        self.id.is_some() && !self.deleted
    }

    fn decide(&self, command: FlowCommand) -> Result<Vec<FlowEvent>, DomainError> {
        match command {
            FlowCommand::Create {
                flow_id,
                customer_id,
                name,
                detail,
                actions,
                at,
            } => {
                if self.id.is_some() {
                    return Err(DomainError::AlreadyExists(format!("flow {flow_id} exists")));
                }
                check_names(&name, &detail)?;
                Ok(vec![FlowEvent::FlowCreated {
                    flow_id,
                    customer_id,
                    name,
                    detail,
                    actions,
                    at,
                }])
            }
            _ if !self.is_live() => Err(DomainError::NotFound("flow")),
            FlowCommand::Update {
                name,
                detail,
                actions,
                at,
            } => {
                check_names(&name, &detail)?;
                Ok(vec![FlowEvent::FlowUpdated {
                    name,
                    detail,
                    actions,
                    at,
                }])
            }
            FlowCommand::Delete { at } => Ok(vec![FlowEvent::FlowDeleted { at }]),
        }
    }

    fn fold(&mut self, event: FlowEvent) {
        match event {
            FlowEvent::FlowCreated {
                flow_id,
                customer_id,
                name,
                detail,
                actions,
                at,
            } => {
                *self = Flow {
                    id: Some(flow_id),
                    customer_id,
                    name,
                    detail,
                    actions,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Flow::default()
                }
            }
            FlowEvent::FlowUpdated {
                name,
                detail,
                actions,
                at,
            } => {
                self.name = name;
                self.detail = detail;
                self.actions = actions;
                self.tm_update = Some(at);
            }
            FlowEvent::FlowDeleted { at } => {
                self.deleted = true;
                self.tm_delete = Some(at);
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(Flow, FlowCommand, FlowEvent);

impl ResourceView for Flow {
    fn resource_after(&self, _: &FlowEvent) -> Value {
        self.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn ids() -> impl FnMut() -> ActionId {
        let mut n = 0u128;
        move || {
            n += 1;
            ActionId(Uuid::from_u128(n))
        }
    }

    fn parse(v: Value) -> Result<Vec<Action>, DomainError> {
        validate_actions(serde_json::from_value(v).unwrap(), ids())
    }

    fn err(v: Value) -> String {
        match parse(v) {
            Err(DomainError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_ivr_parses_with_generated_ids_and_round_trips() {
        let menu = "00000000-0000-0000-0000-0000000000aa";
        let sales = "00000000-0000-0000-0000-0000000000bb";
        let actions = parse(json!([
            {"id": menu, "type": "talk", "option": {"text": "Press 1 or 2"}},
            {"type": "digits_receive", "option": {"duration": 5000, "length": 1}},
            {"type": "branch", "option": {"target_ids": {"2": sales}, "default_target_id": menu}},
            {"type": "hangup"},
            {"id": sales, "type": "talk", "option": {"text": "Sales", "language": "en-GB"}},
            {"type": "answer", "option": {}},
        ]))
        .unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[1].id, ActionId(Uuid::from_u128(1)));
        let ActionKind::Talk(t) = &actions[0].kind else {
            panic!()
        };
        assert_eq!(t.language, "en-US");
        let wire = serde_json::to_value(&actions).unwrap();
        assert_eq!(
            wire[3],
            json!({"id": actions[3].id, "type": "hangup", "option": {}})
        );
        let back: Vec<Action> = serde_json::from_value(wire).unwrap();
        assert_eq!(back, actions);
    }

    #[test]
    fn bad_programs_are_refused_with_the_action_named() {
        assert!(err(json!([])).contains("1 to 200"));
        assert!(err(json!([{"type": "dance"}])).contains("not an action type"));
        assert!(err(json!([{"type": "conference_join", "option": {}}])).contains("conference_id"));
        assert!(err(json!([{"type": "queue_join", "option": {}}])).contains("queue_id"));
        assert!(
            err(json!([{"type": "connect", "option": {"destinations": []}}]))
                .contains("destinations must hold 1 to 5")
        );
        assert!(
            err(json!([{"type": "connect", "option": {"destinations": ["5550001"]}}]))
                .contains("E.164")
        );
        assert!(err(json!([{"type": "connect", "option": {"destinations": [
            {"type": "sip", "target": "a@b"}]}}]))
        .contains("not supported"));
        let e = err(
            json!([{"type": "call", "option": {"destinations": ["+15550001111"],
            "actions": [{"type": "call", "option": {"destinations": ["+15550001111"],
            "flow_id": Uuid::nil()}}]}}]),
        );
        assert!(e.contains("cannot place calls"), "{e}");
        let e = err(json!([{"type": "call", "option": {"destinations": ["+15550001111"]}}]));
        assert!(e.contains("flow_id or actions"), "{e}");
        assert!(
            err(json!([{"type": "talk", "option": {"text": "hi", "speed": 2}}]))
                .contains("unknown field")
        );
        assert!(err(json!([{"type": "talk", "option": {}}])).contains("missing field `text`"));
        let e = err(
            json!([{"type": "answer"}, {"type": "goto", "option": {"target_id": Uuid::nil()}}]),
        );
        assert!(
            e.starts_with("actions[1]") && e.contains("loop_count"),
            "{e}"
        );
        let e = err(json!([{"type": "answer", "next_id": Uuid::from_u128(99)}]));
        assert!(e.contains("not an action of this flow"), "{e}");
        assert!(
            err(json!([{"type": "play", "option": {"stream_urls": ["file:///etc/passwd"]}}]))
                .contains("http or https")
        );
        assert!(
            err(json!([{"type": "digits_send", "option": {"digits": "12x"}}])).contains("keys")
        );
        let twice = Uuid::from_u128(7);
        assert!(
            err(json!([{"id": twice, "type": "answer"}, {"id": twice, "type": "stop"}]))
                .contains("used twice")
        );
        assert!(err(
            json!([{"type": "condition_variable", "option": {"variable": "x",
            "condition": "==", "value_type": "number", "false_target_id": twice}}])
        )
        .contains("value_number"));
        assert!(
            err(json!([{"type": "sleep", "option": {"duration": 3_600_001}}])).contains("at most")
        );
    }
}
