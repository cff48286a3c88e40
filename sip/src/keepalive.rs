//! OPTIONS keepalives of trunks: every `SipSettings::keepalive`, each live trunk gets an
//! OPTIONS; any final response (even a 401 or a 404) means it is reachable, none within the
//! timeout that it is not. A change of reachability is an event of the trunk
//! (`trunk_reachability_changed`), so its view, the webhooks and the WebSocket carry it.

use crate::SipCarrier;
use futures::StreamExt;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::typed::{From, To};
use rsipstack::sip::{HostWithPort, Method, SipMessage, StatusCodeKind, Transport, Uri};
use rsipstack::transaction::key::{TransactionKey, TransactionRole};
use rsipstack::transaction::make_tag;
use rsipstack::transaction::transaction::Transaction;
use rsipstack::transport::SipAddr;
use std::time::Duration;
use uuid::Uuid;
use vbin_domain::{Trunk, TrunkCommand};
use vbin_event_schema::CustomerId;

/// Trunks probed at once.
const CONCURRENCY: usize = 32;

/// A trunk to probe, from the trunks' read model.
#[derive(sqlx::FromRow)]
struct Probe {
    id: Uuid,
    customer_id: Uuid,
    host: String,
    port: i32,
    transport: String,
}

impl SipCarrier {
    /// Probes every live trunk every `every` (each process running the carrier does; the
    /// trunk records only changes).
    pub(crate) async fn keep_trunks_alive(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A probe waits at most the interval (and 10 s): the next round is the next word.
        let timeout = every.clamp(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            tick.tick().await;
            let trunks: Vec<Probe> = match sqlx::query_as(
                "SELECT id, customer_id, body->>'host' AS host, \
                        (body->>'port')::int AS port, body->>'transport' AS transport \
                 FROM rm_trunks WHERE body->>'status' = 'active'",
            )
            .fetch_all(&self.inner.pool)
            .await
            {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "listing the trunks to keep alive failed");
                    continue;
                }
            };
            futures::stream::iter(trunks)
                .for_each_concurrent(CONCURRENCY, |t| async move {
                    let answer = tokio::time::timeout(timeout, self.options(&t)).await;
                    let (reachable, code) = match answer {
                        Ok(Ok(code)) => (true, Some(code)),
                        Ok(Err(e)) => {
                            tracing::debug!(trunk = %t.id, error = %e, "OPTIONS failed");
                            (false, None)
                        }
                        Err(_) => (false, None),
                    };
                    metrics::counter!("vbin_sip_options_total", "reachable" => reachable.to_string())
                        .increment(1);
                    self.mark(&t, reachable, code).await;
                })
                .await;
        }
    }

    async fn mark(&self, t: &Probe, reachable: bool, code: Option<u16>) {
        let customer = CustomerId(t.customer_id);
        let acting = vbin_app::Acting::system("sip-carrier", customer, &t.id.to_string());
        let cmd = TrunkCommand::MarkReachability {
            reachable,
            code,
            at: chrono::Utc::now(),
        };
        let res = self
            .inner
            .app
            .executor
            .execute::<Trunk>(t.id, customer, Some(customer), cmd, &acting.meta)
            .await;
        match res {
            Ok(done) if !done.recorded.is_empty() => {
                tracing::info!(trunk = %t.id, host = %t.host, reachable, ?code, "trunk reachability changed");
            }
            Ok(_) | Err(vbin_app::ExecError::Domain(vbin_domain::DomainError::NotFound(_))) => {}
            Err(e) => {
                tracing::warn!(trunk = %t.id, error = %vbin_bus::Chain(&e), "recording the trunk's reachability failed");
            }
        }
    }

    /// One OPTIONS to the trunk: the status code of its final response.
    async fn options(&self, t: &Probe) -> Result<u16, String> {
        let transport = match t.transport.as_str() {
            "tcp" => Transport::Tcp,
            _ => Transport::Udp,
        };
        let port = u16::try_from(t.port).map_err(|e| e.to_string())?;
        let host = crate::host_port(&t.host, port);
        let tcp = if transport == Transport::Tcp {
            ";transport=tcp"
        } else {
            ""
        };
        let target =
            Uri::try_from(format!("sip:{host}{tcp}").as_str()).map_err(|e| e.to_string())?;
        let ep = &self.inner.endpoint;
        let ours = ep
            .transport_layer
            .get_addrs()
            .into_iter()
            .find(|a| a.r#type == Some(transport));
        let via = ep.get_via(ours, None).map_err(|e| e.to_string())?;
        let from = From {
            display_name: None,
            uri: Uri::try_from(format!("sip:vbin@{}", self.inner.public).as_str())
                .map_err(|e| e.to_string())?,
            params: vec![],
        }
        .with_tag(make_tag());
        let to = To {
            display_name: None,
            uri: target.clone(),
            params: vec![],
        };
        let req = ep.make_request(Method::Options, target, via, from, to, 1, None);
        let key = TransactionKey::from_request(&req, TransactionRole::Client)
            .map_err(|e| e.to_string())?;
        let mut tx = Transaction::new_client(key, req, ep.clone(), None);
        tx.destination = Some(SipAddr::new(
            transport,
            HostWithPort::try_from(host.as_str()).map_err(|e| e.to_string())?,
        ));
        tx.send().await.map_err(|e| e.to_string())?;
        while let Some(msg) = tx.receive().await {
            if let SipMessage::Response(r) = msg {
                // rsipstack answers a failed send itself (a 503 without a To tag): that is
                // no answer of the trunk's.
                let tagged = r
                    .to_header()
                    .ok()
                    .and_then(|t| t.tag().ok().flatten())
                    .is_some();
                if r.status_code.kind() != StatusCodeKind::Provisional {
                    return if tagged {
                        Ok(r.status_code.code())
                    } else {
                        Err(format!("no answer ({} made locally)", r.status_code.code()))
                    };
                }
            }
        }
        Err("no final response".into())
    }
}
