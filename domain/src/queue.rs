//! The Queue aggregate: answered calls wait here for one of the queue's agents.
//!
//! The queue decides the life of its calls (waiting -> service -> done, or waiting ->
//! abandoned) and keeps the statistics; which agent takes a call is the Customer aggregate's
//! decision (`AssignAgent`), because agents belong to the customer and may serve several
//! queues. The queue process manager drives both.

use crate::{DomainError, ResourceView};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;
use vbin_event_schema::*;

/// Most agents per queue.
pub const MAX_QUEUE_AGENTS: usize = 100;

/// A new queue's settings, validated by the API.
#[derive(Clone, Debug, PartialEq)]
pub struct NewQueue {
    /// Id.
    pub queue_id: QueueId,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// How agents are picked.
    pub routing_method: RoutingMethod,
    /// Its agents, in order.
    pub agent_ids: Vec<AgentId>,
    /// Longest wait.
    pub wait_timeout_ms: u32,
    /// What waiting calls hear.
    pub wait_flow_id: Option<FlowId>,
}

/// Queue commands.
#[derive(Clone, Debug, PartialEq)]
pub enum QueueCommand {
    /// Create it.
    Create {
        /// Settings.
        queue: NewQueue,
        /// When.
        at: DateTime<Utc>,
    },
    /// Change its settings (calls waiting keep their place).
    Update {
        /// Label.
        name: String,
        /// How agents are picked.
        routing_method: RoutingMethod,
        /// Its agents, in order.
        agent_ids: Vec<AgentId>,
        /// Longest wait.
        wait_timeout_ms: u32,
        /// What waiting calls hear.
        wait_flow_id: Option<FlowId>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A call joins (refused if it is in the queue already).
    Join {
        /// The queue call's id.
        queuecall_id: Uuid,
        /// The call.
        call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
    /// An agent was assigned to a waiting call (refused unless the call is waiting).
    Serve {
        /// The call.
        call_id: CallId,
        /// Its agent.
        agent_id: AgentId,
        /// When.
        at: DateTime<Utc>,
    },
    /// The agent of a served call did not answer: the call waits again (no-op unless that
    /// agent serves it).
    Requeue {
        /// The call.
        call_id: CallId,
        /// The agent that did not answer.
        agent_id: AgentId,
        /// When.
        at: DateTime<Utc>,
    },
    /// A waiting call leaves without an agent (no-op unless it is waiting).
    Abandon {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: AbandonReason,
        /// When.
        at: DateTime<Utc>,
    },
    /// A served call ended (no-op unless it is being served).
    Finish {
        /// The call.
        call_id: CallId,
        /// When.
        at: DateTime<Utc>,
    },
}

/// A queue's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    /// None until created.
    pub id: Option<QueueId>,
    /// Owner.
    pub customer_id: CustomerId,
    /// Label.
    pub name: String,
    /// How agents are picked.
    pub routing_method: RoutingMethod,
    /// Its agents, in order.
    pub agent_ids: Vec<AgentId>,
    /// Longest wait.
    pub wait_timeout_ms: u32,
    /// What waiting calls hear.
    pub wait_flow_id: Option<FlowId>,
    /// Calls waiting, by call id.
    pub waiting: BTreeMap<CallId, Queuecall>,
    /// Calls with an agent, by call id.
    pub serving: BTreeMap<CallId, Queuecall>,
    /// Statistics.
    pub stats: QueueStats,
    /// Created.
    pub tm_create: Option<DateTime<Utc>>,
    /// Last change.
    pub tm_update: Option<DateTime<Utc>>,
}

fn wait_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_milliseconds().max(0) as u64
}

impl Queue {
    /// API view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id, "type": "queue", "customer_id": self.customer_id,
            "name": self.name, "routing_method": self.routing_method,
            "agent_ids": self.agent_ids, "wait_timeout_ms": self.wait_timeout_ms,
            "wait_flow_id": self.wait_flow_id,
            "waiting": self.stats.waiting, "serving": self.stats.serving,
            "served": self.stats.served, "abandoned": self.stats.abandoned,
            "total_wait_ms": self.stats.total_wait_ms,
            "average_wait_ms": self.stats.average_wait_ms,
            "agent_no_answer": self.stats.agent_no_answer,
            "tm_create": self.tm_create, "tm_update": self.tm_update,
        })
    }

    fn with_average(mut stats: QueueStats) -> QueueStats {
        stats.average_wait_ms = stats
            .total_wait_ms
            .checked_div(stats.served)
            .unwrap_or_default();
        stats
    }

    fn decide(&self, command: QueueCommand) -> Result<Vec<QueueEvent>, DomainError> {
        if let QueueCommand::Create { queue: q, at } = command {
            if self.id.is_some() {
                return Err(DomainError::AlreadyExists("queue exists".into()));
            }
            return Ok(vec![QueueEvent::QueueCreated {
                queue_id: q.queue_id,
                customer_id: q.customer_id,
                name: q.name,
                routing_method: q.routing_method,
                agent_ids: q.agent_ids,
                wait_timeout_ms: q.wait_timeout_ms,
                wait_flow_id: q.wait_flow_id,
                at,
            }]);
        }
        if self.id.is_none() {
            return Err(DomainError::NotFound("queue"));
        }
        let s = self.stats;
        Ok(match command {
            QueueCommand::Create { .. } => unreachable!("handled above"),
            QueueCommand::Update {
                name,
                routing_method,
                agent_ids,
                wait_timeout_ms,
                wait_flow_id,
                at,
            } => vec![QueueEvent::QueueUpdated {
                name,
                routing_method,
                agent_ids,
                wait_timeout_ms,
                wait_flow_id,
                at,
            }],
            QueueCommand::Join {
                queuecall_id,
                call_id,
                at,
            } => {
                if self.waiting.contains_key(&call_id) || self.serving.contains_key(&call_id) {
                    return Err(DomainError::FailedPrecondition(
                        "the call is in the queue already".into(),
                    ));
                }
                vec![QueueEvent::QueuecallJoined {
                    call: Queuecall {
                        queuecall_id,
                        call_id,
                        tm_join: at,
                        agent_id: None,
                        tm_service: None,
                        wait_ms: None,
                        tried: vec![],
                    },
                    stats: QueueStats {
                        waiting: s.waiting + 1,
                        ..s
                    },
                }]
            }
            QueueCommand::Serve {
                call_id,
                agent_id,
                at,
            } => {
                let Some(call) = self.waiting.get(&call_id) else {
                    return Err(DomainError::FailedPrecondition(
                        "the call is not waiting in the queue".into(),
                    ));
                };
                let waited = wait_ms(call.tm_join, at);
                vec![QueueEvent::QueuecallServed {
                    call: Queuecall {
                        agent_id: Some(agent_id),
                        tm_service: Some(at),
                        wait_ms: Some(waited),
                        ..call.clone()
                    },
                    stats: Self::with_average(QueueStats {
                        waiting: s.waiting.saturating_sub(1),
                        serving: s.serving + 1,
                        served: s.served + 1,
                        total_wait_ms: s.total_wait_ms + waited,
                        ..s
                    }),
                }]
            }
            QueueCommand::Abandon {
                call_id,
                reason,
                at,
            } => {
                let Some(call) = self.waiting.get(&call_id) else {
                    return Ok(vec![]);
                };
                vec![QueueEvent::QueuecallAbandoned {
                    call: Queuecall {
                        wait_ms: Some(wait_ms(call.tm_join, at)),
                        ..call.clone()
                    },
                    reason,
                    stats: QueueStats {
                        waiting: s.waiting.saturating_sub(1),
                        abandoned: s.abandoned + 1,
                        ..s
                    },
                    at,
                }]
            }
            QueueCommand::Requeue {
                call_id,
                agent_id,
                at,
            } => {
                let Some(call) = self
                    .serving
                    .get(&call_id)
                    .filter(|c| c.agent_id == Some(agent_id))
                else {
                    return Ok(vec![]);
                };
                let mut tried = call.tried.clone();
                tried.push(agent_id);
                // Not served after all: its wait goes on and counts once it is.
                vec![QueueEvent::QueuecallRequeued {
                    call: Queuecall {
                        agent_id: None,
                        tm_service: None,
                        wait_ms: None,
                        tried,
                        ..call.clone()
                    },
                    agent_id,
                    stats: Self::with_average(QueueStats {
                        waiting: s.waiting + 1,
                        serving: s.serving.saturating_sub(1),
                        served: s.served.saturating_sub(1),
                        total_wait_ms: s
                            .total_wait_ms
                            .saturating_sub(call.wait_ms.unwrap_or_default()),
                        agent_no_answer: s.agent_no_answer + 1,
                        ..s
                    }),
                    at,
                }]
            }
            QueueCommand::Finish { call_id, at } => {
                let Some(call) = self.serving.get(&call_id) else {
                    return Ok(vec![]);
                };
                vec![QueueEvent::QueuecallDone {
                    call: call.clone(),
                    stats: QueueStats {
                        serving: s.serving.saturating_sub(1),
                        ..s
                    },
                    at,
                }]
            }
        })
    }

    fn fold(&mut self, event: QueueEvent) {
        match event {
            QueueEvent::QueueCreated {
                queue_id,
                customer_id,
                name,
                routing_method,
                agent_ids,
                wait_timeout_ms,
                wait_flow_id,
                at,
            } => {
                *self = Queue {
                    wait_flow_id,
                    id: Some(queue_id),
                    customer_id,
                    name,
                    routing_method,
                    agent_ids,
                    wait_timeout_ms,
                    tm_create: Some(at),
                    tm_update: Some(at),
                    ..Queue::default()
                }
            }
            QueueEvent::QueueUpdated {
                name,
                routing_method,
                agent_ids,
                wait_timeout_ms,
                wait_flow_id,
                at,
            } => {
                self.wait_flow_id = wait_flow_id;
                self.name = name;
                self.routing_method = routing_method;
                self.agent_ids = agent_ids;
                self.wait_timeout_ms = wait_timeout_ms;
                self.tm_update = Some(at);
            }
            QueueEvent::QueuecallJoined { call, stats } => {
                self.tm_update = Some(call.tm_join);
                self.waiting.insert(call.call_id, call);
                self.stats = stats;
            }
            QueueEvent::QueuecallServed { call, stats } => {
                self.tm_update = call.tm_service;
                self.waiting.remove(&call.call_id);
                self.serving.insert(call.call_id, call);
                self.stats = stats;
            }
            QueueEvent::QueuecallRequeued {
                call, stats, at, ..
            } => {
                self.serving.remove(&call.call_id);
                self.waiting.insert(call.call_id, call);
                self.stats = stats;
                self.tm_update = Some(at);
            }
            QueueEvent::QueuecallAbandoned {
                call, stats, at, ..
            } => {
                self.waiting.remove(&call.call_id);
                self.stats = stats;
                self.tm_update = Some(at);
            }
            QueueEvent::QueuecallDone { call, stats, at } => {
                self.serving.remove(&call.call_id);
                self.stats = stats;
                self.tm_update = Some(at);
            }
        }
    }

    /// The view of a queue call event's call (None for the queue's own events).
    pub fn queuecall_view(&self, event: &QueueEvent) -> Option<Value> {
        let (call, status, reason, tm_end) = match event {
            QueueEvent::QueueCreated { .. } | QueueEvent::QueueUpdated { .. } => return None,
            QueueEvent::QueuecallJoined { call, .. } => (call, "waiting", None, None),
            QueueEvent::QueuecallServed { call, .. } => (call, "service", None, None),
            QueueEvent::QueuecallRequeued { call, .. } => (call, "waiting", None, None),
            QueueEvent::QueuecallAbandoned {
                call, reason, at, ..
            } => (call, "abandoned", Some(*reason), Some(*at)),
            QueueEvent::QueuecallDone { call, at, .. } => (call, "done", None, Some(*at)),
        };
        Some(json!({
            "id": call.queuecall_id, "type": "queuecall", "customer_id": self.customer_id,
            "queue_id": self.id, "call_id": call.call_id, "status": status,
            "agent_id": call.agent_id, "abandon_reason": reason, "wait_ms": call.wait_ms,
            "tm_create": call.tm_join, "tm_service": call.tm_service, "tm_end": tm_end,
            "tried_agent_ids": call.tried,
            "tm_update": match event {
                QueueEvent::QueuecallRequeued { at, .. } => *at,
                _ => tm_end.or(call.tm_service).unwrap_or(call.tm_join),
            },
        }))
    }
}

decided_aggregate!(Queue, QueueCommand, QueueEvent);

impl ResourceView for Queue {
    /// Queue call events show the queue call; the queue's statistics travel in their payload.
    fn resource_after(&self, event: &QueueEvent) -> Value {
        self.queuecall_view(event).unwrap_or_else(|| self.view())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given_nothing, Given};
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap()
    }

    fn queue() -> Given<Queue> {
        given_nothing::<Queue>().and(QueueCommand::Create {
            queue: NewQueue {
                queue_id: QueueId::new(),
                customer_id: CustomerId::new(),
                name: "support".into(),
                routing_method: RoutingMethod::Linear,
                agent_ids: vec![AgentId::new()],
                wait_timeout_ms: 60_000,
                wait_flow_id: None,
            },
            at: t(0),
        })
    }

    fn join(q: &mut Given<Queue>, at: i64) -> CallId {
        let call_id = CallId::new();
        q.when(QueueCommand::Join {
            queuecall_id: Uuid::now_v7(),
            call_id,
            at: t(at),
        })
        .then_ok();
        call_id
    }

    #[test]
    fn statistics_follow_the_calls() {
        let mut q = queue();
        let agent = q.agent_ids[0];
        let (a, b, c) = (join(&mut q, 0), join(&mut q, 100), join(&mut q, 200));
        assert_eq!(q.stats.waiting, 3);
        let serve = |call_id, at| QueueCommand::Serve {
            call_id,
            agent_id: agent,
            at: t(at),
        };
        q.when(serve(a, 1_000)).then_ok();
        q.when(serve(b, 2_100)).then_ok();
        // Serving twice, or serving a call that is not waiting, is refused.
        q.when(serve(a, 2_200)).then_refused();
        let abandon = |call_id, at| QueueCommand::Abandon {
            call_id,
            reason: AbandonReason::Timeout,
            at: t(at),
        };
        q.when(abandon(c, 3_200)).then_count(1);
        q.when(abandon(c, 3_300)).then_nothing(); // once
        q.when(serve(c, 3_400)).then_refused();
        let finish = |call_id, at| QueueCommand::Finish { call_id, at: t(at) };
        q.when(finish(a, 5_000)).then_count(1);
        q.when(finish(a, 5_000)).then_nothing(); // once
        q.when(finish(c, 5_000)).then_nothing(); // never served
        assert_eq!(
            q.stats,
            QueueStats {
                waiting: 0,
                serving: 1,
                served: 2,
                abandoned: 1,
                total_wait_ms: 3_000,
                average_wait_ms: 1_500,
                agent_no_answer: 0,
            }
        );
        // b's agent did not answer: b waits again, keeping its join time, and its wait no
        // longer counts as served.
        let requeue = |agent_id| QueueCommand::Requeue {
            call_id: b,
            agent_id,
            at: t(5_500),
        };
        q.when(requeue(AgentId::new())).then_nothing(); // not its agent
        q.when(requeue(agent)).then_count(1);
        q.when(requeue(agent)).then_nothing(); // once
        assert_eq!(q.waiting[&b].tried, [agent]);
        assert_eq!(q.waiting[&b].tm_join, t(100));
        assert_eq!(
            (q.stats.waiting, q.stats.serving, q.stats.served),
            (1, 0, 1)
        );
        assert_eq!(
            (q.stats.total_wait_ms, q.stats.average_wait_ms),
            (1_000, 1_000)
        );
        assert_eq!(q.stats.agent_no_answer, 1);
        q.when(serve(b, 7_100)).then_ok();
        assert_eq!(q.stats.average_wait_ms, 4_000, "(1000 + 7000) / 2");
        assert!(q.serving[&b].tried.contains(&agent));
        // A call in the queue cannot join again.
        q.when(QueueCommand::Join {
            queuecall_id: Uuid::now_v7(),
            call_id: b,
            at: t(6_000),
        })
        .then_refused();
    }

    #[test]
    fn queuecall_views_carry_status_and_wait() {
        let mut q = queue();
        let a = join(&mut q, 0);
        let ev = q
            .when(QueueCommand::Abandon {
                call_id: a,
                reason: AbandonReason::Hangup,
                at: t(700),
            })
            .then_ok();
        let v = q.resource_after(&ev[0]);
        assert_eq!(v["type"], "queuecall");
        assert_eq!(v["status"], "abandoned");
        assert_eq!(v["abandon_reason"], "hangup");
        assert_eq!(v["wait_ms"], 700);
        let touched: vbin_event_schema::views::Touched = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(touched.tm_update, t(700));
        assert_eq!(v["queue_id"], json!(q.id));
        assert_eq!(q.view()["abandoned"], 1);
    }
}
