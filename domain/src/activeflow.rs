//! The Activeflow aggregate: one flow running on one call, and the interpreter that walks it.
//!
//! The aggregate decides which action runs next; nobody else does. Actions that only move
//! the cursor or change variables (branch, condition_variable, goto, variable_set) are decided
//! here at once, each recorded as `activeflow_action_executed`; an action with an effect
//! outside the aggregate (talk, digits_receive, webhook_send, ...) is recorded the same way and
//! then the flow waits until whoever carries it out (the call's media session or the flow
//! engine) reports [`ActiveflowCommand::Complete`] for that execution's `seq`. A report for
//! any other `seq` is stale and changes nothing, so redelivered reports are harmless.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use vbin_event_schema::flow::*;
use vbin_event_schema::{ActiveflowEvent, ActiveflowId, CallId, CustomerId, FlowId};

/// Most executions of one activeflow; then it ends with reason `limit`.
pub const MAX_EXECUTIONS: u64 = 10_000;
/// Most actions decided in one step without one that waits (a loop of pure actions).
pub const MAX_STEPS_AT_ONCE: usize = 256;
/// Most actions an activeflow may hold after fetching more.
pub const MAX_PROGRAM: usize = 1_000;
/// Executions listed in the view (the most recent).
pub const VIEW_EXECUTED: usize = 100;
/// The variable `digits_receive` sets and `branch` reads by default.
pub const DIGITS_VARIABLE: &str = "voipbin.call.digits";

/// A new activeflow (its program already validated).
#[derive(Clone, Debug, PartialEq)]
pub struct NewActiveflow {
    /// Id.
    pub activeflow_id: ActiveflowId,
    /// Owner.
    pub customer_id: CustomerId,
    /// The flow copied, if any.
    pub flow_id: Option<FlowId>,
    /// The call.
    pub reference_id: CallId,
    /// The program.
    pub actions: Vec<Action>,
    /// Initial variables.
    pub variables: Map<String, Value>,
}

/// Activeflow commands.
#[derive(Clone, Debug, PartialEq)]
pub enum ActiveflowCommand {
    /// Attach a flow to a call.
    Create {
        /// What.
        new: NewActiveflow,
        /// When.
        at: DateTime<Utc>,
    },
    /// The call was answered (or arrived): run from the first action. Repeats are no-ops.
    Start {
        /// When.
        at: DateTime<Utc>,
    },
    /// The action executed as `seq` finished; go on.
    Complete {
        /// Which execution.
        seq: u64,
        /// What it produced.
        result: ActionResult,
        /// When.
        at: DateTime<Utc>,
    },
    /// End it (API stop, or its call ended). A no-op once ended.
    Stop {
        /// Why (`stopped`, `call_ended`).
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// One executed action as listed in the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// Execution number.
    pub seq: u64,
    /// The action.
    pub id: ActionId,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: String,
    /// When.
    pub tm_execute: DateTime<Utc>,
    /// Why it failed (the flow went on), once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An activeflow's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Activeflow {
    /// None until created.
    pub id: Option<ActiveflowId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// The flow copied.
    pub flow_id: Option<FlowId>,
    /// What it runs on.
    pub reference_type: ActiveflowReferenceType,
    /// The call.
    pub reference_id: CallId,
    /// Running or ended.
    pub status: ActiveflowStatus,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Its program (grows when actions are fetched).
    pub actions: Vec<Action>,
    /// Variables.
    pub variables: Map<String, Value>,
    /// Whether execution began.
    pub started: bool,
    /// Executions so far (the last one's `seq`).
    pub seq: u64,
    /// The action executed last, as executed.
    pub current: Option<Action>,
    /// Where the last executed action decided to go.
    pub jump: Option<ActionId>,
    /// The execution the flow waits for.
    pub waiting: Option<u64>,
    /// Jumps made by each goto.
    pub loops: BTreeMap<ActionId, u32>,
    /// The most recent executions.
    pub executed: Vec<Executed>,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
    /// Ended.
    pub tm_end: Option<DateTime<Utc>>,
}

/// Whether the flow waits for a report after executing this action.
pub fn waits_for(kind: &ActionKind) -> bool {
    match kind {
        ActionKind::Talk(t) => !t.is_async,
        ActionKind::WebhookSend(w) => w.sync,
        ActionKind::Branch(_)
        | ActionKind::ConditionVariable(_)
        | ActionKind::Goto(_)
        | ActionKind::VariableSet(_)
        | ActionKind::Hangup(_)
        | ActionKind::Stop(_) => false,
        _ => true,
    }
}

/// Replaces every `${name}` in the option's strings by the variable's value (text as is,
/// other values as JSON, missing ones by nothing).
pub fn substitute(action: &Action, variables: &Map<String, Value>) -> Action {
    fn text(s: &str, vars: &Map<String, Value>) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start + 2..].find('}') else {
                break;
            };
            out.push_str(&rest[..start]);
            match vars.get(&rest[start + 2..start + 2 + len]) {
                Some(Value::String(v)) => out.push_str(v),
                Some(Value::Null) | None => {}
                Some(v) => out.push_str(&v.to_string()),
            }
            rest = &rest[start + 3 + len..];
        }
        out.push_str(rest);
        out
    }
    fn walk(v: &mut Value, vars: &Map<String, Value>) {
        match v {
            Value::String(s) if s.contains("${") => *s = text(s, vars),
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, vars)),
            Value::Object(m) => m.values_mut().for_each(|v| walk(v, vars)),
            _ => {}
        }
    }
    let mut option = action.kind.option();
    walk(&mut option, variables);
    match ActionKind::parse(action.kind.type_name(), option) {
        Ok(kind) => Action {
            kind,
            ..action.clone()
        },
        // Substitution only rewrites strings into strings; keep the original if it did not
        // parse (cannot happen for the option types above).
        Err(_) => action.clone(),
    }
}

fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn holds(c: &ConditionVariable, value: Option<&Value>) -> bool {
    use std::cmp::Ordering;
    let ord = match c.value_type {
        ValueType::String => Some(
            as_text(value)
                .as_str()
                .cmp(c.value_string.as_deref().unwrap_or("")),
        ),
        ValueType::Length => {
            Some((as_text(value).chars().count() as u64).cmp(&c.value_length.unwrap_or(0)))
        }
        ValueType::Number => {
            let v = match value {
                Some(Value::Number(n)) => n.as_f64(),
                other => as_text(other).trim().parse::<f64>().ok(),
            };
            v.and_then(|v| v.partial_cmp(&c.value_number.unwrap_or(0.0)))
        }
    };
    let Some(ord) = ord else {
        return false; // not a number: no comparison holds
    };
    match c.condition {
        Condition::Eq => ord == Ordering::Equal,
        Condition::Ne => ord != Ordering::Equal,
        Condition::Gt => ord == Ordering::Greater,
        Condition::Ge => ord != Ordering::Less,
        Condition::Lt => ord == Ordering::Less,
        Condition::Le => ord != Ordering::Greater,
    }
}

impl Activeflow {
    /// The API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "type": "activeflow",
            "customer_id": self.customer_id,
            "flow_id": self.flow_id,
            "reference_type": self.reference_type,
            "reference_id": self.reference_id,
            "status": self.status,
            "end_reason": self.end_reason,
            "current_action": self.current,
            "executed_actions": self.executed,
            "variables": self.variables,
            "tm_create": self.tm_create,
            "tm_update": self.tm_update,
            "tm_end": self.tm_end,
        })
    }

    fn action(&self, id: ActionId) -> Option<&Action> {
        self.actions.iter().find(|a| a.id == id)
    }

    /// The action after the last executed one: its jump, its `next_id`, or the one after it
    /// in the program; `None` at the end.
    fn next(&self) -> Option<ActionId> {
        let Some(current) = &self.current else {
            return self.actions.first().map(|a| a.id);
        };
        if let Some(j) = self.jump.or(current.next_id) {
            return Some(j);
        }
        let i = self.actions.iter().position(|a| a.id == current.id)?;
        self.actions.get(i + 1).map(|a| a.id)
    }

    /// Where a pure action goes.
    fn decide_jump(&self, action: &Action) -> Option<ActionId> {
        match &action.kind {
            ActionKind::Branch(b) => {
                let var = b.variable.as_deref().unwrap_or(DIGITS_VARIABLE);
                let value = as_text(self.variables.get(var));
                b.target_ids.get(&value).copied().or(b.default_target_id)
            }
            ActionKind::ConditionVariable(c) => {
                (!holds(c, self.variables.get(&c.variable))).then_some(c.false_target_id)
            }
            ActionKind::Goto(g) => {
                let done = self.loops.get(&action.id).copied().unwrap_or(0);
                (done < g.loop_count).then_some(g.target_id)
            }
            _ => None,
        }
    }

    /// Executes actions from the cursor until one waits or the flow ends.
    fn run(&self, at: DateTime<Utc>, mut events: Vec<ActiveflowEvent>) -> Vec<ActiveflowEvent> {
        let mut sim = self.clone();
        events.iter().for_each(|e| sim.fold(e.clone()));
        for _ in 0..MAX_STEPS_AT_ONCE {
            let end = |reason: &str| ActiveflowEvent::ActiveflowEnded {
                reason: reason.into(),
                at,
            };
            let Some(action) = sim.next().and_then(|id| sim.action(id)).cloned() else {
                events.push(end("finished"));
                return events;
            };
            if sim.seq >= MAX_EXECUTIONS {
                events.push(end("limit"));
                return events;
            }
            let action = substitute(&action, &sim.variables);
            let jump = sim.decide_jump(&action);
            let executed = ActiveflowEvent::ActiveflowActionExecuted {
                seq: sim.seq + 1,
                action: action.clone(),
                jump,
                at,
            };
            sim.fold(executed.clone());
            events.push(executed);
            match &action.kind {
                ActionKind::Hangup(_) => {
                    events.push(end("hangup"));
                    return events;
                }
                ActionKind::Stop(_) => {
                    events.push(end("stopped"));
                    return events;
                }
                k if waits_for(k) => return events,
                _ => {}
            }
        }
        events.push(ActiveflowEvent::ActiveflowEnded {
            reason: "limit".into(),
            at,
        });
        events
    }

    fn decide(&self, command: ActiveflowCommand) -> Result<Vec<ActiveflowEvent>, DomainError> {
        if let ActiveflowCommand::Create { new, at } = command {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists(format!(
                    "activeflow {} exists",
                    new.activeflow_id
                )));
            }
            return Ok(vec![ActiveflowEvent::ActiveflowCreated {
                activeflow_id: new.activeflow_id,
                customer_id: new.customer_id,
                flow_id: new.flow_id,
                reference_type: ActiveflowReferenceType::Call,
                reference_id: new.reference_id,
                actions: new.actions,
                variables: new.variables,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("activeflow"));
        }
        if self.status == ActiveflowStatus::Ended {
            return Ok(vec![]);
        }
        Ok(match command {
            ActiveflowCommand::Create { .. } => vec![],
            ActiveflowCommand::Start { at } if !self.started => self.run(at, vec![]),
            ActiveflowCommand::Start { .. } => vec![],
            ActiveflowCommand::Complete { seq, result, at } if self.waiting == Some(seq) => {
                let result = self.accept(result);
                let ends_call = result.ends_call;
                let done = vec![ActiveflowEvent::ActiveflowActionCompleted { seq, result, at }];
                if ends_call {
                    // As the flow's own `hangup` ends it (through the call's hangup).
                    let mut done = done;
                    done.push(ActiveflowEvent::ActiveflowEnded {
                        reason: "call_ended".into(),
                        at,
                    });
                    done
                } else {
                    self.run(at, done)
                }
            }
            ActiveflowCommand::Complete { .. } => vec![],
            ActiveflowCommand::Stop { reason, at } => {
                vec![ActiveflowEvent::ActiveflowEnded { reason, at }]
            }
        })
    }

    /// Refuses fetched actions that would collide with the program's ids or outgrow it (the
    /// flow goes on without them, with the error recorded).
    fn accept(&self, mut result: ActionResult) -> ActionResult {
        if result.actions.is_empty() {
            return result;
        }
        let ids: HashSet<ActionId> = self.actions.iter().map(|a| a.id).collect();
        let problem = if result.actions.iter().any(|a| ids.contains(&a.id)) {
            Some("fetched actions reuse ids of the running flow")
        } else if self.actions.len() + result.actions.len() > MAX_PROGRAM {
            Some("fetched actions would make the flow longer than 1000 actions")
        } else {
            None
        };
        if let Some(p) = problem {
            result.actions.clear();
            result.error = Some(p.into());
        }
        result
    }

    fn fold(&mut self, event: ActiveflowEvent) {
        match event {
            ActiveflowEvent::ActiveflowCreated {
                activeflow_id,
                customer_id,
                flow_id,
                reference_type,
                reference_id,
                actions,
                variables,
                at,
            } => {
                *self = Activeflow {
                    id: Some(activeflow_id),
                    customer_id,
                    flow_id,
                    reference_type,
                    reference_id,
                    actions,
                    variables,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Activeflow::default()
                }
            }
            ActiveflowEvent::ActiveflowActionExecuted {
                seq,
                action,
                jump,
                at,
            } => {
                self.started = true;
                self.seq = seq;
                match &action.kind {
                    ActionKind::VariableSet(v) => {
                        self.variables
                            .insert(v.key.clone(), Value::String(v.value.clone()));
                    }
                    ActionKind::Goto(_) if jump.is_some() => {
                        *self.loops.entry(action.id).or_insert(0) += 1;
                    }
                    _ => {}
                }
                self.waiting = waits_for(&action.kind).then_some(seq);
                self.executed.push(Executed {
                    seq,
                    id: action.id,
                    kind: action.kind.type_name().into(),
                    tm_execute: at,
                    error: None,
                });
                if self.executed.len() > VIEW_EXECUTED {
                    self.executed.remove(0);
                }
                self.current = Some(action);
                self.jump = jump;
                self.tm_update = Some(at);
            }
            ActiveflowEvent::ActiveflowActionCompleted {
                seq, result, at, ..
            } => {
                self.waiting = None;
                if let Some(e) = self.executed.iter_mut().rev().find(|e| e.seq == seq) {
                    e.error = result.error.clone();
                }
                self.variables.extend(result.variables);
                if let (false, Some(current)) = (result.actions.is_empty(), &self.current) {
                    // Fetched actions run next; after the last one the flow goes where the
                    // fetching action would have gone.
                    let mut fetched = result.actions;
                    let after = self.jump.or(current.next_id);
                    if let Some(last) = fetched.last_mut() {
                        if last.next_id.is_none() {
                            last.next_id = after;
                        }
                    }
                    self.jump = fetched.first().map(|a| a.id);
                    let at_index = self
                        .actions
                        .iter()
                        .position(|a| a.id == current.id)
                        .map_or(self.actions.len(), |i| i + 1);
                    self.actions.splice(at_index..at_index, fetched);
                }
                self.tm_update = Some(at);
            }
            ActiveflowEvent::ActiveflowEnded { reason, at } => {
                self.status = ActiveflowStatus::Ended;
                self.end_reason = Some(reason);
                self.waiting = None;
                self.tm_end = Some(at);
                self.tm_update = Some(at);
            }
        }
    }
}

decided_aggregate!(Activeflow, ActiveflowCommand, ActiveflowEvent);

impl ResourceView for Activeflow {
    fn resource_after(&self, _: &ActiveflowEvent) -> Value {
        self.view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::validate_actions;
    use crate::testing::{given_nothing, Given};
    use chrono::TimeZone;
    use uuid::Uuid;

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn id(n: u128) -> ActionId {
        ActionId(Uuid::from_u128(n))
    }

    fn flow(actions: Value) -> Given<Activeflow> {
        let mut n = 1000;
        let actions = validate_actions(serde_json::from_value(actions).unwrap(), || {
            n += 1;
            id(n)
        })
        .unwrap();
        let mut variables = Map::new();
        variables.insert("name".into(), json!("Ann"));
        given_nothing::<Activeflow>().and(ActiveflowCommand::Create {
            new: NewActiveflow {
                activeflow_id: ActiveflowId::new(),
                customer_id: CustomerId::new(),
                flow_id: None,
                reference_id: CallId::new(),
                actions,
                variables,
            },
            at: t(0),
        })
    }

    fn types(events: &[ActiveflowEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                ActiveflowEvent::ActiveflowActionExecuted { action, .. } => {
                    action.kind.type_name().to_string()
                }
                ActiveflowEvent::ActiveflowActionCompleted { seq, .. } => format!("done {seq}"),
                ActiveflowEvent::ActiveflowEnded { reason, .. } => format!("end {reason}"),
                ActiveflowEvent::ActiveflowCreated { .. } => "created".into(),
            })
            .collect()
    }

    fn complete(seq: u64, digits: Option<&str>) -> ActiveflowCommand {
        let mut result = ActionResult::default();
        if let Some(d) = digits {
            result.variables.insert(DIGITS_VARIABLE.into(), json!(d));
        }
        ActiveflowCommand::Complete {
            seq,
            result,
            at: t(seq as i64),
        }
    }

    fn ivr() -> Given<Activeflow> {
        flow(json!([
            {"id": id(1), "type": "talk", "option": {"text": "Hello ${name}, press 1 or 2"}},
            {"type": "digits_receive", "option": {"duration": 5000, "length": 1}},
            {"type": "branch", "option": {"target_ids": {"1": id(10), "2": id(20)}, "default_target_id": id(30)}},
            {"id": id(10), "type": "talk", "option": {"text": "one"}, "next_id": id(40)},
            {"id": id(20), "type": "talk", "option": {"text": "two"}, "next_id": id(40)},
            {"id": id(30), "type": "goto", "option": {"target_id": id(1), "loop_count": 1}},
            {"id": id(40), "type": "hangup"},
        ]))
    }

    #[test]
    fn an_ivr_waits_for_each_media_action_and_branches_on_digits() {
        let mut f = ivr();
        let evs = f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        assert_eq!(types(&evs), ["talk"]);
        let ActiveflowEvent::ActiveflowActionExecuted { action, .. } = &evs[0] else {
            panic!()
        };
        assert_eq!(action.kind.option()["text"], "Hello Ann, press 1 or 2");
        f.when(ActiveflowCommand::Start { at: t(1) }).then_nothing();
        // A stale or repeated report changes nothing.
        f.when(complete(7, None)).then_nothing();
        assert_eq!(
            types(&f.when(complete(1, None)).then_ok()),
            ["done 1", "digits_receive"]
        );
        f.when(complete(1, None)).then_nothing();
        let evs = f.when(complete(2, Some("2"))).then_ok();
        assert_eq!(types(&evs), ["done 2", "branch", "talk"]);
        assert_eq!(f.current.as_ref().unwrap().id, id(20));
        let evs = f.when(complete(4, None)).then_ok();
        assert_eq!(types(&evs), ["done 4", "hangup", "end hangup"]);
        assert_eq!(f.status, ActiveflowStatus::Ended);
        f.when(complete(4, None)).then_nothing();
    }

    #[test]
    fn goto_loops_at_most_its_count_then_goes_on() {
        let mut f = ivr();
        f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        f.when(complete(1, None)).then_ok();
        // No digit: default target, a goto back to the menu once.
        let evs = f.when(complete(2, Some(""))).then_ok();
        assert_eq!(types(&evs), ["done 2", "branch", "goto", "talk"]);
        f.when(complete(5, None)).then_ok();
        let evs = f.when(complete(6, Some(""))).then_ok();
        // The goto has jumped once: it goes on to the next action, the hangup.
        assert_eq!(
            types(&evs),
            ["done 6", "branch", "goto", "hangup", "end hangup"]
        );
    }

    #[test]
    fn fetched_actions_run_next_then_the_flow_goes_on() {
        let mut f = flow(json!([
            {"type": "webhook_send", "option": {"uri": "https://example.com/x", "sync": true}},
            {"type": "stop"},
        ]));
        f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        let fetched = validate_actions(
            serde_json::from_value(json!([
                {"type": "variable_set", "option": {"key": "k", "value": "v"}},
                {"type": "condition_variable", "option": {"variable": "k", "condition": "==",
                    "value_type": "string", "value_string": "v", "false_target_id": id(99)}},
                {"id": id(99), "type": "beep"},
            ]))
            .unwrap(),
            || ActionId(Uuid::now_v7()),
        )
        .unwrap();
        let evs = f
            .when(ActiveflowCommand::Complete {
                seq: 1,
                result: ActionResult {
                    actions: fetched,
                    ..Default::default()
                },
                at: t(2),
            })
            .then_ok();
        assert_eq!(
            types(&evs),
            ["done 1", "variable_set", "condition_variable", "beep"]
        );
        assert_eq!(f.variables["k"], "v");
        assert_eq!(
            types(&f.when(complete(4, None)).then_ok()),
            ["done 4", "stop", "end stopped"]
        );
    }

    #[test]
    fn an_action_that_hung_up_the_call_ends_the_flow_with_its_variables() {
        let mut f = flow(json!([
            {"type": "ai_talk", "option": {"ai_id": Uuid::now_v7()}},
            {"type": "talk", "option": {"text": "never said"}},
        ]));
        f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        let mut variables = Map::new();
        variables.insert("order".into(), json!("two loaves"));
        let evs = f
            .when(ActiveflowCommand::Complete {
                seq: 1,
                result: ActionResult {
                    variables,
                    ends_call: true,
                    ..Default::default()
                },
                at: t(2),
            })
            .then_ok();
        assert_eq!(types(&evs), ["done 1", "end call_ended"]);
        assert_eq!(f.variables["order"], "two loaves");
    }

    #[test]
    fn a_loop_of_pure_actions_is_cut() {
        let mut f = flow(json!([
            {"id": id(1), "type": "variable_set", "option": {"key": "a", "value": "b"}, "next_id": id(1)},
        ]));
        let evs = f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        assert_eq!(evs.len(), MAX_STEPS_AT_ONCE + 1);
        assert_eq!(f.end_reason.as_deref(), Some("limit"));
    }

    #[test]
    fn stop_ends_once_and_conditions_compare_numbers() {
        let mut f = flow(json!([
            {"type": "condition_variable", "option": {"variable": "n", "condition": ">=",
                "value_type": "number", "value_number": 3, "false_target_id": id(5)}},
            {"type": "talk", "option": {"text": "big"}},
            {"id": id(5), "type": "talk", "option": {"text": "small"}},
        ]));
        f.variables.insert("n".into(), json!("2"));
        f.when(ActiveflowCommand::Start { at: t(1) }).then_ok();
        assert_eq!(f.current.as_ref().unwrap().id, id(5));
        f.when(ActiveflowCommand::Stop {
            reason: "call_ended".into(),
            at: t(2),
        })
        .then_count(1);
        f.when(ActiveflowCommand::Stop {
            reason: "stopped".into(),
            at: t(3),
        })
        .then_nothing();
        assert_eq!(f.end_reason.as_deref(), Some("call_ended"));
    }
}
