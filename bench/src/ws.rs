//! `vbin bench ws`: the WebSocket gateway holding N connections while events are fanned out.
//!
//! The gateway runs as its own `vbin serve --only gateway` process (10k connections are 10k
//! descriptors on each side), the rest of the platform in this one. Events are published
//! straight to the JetStream stream, as the relay publishes them (aggregate type `bench`,
//! resource type `call`, the publish time in the resource), so the figure is the gateway's:
//! stream -> hub -> topic match -> socket -> client. Clients are spread over customers, each
//! subscribed to `customer_id:<its customer>:call:*`; an event reaches every client of its
//! customer. Baseline: a bare WebSocket server (tokio-tungstenite via axum, no auth, topics or
//! NATS) broadcasting the same messages to the same number of clients at the same rate.

use super::{new_customer, serve_child, Bench, Child, Services};
use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use vbin_platform::Part;

/// `vbin bench ws` options.
#[derive(clap::Args, Debug)]
pub struct WsArgs {
    /// Connection counts to measure, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub connections: Vec<usize>,
    /// Customers the connections are spread over (an event reaches connections/customers
    /// clients).
    #[arg(long, default_value_t = 10)]
    pub customers: usize,
    /// Events published per second.
    #[arg(long, default_value_t = 100)]
    pub events_per_sec: u64,
    /// Seconds of publishing per run.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    #[command(flatten)]
    pub services: Services,
}

/// What the clients saw.
struct Seen {
    received: AtomicU64,
    /// Publish -> receive, microseconds; sharded to keep lock contention low.
    latency: Vec<Mutex<Histogram<u64>>>,
    last_at: Mutex<Option<Instant>>,
}

impl Seen {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            received: AtomicU64::new(0),
            latency: (0..32)
                .map(|_| Mutex::new(Histogram::new(3).expect("histogram")))
                .collect(),
            last_at: Mutex::new(None),
        })
    }

    fn record(&self, shard: usize, text: &str) {
        self.received.fetch_add(1, Ordering::Relaxed);
        *self.last_at.lock().expect("seen") = Some(Instant::now());
        // The publish time, without parsing the whole push.
        let Some(i) = text.find("\"sent_at_us\":") else {
            return;
        };
        let digits: String = text[i + 13..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(sent) = digits.parse::<i64>() {
            let us = (now_us() - sent).max(0) as u64;
            let _ = self.latency[shard % self.latency.len()]
                .lock()
                .expect("histogram")
                .record(us);
        }
    }

    fn merged(&self) -> Histogram<u64> {
        let mut h = Histogram::new(3).expect("histogram");
        for s in &self.latency {
            let _ = h.add(&*s.lock().expect("histogram"));
        }
        h
    }
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Opens `n` connections to `url_for(i)`, each subscribing with `subscribe_for(i)` (if any)
/// and then feeding every text message to `seen`. Returns the reader tasks.
async fn open_clients(
    n: usize,
    url_for: impl Fn(usize) -> String,
    subscribe_for: impl Fn(usize) -> Option<String>,
    seen: Arc<Seen>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::with_capacity(n);
    let mut opening = futures::stream::iter((0..n).map(|i| {
        let (url, sub) = (url_for(i), subscribe_for(i));
        async move {
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url, Some(client_config()), false)
                    .await
                    .with_context(|| format!("connection {i}"))?;
            if let Some(sub) = sub {
                ws.send(Message::Text(sub.into())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) if t.contains("\"ack\"") => break,
                        Some(Ok(Message::Text(t))) => bail!("connection {i}: {t}"),
                        Some(Ok(_)) => continue,
                        _ => bail!("connection {i} closed while subscribing"),
                    }
                }
            }
            anyhow::Ok((i, ws))
        }
    }))
    .buffer_unordered(128);
    while let Some(r) = opening.next().await {
        let (i, mut ws) = r?;
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    seen.record(i, &t);
                }
            }
        }));
    }
    Ok(tasks)
}

/// Publishes `rate` events per second for `secs` seconds through `publish(i)`, in ticks of
/// 10 ms; returns how many.
async fn paced<F, Fut>(rate: u64, secs: u64, mut publish: F) -> anyhow::Result<u64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let total = rate * secs;
    let start = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            publish(sent).await?;
            sent += 1;
        }
    }
    Ok(sent)
}

/// Waits until `seen` has `expected` messages or nothing arrived for 5 s; returns the time
/// from `from` to the last message.
async fn drain(seen: &Seen, expected: u64, from: Instant) -> f64 {
    let mut last_count = 0;
    let mut quiet_since = Instant::now();
    loop {
        let n = seen.received.load(Ordering::Relaxed);
        if n >= expected {
            break;
        }
        if n != last_count {
            last_count = n;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.last_at
        .lock()
        .expect("seen")
        .map(|t| t.duration_since(from).as_secs_f64())
        .unwrap_or(0.0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0
}

/// `vbin bench ws-baseline-server` (internal): the bare broadcast server of the baseline, in
/// its own process (the clients need the descriptors of this one). `/ws` clients get every
/// message; a text `{"rate": r, "secs": s}` on `/control` starts r messages per second for s
/// seconds.
#[derive(clap::Args, Debug)]
pub struct BaselineServerArgs {
    /// Where to listen.
    #[arg(long)]
    pub addr: std::net::SocketAddr,
}

/// Serves the baseline until killed.
pub async fn baseline_server(a: &BaselineServerArgs) -> anyhow::Result<()> {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (tx, _) = tokio::sync::broadcast::channel::<axum::extract::ws::Utf8Bytes>(4096);
    let clients = tx.clone();
    let control = tx.clone();
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let mut rx = clients.subscribe();
                async move {
                    ws.read_buffer_size(4 * 1024)
                        .write_buffer_size(0)
                        .on_upgrade(move |mut socket| async move {
                            while let Ok(text) = rx.recv().await {
                                if socket.send(AxMessage::Text(text)).await.is_err() {
                                    return;
                                }
                            }
                        })
                }
            }),
        )
        .route(
            "/control",
            axum::routing::get(move |ws: WebSocketUpgrade| {
                let tx = control.clone();
                async move {
                    ws.on_upgrade(move |mut socket| async move {
                        while let Some(Ok(AxMessage::Text(t))) = socket.recv().await {
                            let v: Value = serde_json::from_str(&t).unwrap_or_default();
                            let (rate, secs) = (
                                v["rate"].as_u64().unwrap_or(1),
                                v["secs"].as_u64().unwrap_or(1),
                            );
                            let _ = paced(rate, secs, |_| {
                                let text = json!({"type": "event", "event": "bench_tick",
                                    "topic": "customer_id:x:call:y", "offset": 1,
                                    "data": {"type": "call", "id": uuid::Uuid::now_v7(),
                                             "sent_at_us": now_us()}})
                                .to_string();
                                let _ = tx.send(text.into());
                                async { Ok(()) }
                            })
                            .await;
                            let _ = socket.send(AxMessage::Text("done".into())).await;
                        }
                    })
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// A child process killed when dropped.
/// Runs the benchmark.
pub async fn run(a: &WsArgs) -> anyhow::Result<Value> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < a.connections.iter().max().copied().unwrap_or(0) + 1000 => {
            bail!("the open files limit ({n}) is too low for the connections asked for")
        }
        Ok(_) => {}
        Err(e) => bail!("raising the open files limit: {e}"),
    }
    let customers = a.customers.max(1);
    let parts = [Part::CommandApi, Part::QueryApi, Part::Relay];
    let b = Bench::start(&a.services, 4, &parts).await?;
    eprintln!("creating {customers} customers...");
    let mut tenants = Vec::new();
    for _ in 0..customers {
        tenants.push(new_customer(&b.http, &b.base, &b.running.admin_token).await?);
    }
    let gateway = serve_child(&b, "gateway", &a.services.redis_url, 4).await?;
    let bus = vbin_bus::Bus::connect(&b.nats_url, "vbin-bench-ws", b.running.installation.clone())
        .await?;
    bus.ensure_stream().await?;
    let idle_rss = rss_kib(gateway.child.0.id());
    let mut runs = Vec::new();
    for &n in &a.connections {
        eprintln!("{n} connections...");
        let seen = Seen::new();
        let t_connect = Instant::now();
        let readers = open_clients(
            n,
            |i| {
                format!(
                    "ws://{}/v1.0/ws?token={}",
                    gateway.url,
                    tenants[i % customers].1
                )
            },
            |i| {
                Some(
                    json!({"type": "subscribe",
                           "topics": [format!("customer_id:{}:call:*", tenants[i % customers].0)]})
                    .to_string(),
                )
            },
            seen.clone(),
        )
        .await?;
        let connect_secs = t_connect.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held_rss = rss_kib(gateway.child.0.id());
        eprintln!(
            "  {n} held ({connect_secs:.1} s to open); publishing {} events/s for {} s...",
            a.events_per_sec, a.secs
        );
        let t0 = Instant::now();
        let published = paced(a.events_per_sec, a.secs, |i| {
            let (customer, _) = tenants[i as usize % customers];
            let js = bus.js.clone();
            let ns = bus.namespace().clone();
            async move {
                let id = uuid::Uuid::now_v7();
                let e = vbin_event_schema::PublishedEvent {
                    event_id: id,
                    event_type: "bench_tick".into(),
                    event_version: "1".into(),
                    timestamp: chrono::Utc::now(),
                    customer_id: customer,
                    aggregate_type: "bench".into(),
                    aggregate_id: id,
                    sequence: 1,
                    global_position: i as i64 + 1,
                    metadata: vbin_event_schema::raw(&json!({})),
                    data: vbin_event_schema::raw(&json!({})),
                    resource: vbin_event_schema::raw(
                        &json!({"type": "call", "id": id, "sent_at_us": now_us()}),
                    ),
                };
                let subject = ns.subject_for(&customer, "bench", "bench_tick");
                // Publish without waiting for each ack (the relay batches the same way).
                let ack = js.publish(subject, serde_json::to_vec(&e)?.into()).await?;
                tokio::spawn(async move {
                    let _ = ack.await;
                });
                Ok(())
            }
        })
        .await?;
        // Client i is customer i % customers's; event j too.
        let share = |total: u64, c: usize| {
            total / customers as u64 + u64::from((c as u64) < total % customers as u64)
        };
        let expected: u64 = (0..customers)
            .map(|c| share(n as u64, c) * share(published, c))
            .sum();
        let secs = drain(&seen, expected, t0).await;
        let received = seen.received.load(Ordering::Relaxed);
        let h = seen.merged();
        for r in readers {
            r.abort();
        }
        // Let the gateway notice the closed connections before the next run.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // Baseline: the bare broadcast server, same clients, same message rate per client.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let _server = Child(
            std::process::Command::new(std::env::current_exe()?)
                .args(["bench", "ws-baseline-server", "--addr"])
                .arg(format!("127.0.0.1:{port}"))
                .spawn()
                .context("starting the baseline server")?,
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the baseline server did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("ws://127.0.0.1:{port}/ws");
        let base_seen = Seen::new();
        let base_readers = open_clients(n, |_| url.clone(), |_| None, base_seen.clone()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Each client gets every message: as many per second as a gateway client receives.
        let per_client_rate = (a.events_per_sec / customers as u64).max(1);
        let (mut control, _) =
            tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/control")).await?;
        let base_t0 = Instant::now();
        control
            .send(Message::Text(
                json!({"rate": per_client_rate, "secs": a.secs})
                    .to_string()
                    .into(),
            ))
            .await?;
        let _ = control.next().await; // "done"
        let base_published = per_client_rate * a.secs;
        let base_expected = base_published * n as u64;
        let base_secs = drain(&base_seen, base_expected, base_t0).await;
        let base_received = base_seen.received.load(Ordering::Relaxed);
        let bh = base_seen.merged();
        for r in base_readers {
            r.abort();
        }
        drop(_server);
        tokio::time::sleep(Duration::from_secs(1)).await;

        let rate = received as f64 / secs.max(1e-9);
        let base_rate = base_received as f64 / base_secs.max(1e-9);
        runs.push(json!({
            "connections": n,
            "seconds_to_open": (connect_secs * 10.0).round() / 10.0,
            "gateway_rss_mib": held_rss.map(|k| k / 1024),
            "gateway_rss_per_connection_kib": match (held_rss, idle_rss) {
                (Some(h), Some(i)) if h > i => Some(((h - i) as f64 / n as f64 * 10.0).round() / 10.0),
                _ => None,
            },
            "events_published": published,
            "pushes_expected": expected,
            "pushes_received": received,
            "pushes_per_sec": rate.round(),
            "latency_p50_ms": ms(&h, 0.5),
            "latency_p99_ms": ms(&h, 0.99),
            "latency_max_ms": ms(&h, 1.0),
            "baseline_pushes_per_sec": base_rate.round(),
            "baseline_received_of_expected": format!("{base_received}/{base_expected}"),
            "baseline_latency_p99_ms": ms(&bh, 0.99),
            "ratio": ((rate / base_rate.max(1e-9)) * 1000.0).round() / 1000.0,
        }));
        eprintln!("  {}", runs.last().expect("run"));
    }
    drop(gateway);
    b.stop().await;
    Ok(json!({
        "benchmark": "ws",
        "customers": customers,
        "events_per_sec": a.events_per_sec,
        "secs": a.secs,
        "runs": runs,
    }))
}
