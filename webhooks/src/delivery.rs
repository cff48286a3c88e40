//! Durable webhook delivery.
//!
//! - **Recorder** (`webhook-recorder`, a durable consumer of every event): for a customer with
//!   a `webhook_uri`, writes the delivery (exact body, target) to `webhook_deliveries` before
//!   anything is sent; a redelivered event finds its row and adds nothing.
//! - **Sender** (every process running the part): claims due deliveries by moving their
//!   `next_attempt_at` one lease ahead (a crashed sender's claims come due again), sends them
//!   concurrently, records each attempt and schedules the retry. A resource's next delivery
//!   waits while an earlier one of the same resource is pending (order per resource), and a
//!   customer has at most [`Settings::per_customer`] deliveries in flight, so a slow endpoint
//!   delays only its own customer.

use crate::guard::{AddressPolicy, GuardedResolver};
use crate::signing::{body_for, signed_headers, Secrets};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use uuid::Uuid;
use vbin_bus::{run_consumer, Bus, ConsumerSpec};
use vbin_commands::Executor;
use vbin_domain::Customer;
use vbin_event_schema::{PublishedEvent, SUBJECT_PREFIX};

/// Durable consumer name of the recorder.
pub const RECORDER: &str = "webhook-recorder";

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Wait before each attempt: the first is normally 0 (at once); after the last, failed.
    pub schedule: Vec<Duration>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub total_timeout: Duration,
    /// Deliveries of one customer in flight at once.
    pub per_customer: usize,
    /// Deliveries in flight at once in this process.
    pub concurrency: usize,
    /// Where requests may go (SSRF protection).
    pub policy: AddressPolicy,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        let s = |secs: u64| Duration::from_secs(secs);
        Self {
            // Immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, then failed (~27.6 h).
            schedule: vec![
                s(0),
                s(5),
                s(300),
                s(1800),
                s(7200),
                s(18000),
                s(36000),
                s(36000),
            ],
            connect_timeout: s(5),
            total_timeout: s(15),
            per_customer: 32,
            concurrency: 256,
            policy: AddressPolicy::default(),
            disable_after: s(5 * 24 * 3600),
        }
    }
}

impl Settings {
    /// The defaults, with `VBIN_WEBHOOK_RETRY_SCHEDULE_MS` (comma-separated milliseconds)
    /// replacing the schedule when set, and the address policy of [`AddressPolicy::from_env`].
    pub fn from_env() -> Result<Self, String> {
        let mut s = Self {
            policy: AddressPolicy::from_env()?,
            ..Self::default()
        };
        if let Ok(v) = std::env::var("VBIN_WEBHOOK_RETRY_SCHEDULE_MS") {
            s.schedule = v
                .split(',')
                .map(|p| p.trim().parse::<u64>().map(Duration::from_millis))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("VBIN_WEBHOOK_RETRY_SCHEDULE_MS: {e}"))?;
            if s.schedule.is_empty() {
                return Err("VBIN_WEBHOOK_RETRY_SCHEDULE_MS is empty".into());
            }
        }
        if let Ok(v) = std::env::var("VBIN_WEBHOOK_PER_CUSTOMER") {
            s.per_customer = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or("VBIN_WEBHOOK_PER_CUSTOMER must be a positive integer")?;
        }
        if let Ok(v) = std::env::var("VBIN_WEBHOOK_DISABLE_AFTER_SECS") {
            s.disable_after = v
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| format!("VBIN_WEBHOOK_DISABLE_AFTER_SECS: {e}"))?;
        }
        Ok(s)
    }

    /// The wait before attempt `n` (1-based) with ±10 % jitter; None when there is none.
    fn wait_before(&self, n: usize) -> Option<Duration> {
        let base = *self.schedule.get(n.checked_sub(1)?)?;
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        Some(base.mul_f64(jitter))
    }
}

/// Why recording or sending failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Postgres.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Loading the customer.
    #[error("customer: {0}")]
    Customer(String),
}

/// Runs the recorder and the sender until `shutdown`.
pub async fn run(
    pool: sqlx::PgPool,
    executor: Executor,
    bus: Bus,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let wake = Arc::new(Notify::new());
    let spec = ConsumerSpec {
        name: RECORDER.to_string(),
        filter_subject: format!("{SUBJECT_PREFIX}.>"),
        event_types: vec![],
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        lanes: 1,
    }
    .lanes(8);
    let (tx, stopped) = vbin_bus::stop_signal();
    let recorder = run_consumer(
        bus,
        spec,
        |e| record(pool.clone(), executor.clone(), e, wake.clone()),
        stopped(),
    );
    let sender = Sender::new(pool.clone(), executor.clone(), settings).run(wake.clone(), stopped());
    let all = futures::future::join(recorder, sender);
    tokio::pin!(all);
    tokio::select! {
        _ = shutdown => { let _ = tx.send(true); all.await; }
        _ = &mut all => {}
    }
}

/// Writes the delivery of `e` if its customer has a webhook.
async fn record(
    pool: sqlx::PgPool,
    executor: Executor,
    e: PublishedEvent,
    wake: Arc<Notify>,
) -> Result<(), WebhookError> {
    let customer = executor
        .load::<Customer>(e.customer_id, None)
        .await
        .map_err(|err| WebhookError::Customer(err.to_string()))?;
    // Only events from the moment the endpoint was set: a recorder catching up on a backlog
    // must not send an endpoint what happened before it was configured.
    let Some(c) = customer.filter(|c| {
        !c.webhook_uri.is_empty() && c.webhook_since.is_none_or(|since| e.timestamp >= since)
    }) else {
        return Ok(());
    };
    let resource_id = e.resource["id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
        .unwrap_or(e.aggregate_id);
    let method = serde_json::to_value(c.webhook_method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "POST".into());
    let inserted = sqlx::query(
        "INSERT INTO webhook_deliveries (id, customer_id, event_id, event_type, resource_type, resource_id, uri, method, body) \
         VALUES ($1, $2, $3, $4, $9, $5, $6, $7, $8) ON CONFLICT (customer_id, event_id) DO NOTHING",
    )
    .bind(Uuid::now_v7())
    .bind(e.customer_id)
    .bind(e.event_id)
    .bind(&e.event_type)
    .bind(resource_id)
    .bind(&c.webhook_uri)
    .bind(method)
    .bind(body_for(&e))
    .bind(e.resource["type"].as_str().unwrap_or(&e.aggregate_type))
    .execute(&pool)
    .await?;
    if inserted.rows_affected() > 0 {
        metrics::counter!("vbin_webhook_deliveries_created_total").increment(1);
        wake.notify_one();
    }
    Ok(())
}

/// A claimed delivery.
#[derive(sqlx::FromRow)]
struct Claimed {
    id: Uuid,
    customer_id: Uuid,
    event_id: Uuid,
    event_type: String,
    uri: String,
    method: String,
    body: Vec<u8>,
    attempts: i32,
}

/// What one attempt gave.
struct Outcome {
    status_code: Option<u16>,
    latency: Duration,
    error: Option<String>,
    retry_after: Option<Duration>,
}

#[derive(Clone)]
struct Sender {
    pool: sqlx::PgPool,
    executor: Executor,
    settings: Arc<Settings>,
    http: reqwest::Client,
    in_flight: Arc<Mutex<HashMap<Uuid, usize>>>,
    slots: Arc<Semaphore>,
}

impl Sender {
    fn new(pool: sqlx::PgPool, executor: Executor, settings: Settings) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::new(
                settings.policy.clone(),
            ))))
            .user_agent("vbin-webhooks/1")
            .build()
            .expect("a reqwest client builds");
        Self {
            pool,
            executor,
            http,
            in_flight: Default::default(),
            slots: Arc::new(Semaphore::new(settings.concurrency)),
            settings: Arc::new(settings),
        }
    }

    async fn run(self, wake: Arc<Notify>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut depth_at = Instant::now() - Duration::from_secs(60);
        loop {
            if depth_at.elapsed() >= Duration::from_secs(5) {
                depth_at = Instant::now();
                if let Ok(n) = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'",
                )
                .fetch_one(&self.pool)
                .await
                {
                    metrics::gauge!("vbin_webhook_queue_depth").set(n as f64);
                }
            }
            let claimed = match self.claim().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying");
                    vec![]
                }
            };
            let idle = claimed.is_empty();
            for d in claimed {
                let permit = self.slots.clone().acquire_owned().await.expect("open");
                *self
                    .in_flight
                    .lock()
                    .expect("in flight")
                    .entry(d.customer_id)
                    .or_default() += 1;
                let me = self.clone();
                let wake = wake.clone();
                tokio::spawn(async move {
                    let customer = d.customer_id;
                    if let Err(e) = me.deliver(d).await {
                        tracing::warn!(error = %e, "recording a webhook attempt failed; it will be retried");
                    }
                    let mut m = me.in_flight.lock().expect("in flight");
                    if let Some(n) = m.get_mut(&customer) {
                        *n -= 1;
                        if *n == 0 {
                            m.remove(&customer);
                        }
                    }
                    drop(m);
                    drop(permit);
                    // A slot (and maybe the resource's next delivery) is free.
                    wake.notify_one();
                });
            }
            if idle {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = wake.notified() => {
                        // Let a few more completions and new deliveries gather: one claim
                        // query for them all.
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            } else if futures::poll!(&mut shutdown).is_ready() {
                return;
            }
        }
    }

    /// Claims due deliveries: the oldest pending one of each resource, at most
    /// `per_customer` per customer counting those in flight here.
    async fn claim(&self) -> Result<Vec<Claimed>, sqlx::Error> {
        // Customers with deliveries in flight here, and how many: they get only the rest of
        // their allowance (none when full).
        let (busy, counts): (Vec<Uuid>, Vec<i32>) = {
            let m = self.in_flight.lock().expect("in flight");
            m.iter().map(|(c, n)| (*c, *n as i32)).unzip()
        };
        let full: Vec<Uuid> = busy
            .iter()
            .zip(&counts)
            .filter(|(_, n)| **n as usize >= self.settings.per_customer)
            .map(|(c, _)| *c)
            .collect();
        let lease = self.settings.total_timeout + Duration::from_secs(15);
        sqlx::query_as(
            "WITH due AS ( \
               SELECT id, customer_id, resource_id, resource_type FROM webhook_deliveries \
               WHERE status = 'pending' AND next_attempt_at <= now() AND customer_id <> ALL($1) \
               ORDER BY next_attempt_at LIMIT 2000), \
             cand AS ( \
               SELECT d.id, d.customer_id, \
                      row_number() OVER (PARTITION BY d.customer_id ORDER BY d.id) AS rn \
               FROM due d \
               WHERE NOT EXISTS (SELECT 1 FROM webhook_deliveries o WHERE o.status = 'pending' \
                     AND o.customer_id = d.customer_id AND o.resource_id = d.resource_id \
                     AND o.resource_type = d.resource_type AND o.id < d.id) \
             ) \
             UPDATE webhook_deliveries w SET next_attempt_at = now() + make_interval(secs => $2), updated_at = now() \
             FROM cand WHERE w.id = cand.id \
               AND cand.rn <= $3 - COALESCE((SELECT u.n FROM unnest($4::uuid[], $5::int[]) AS u(c, n) \
                                             WHERE u.c = cand.customer_id), 0) \
               AND w.status = 'pending' AND w.next_attempt_at <= now() \
             RETURNING w.id, w.customer_id, w.event_id, w.event_type, w.uri, w.method, w.body, w.attempts",
        )
        .bind(&full)
        .bind(lease.as_secs_f64())
        .bind(self.settings.per_customer as i64)
        .bind(&busy)
        .bind(&counts)
        .fetch_all(&self.pool)
        .await
    }

    async fn deliver(&self, d: Claimed) -> Result<(), sqlx::Error> {
        let secrets: Option<(String, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT secret, previous_secret, previous_valid_until FROM webhook_secrets WHERE customer_id = $1",
        )
        .bind(d.customer_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((current, previous, until)) = secrets else {
            tracing::error!(customer_id = %d.customer_id, "customer without a webhook secret; delivery failed");
            return self
                .finish(&d, &Outcome::error("no webhook secret"), "failed", None)
                .await;
        };
        let previous = previous.filter(|_| until.is_some_and(|u| u > Utc::now()));
        let outcome = self.attempt(&d, &current, previous.as_deref()).await;
        let attempt = d.attempts as usize + 1;
        let ok = outcome.status_code.is_some_and(|c| (200..300).contains(&c));
        let gone = outcome.status_code == Some(410);
        let (status, next) = if ok {
            ("delivered", None)
        } else if gone {
            ("failed", None)
        } else {
            let wait = outcome
                .retry_after
                .map(|w| w.clamp(Duration::from_secs(1), Duration::from_secs(3600)))
                .or_else(|| self.settings.wait_before(attempt + 1));
            match wait {
                Some(w) => ("pending", Some(w)),
                None => ("failed", None),
            }
        };
        metrics::counter!("vbin_webhook_attempts_total", "outcome" => if ok { "ok" } else { "error" })
            .increment(1);
        metrics::histogram!("vbin_webhook_attempt_seconds").record(outcome.latency.as_secs_f64());
        self.finish(&d, &outcome, status, next).await?;
        if status != "pending" {
            metrics::counter!("vbin_webhook_deliveries_total", "status" => status).increment(1);
        }
        let disable = if gone {
            Some("the endpoint answered 410 Gone".to_string())
        } else {
            self.track_endpoint(&d, ok).await?
        };
        if let Some(reason) = disable {
            self.disable(&d, reason).await?;
        }
        Ok(())
    }

    /// Records the endpoint's health; returns why to disable it when it has failed without a
    /// success for `disable_after`.
    async fn track_endpoint(&self, d: &Claimed, ok: bool) -> Result<Option<String>, sqlx::Error> {
        if ok {
            // Writes only when the endpoint was failing: the healthy path stays read-only.
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = NULL \
                 WHERE customer_id = $1 AND failing_since IS NOT NULL",
            )
            .bind(d.customer_id)
            .execute(&self.pool)
            .await?;
            return Ok(None);
        }
        // A new endpoint starts its failure clock afresh.
        let since: DateTime<Utc> = sqlx::query_scalar(
            "INSERT INTO webhook_endpoints (customer_id, uri, failing_since) VALUES ($1, $2, now()) \
             ON CONFLICT (customer_id) DO UPDATE SET \
               failing_since = CASE WHEN webhook_endpoints.uri = $2 \
                   THEN COALESCE(webhook_endpoints.failing_since, now()) ELSE now() END, uri = $2 \
             RETURNING failing_since",
        )
        .bind(d.customer_id)
        .bind(&d.uri)
        .fetch_one(&self.pool)
        .await?;
        let failing = (Utc::now() - since).to_std().unwrap_or_default();
        Ok((failing >= self.settings.disable_after)
            .then(|| format!("failing without a success since {}", since.to_rfc3339())))
    }

    /// Disables the customer's endpoint (a Customer command, so it is an event in the log)
    /// and fails its pending deliveries.
    async fn disable(&self, d: &Claimed, reason: String) -> Result<(), sqlx::Error> {
        let customer = vbin_event_schema::CustomerId(d.customer_id);
        let mut meta =
            vbin_commands::CommandMeta::caused_by("webhooks", d.id, &d.customer_id.to_string());
        meta.customer_id = Some(d.customer_id);
        let cmd = vbin_domain::CustomerCommand::DisableWebhook {
            webhook_uri: d.uri.clone(),
            reason: reason.clone(),
            at: Utc::now(),
        };
        match self
            .executor
            .execute::<Customer>(d.customer_id, customer, None, cmd, &meta)
            .await
        {
            Ok(done) if !done.recorded.is_empty() => {
                tracing::warn!(customer_id = %d.customer_id, uri = %d.uri, %reason, "webhook endpoint disabled");
                metrics::counter!("vbin_webhook_endpoints_disabled_total").increment(1);
            }
            Ok(_) => return Ok(()), // the endpoint changed meanwhile: keep delivering
            Err(e) => {
                tracing::error!(customer_id = %d.customer_id, error = %e, "disabling a webhook endpoint failed");
                return Ok(());
            }
        }
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = $3, updated_at = now() \
             WHERE customer_id = $1 AND uri = $2 AND status = 'pending'",
        )
        .bind(d.customer_id)
        .bind(&d.uri)
        .bind(format!("endpoint disabled: {reason}"))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn attempt(&self, d: &Claimed, current: &str, previous: Option<&str>) -> Outcome {
        let checked = reqwest::Url::parse(&d.uri)
            .map_err(|e| format!("bad webhook uri: {e}"))
            .and_then(|u| self.settings.policy.check_url(&u));
        if let Err(e) = checked {
            tracing::warn!(customer_id = %d.customer_id, uri = %d.uri, error = %e, "webhook refused");
            return Outcome::error(&e);
        }
        let headers = signed_headers(
            &Secrets { current, previous },
            &d.event_id.to_string(),
            &d.event_type,
            Utc::now().timestamp(),
            &d.body,
        );
        let method =
            reqwest::Method::from_bytes(d.method.as_bytes()).unwrap_or(reqwest::Method::POST);
        let mut req = self.http.request(method, &d.uri).body(d.body.clone());
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let t0 = Instant::now();
        match req.send().await {
            Ok(resp) => {
                let code = resp.status().as_u16();
                let retry_after = (code == 429 || code == 503)
                    .then(|| resp.headers().get(reqwest::header::RETRY_AFTER))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Outcome {
                    status_code: Some(code),
                    latency: t0.elapsed(),
                    error: None,
                    retry_after,
                }
            }
            Err(e) => Outcome {
                status_code: None,
                latency: t0.elapsed(),
                error: Some(e.to_string()),
                retry_after: None,
            },
        }
    }

    /// Records the attempt and the delivery's new state in one transaction.
    async fn finish(
        &self,
        d: &Claimed,
        o: &Outcome,
        status: &str,
        next: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, status_code, latency_ms, error) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(d.id)
        .bind(d.attempts + 1)
        .bind(o.status_code.map(i32::from))
        .bind(o.latency.as_millis().min(i32::MAX as u128) as i32)
        .bind(&o.error)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = $2, attempts = attempts + 1, \
               next_attempt_at = now() + make_interval(secs => $3), last_status_code = $4, \
               last_error = $5, updated_at = now() WHERE id = $1",
        )
        .bind(d.id)
        .bind(status)
        .bind(next.unwrap_or_default().as_secs_f64())
        .bind(o.status_code.map(i32::from))
        .bind(&o.error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

impl Outcome {
    fn error(e: &str) -> Self {
        Self {
            status_code: None,
            latency: Duration::ZERO,
            error: Some(e.into()),
            retry_after: None,
        }
    }
}
