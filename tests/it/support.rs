//! End-to-end test harness: each test gets a fresh Postgres database on the local server, its
//! own nats-server process (JetStream, private store dir, so tests can stop it and never see
//! each other's streams), and the real `vbin` binary as a child process.

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::fmt::Display;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What a [`wait_until`] probe says: done (with a value), or not yet (with what it saw, for the
/// message on timeout).
pub trait Probe {
    type Done;
    fn done(self) -> Result<Self::Done, String>;
}

impl Probe for bool {
    type Done = ();
    fn done(self) -> Result<(), String> {
        self.then_some(()).ok_or_else(String::new)
    }
}

impl<T> Probe for Option<T> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

impl<T, E: Display> Probe for Result<T, E> {
    type Done = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `probe` every 50 ms until it is done (`true`, `Some(v)`, `Ok(v)`) and returns the
/// value; panics after `within`, naming `what` was awaited and what the last look saw (`Err`).
pub async fn wait_until<P: Probe, F: Future<Output = P>>(
    what: impl Display,
    within: Duration,
    probe: impl FnMut() -> F,
) -> P::Done {
    wait_until_every(what, within, Duration::from_millis(50), probe).await
}

/// [`wait_until`], looking every `every` (for probes that cost something).
pub async fn wait_until_every<P: Probe, F: Future<Output = P>>(
    what: impl Display,
    within: Duration,
    every: Duration,
    mut probe: impl FnMut() -> F,
) -> P::Done {
    let t = Instant::now();
    loop {
        match probe().await.done() {
            Ok(v) => return v,
            Err(last) if t.elapsed() >= within => {
                let last = if last.is_empty() {
                    last
                } else {
                    format!(": {last}")
                };
                panic!("waited {within:?} for {what}{last}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Where `scripts/services` installs the Python test tools (`VBIN_CACHE_DIR`, else
/// `~/.cache/vbin`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VBIN_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/vbin"))
}

pub fn pg_base() -> String {
    std::env::var("VBIN_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An even port `p` where UDP `p..p + n` are free now (for a peer that binds several UDP
/// sockets from one base, as sipp's media does; a TCP port says nothing about UDP).
pub fn free_udp_ports(n: u16) -> u16 {
    loop {
        // Held while the others are probed, so the search does not pick it up again.
        let first = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = first.local_addr().unwrap().port();
        let p = taken & !1;
        if p.checked_add(n).is_none() {
            continue;
        }
        let all_free =
            (p..p + n).all(|q| q == taken || std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok());
        if all_free {
            return p;
        }
    }
}

fn wait_port(port: u16, what: &str) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} did not open port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private nats-server with JetStream, or a cluster of them (a JetStream cluster on
/// 127.0.0.1, each node on its own ports and store).
pub struct Nats {
    nodes: Vec<NatsNode>,
    /// The machine's server, shared: never started or stopped here.
    shared: bool,
}

/// One nats-server process of a [`Nats`].
struct NatsNode {
    /// Client port (0 until its first start).
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Its name and the cluster's arguments, for a node of a cluster.
    cluster: Option<(String, Vec<String>)>,
    /// Runs the current NATS that scripts/models pins rather than Debian's.
    pinned: bool,
}

impl Nats {
    pub fn start() -> Self {
        let mut n = Nats {
            nodes: vec![NatsNode::new(None)],
            shared: false,
        };
        n.resume();
        n
    }

    /// One server of the current NATS that scripts/models pins (2.10+: multi-filter
    /// consumers), where [`Nats::start`] runs Debian's 2.9.
    pub fn pinned() -> Self {
        let mut node = NatsNode::new(None);
        node.pinned = true;
        let mut n = Nats {
            nodes: vec![node],
            shared: false,
        };
        n.resume();
        n
    }

    /// A JetStream cluster of `size` nodes (named `n0`, `n1`, ...), routes between them all.
    pub fn cluster(size: usize) -> Self {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = routes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                NatsNode::new(Some((
                    format!("n{i}"),
                    vec![
                        "--cluster_name".into(),
                        "vbin".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{p}"),
                        "--routes".into(),
                        list.clone(),
                    ],
                )))
            })
            .collect();
        let mut n = Nats {
            nodes,
            shared: false,
        };
        n.resume();
        n
    }

    /// The machine's nats-server (127.0.0.1:4222, started by scripts/services), shared with
    /// every other user of it: never stopped by the test.
    pub fn shared() -> Self {
        wait_port(4222, "the machine's nats-server");
        Nats {
            nodes: vec![NatsNode {
                port: 4222,
                dir: PathBuf::new(),
                child: None,
                cluster: None,
                pinned: false,
            }],
            shared: true,
        }
    }

    /// Each node's client URL.
    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Each node's log.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.nodes
            .iter()
            .filter(|n| !n.dir.as_os_str().is_empty())
            .map(NatsNode::log)
            .collect()
    }

    /// The client URL: the servers separated by commas.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Starts (again) every node that is not running.
    pub fn resume(&mut self) {
        if self.shared {
            return;
        }
        for n in &mut self.nodes {
            if n.child.is_none() {
                n.resume();
            }
        }
    }

    /// Kills every node (-9).
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Kills the node named `name` (-9); returns whether one was.
    pub fn stop_node(&mut self, name: &str) -> bool {
        let Some(n) = self
            .nodes
            .iter_mut()
            .find(|n| n.cluster.as_ref().is_some_and(|(x, _)| x == name))
        else {
            return false;
        };
        n.stop();
        true
    }

    pub async fn client(&self) -> async_nats::jetstream::Context {
        let c = async_nats::connect(self.urls()).await.unwrap();
        async_nats::jetstream::new(c)
    }
}

impl NatsNode {
    fn new(cluster: Option<(String, Vec<String>)>) -> Self {
        let dir = std::env::temp_dir().join(format!("vbin-test-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        NatsNode {
            port: 0,
            dir,
            child: None,
            pinned: cluster.is_some(),
            cluster,
        }
    }

    /// Starts (again) on the same port with the same store. The first start lets
    /// nats-server take a port of its own (`-p -1`) and reads it from its log: a port found
    /// free beforehand may be taken by a concurrent test's server in between, and the two
    /// tests would then share one server (the first to end kills it under the other).
    fn resume(&mut self) {
        use std::io::BufRead;
        // A cluster runs the current NATS that scripts/models pins: Debian's 2.9.10 once came
        // back from losing two of three nodes with the stream's sequence restarted at 1,
        // although every copy was current (docs/operations.md). One node runs Debian's.
        let bin = if self.pinned {
            let pinned = vbin_media::models::pinned_nats_server();
            assert!(
                pinned.exists(),
                "{} is missing: scripts/services installs it",
                pinned.display()
            );
            pinned
        } else {
            which("nats-server").unwrap_or_else(|| "/usr/sbin/nats-server".into())
        };
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&self.dir);
        if let Some((name, args)) = &self.cluster {
            cmd.args(["-n", name]).args(args);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server must be installed (scripts/services installs it)");
        let stderr = child.stderr.take().unwrap();
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .ok();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read the log to its end (a full pipe would block the server).
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                // Kept next to the store (each start appends), for a failing test to point at.
                if let Some(f) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                    let _ = tx.send(addr.rsplit(':').next().and_then(|p| p.trim().parse().ok()));
                }
            }
        });
        let port: Option<u16> = rx.recv_timeout(Duration::from_secs(20)).ok().flatten();
        self.port = port.expect("nats-server did not say where it listens");
        self.child = Some(child);
        wait_port(self.port, "nats-server");
    }

    /// Its log (every start's), beside its store directory.
    fn log(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    /// Kills it (-9).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.stop();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
            // A failed test's server logs stay (named in its failure where it matters).
            if !std::thread::panicking() {
                let _ = std::fs::remove_file(self.log());
            }
        }
    }
}

/// A private redis-server (no persistence), so a test can stop, pause and restart it.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let mut r = Redis {
            port: free_port(),
            child: None,
        };
        r.resume();
        r
    }

    /// The machine's redis-server (127.0.0.1:6379), shared: never stopped by the test.
    pub fn shared() -> Self {
        wait_port(6379, "the machine's redis-server");
        Redis {
            port: 6379,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, empty.
    pub fn resume(&mut self) {
        let bin = which("redis-server").unwrap_or_else(|| "/usr/bin/redis-server".into());
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services installs it)");
        self.child = Some(child);
        wait_port(self.port, "redis-server");
    }

    /// Kills it (-9): its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP / SIGCONT: a hung Redis that keeps its data.
    pub fn pause(&self, paused: bool) {
        if let Some(c) = &self.child {
            let sig = if paused { "-STOP" } else { "-CONT" };
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {sig}");
        }
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.pause(false);
        self.stop();
    }
}

/// A private PostgreSQL cluster (initdb in a temp dir, own port), so a test can crash and
/// restart the database server without disturbing other tests.
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PgCluster {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("pg_ctl").is_file())
            .max()
            .expect("pg_ctl");
        let c = PgCluster::empty(bin);
        c.pg(&[
            "initdb",
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ]);
        c.resume();
        c
    }

    /// `postgres://postgres@127.0.0.1:<port>` (append `/<db>`).
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and data.
    pub fn resume(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.pg(&[
            "pg_ctl",
            "start",
            "-w",
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-D",
        ]);
        wait_port(self.port, "postgres");
    }

    /// A cluster with no data directory yet: its own port and directory (owned by postgres
    /// when running as root: the server refuses to run as root).
    fn empty(bin: PathBuf) -> Self {
        let dir = std::env::temp_dir().join(format!("vbin-test-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = PgCluster {
            port: free_port(),
            dir,
            bin,
        };
        if is_root() {
            c.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&c.dir),
            );
        }
        c
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`: it follows the primary's WAL as
    /// a hot standby), started on its own port.
    pub fn replica_of(primary: &PgCluster) -> Self {
        let c = PgCluster::empty(primary.bin.clone());
        let port = primary.port.to_string();
        c.pg(&[
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
            "-D",
        ]);
        c.resume();
        c
    }

    /// Runs `sql` on the server's `postgres` database.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([&format!("{}/postgres", self.base_url()), "-Atqc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Promotes a replica to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self) {
        self.pg(&["pg_ctl", "promote", "-w", "-D"]);
    }

    /// `pg_ctl stop -m immediate`: every server process quits at once, like a crash; the next
    /// start runs crash recovery.
    pub fn crash(&self) {
        self.pg(&["pg_ctl", "stop", "-m", "immediate", "-D"]);
    }

    /// Runs a server program with the data directory as its last argument.
    fn pg(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(args[0]));
            c
        } else {
            Command::new(self.bin.join(args[0]))
        };
        cmd.args(&args[1..]).arg(data);
        self.run(&mut cmd);
    }

    fn run(&self, cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Stopped already (crashed by the test): nothing to stop.
        if self.dir.join("data/postmaster.pid").exists() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.crash()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's HAProxy in front of Postgres servers (TCP): the entry point that follows a
/// failover, as in production (where Patroni tells it which server is the primary; here the
/// test does, through HAProxy's admin socket).
pub struct Haproxy {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// Listens on a free port and sends connections to the first of `servers` (name, port)
    /// that is enabled and up; all but the first start disabled.
    pub fn start(servers: &[(&str, u16)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vbin-test-haproxy-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 2000\n  stats socket {}/admin.sock mode 600 level admin\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
             listen pg\n  bind 127.0.0.1:{port}\n\
             default-server inter 200ms fall 2 rise 1 on-marked-down shutdown-sessions\n",
            dir.display()
        );
        for (i, (name, p)) in servers.iter().enumerate() {
            cfg += &format!(
                "  server {name} 127.0.0.1:{p} check{}\n",
                if i == 0 { "" } else { " disabled" }
            );
        }
        std::fs::write(dir.join("haproxy.cfg"), cfg).unwrap();
        let bin = which("haproxy").unwrap_or_else(|| "/usr/sbin/haproxy".into());
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(dir.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed (scripts/services installs it)");
        wait_port(port, "haproxy");
        Haproxy {
            port,
            dir,
            child: Some(child),
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>` (append `/<db>`).
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Sends new connections to `to` instead of `from` (and cuts `from`'s).
    pub fn switch(&self, from: &str, to: &str) {
        self.admin(&format!("enable server pg/{to}"));
        self.admin(&format!("disable server pg/{from}"));
        self.admin(&format!("shutdown sessions server pg/{from}"));
    }

    fn admin(&self, command: &str) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.dir.join("admin.sock")).unwrap();
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.trim().is_empty(), "haproxy {command}: {out}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

/// A `vbin serve` child process.
pub struct Platform {
    pub port: u16,
    /// The AudioSocket server's port.
    pub audiosocket_port: u16,
    /// The SIP endpoint's port (UDP and TCP).
    pub sip_port: u16,
    child: Option<Child>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Platform {
    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends it `signal` (`USR1`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    /// Kills it with SIGKILL: no graceful shutdown, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world.
pub struct Env {
    pub db_name: String,
    pub db_url: String,
    pub nats: Nats,
    pub redis: Redis,
    pub platform: Platform,
    pub admin: String,
    pub http: reqwest::Client,
    pub pool: PgPool,
    /// Extra environment of the platform processes (`{db}` in a value: the database's name).
    pub extra_env: Vec<(String, String)>,
    /// The private database server, when the test has one (else the shared local server).
    pub pg: Option<PgCluster>,
    /// The database is on servers the test keeps (nothing to drop at the end).
    private_db: bool,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with_env(&[]).await
    }

    /// Like [`Env::start`], the platform processes getting `vars` in their environment.
    pub async fn start_with_env(vars: &[(&str, &str)]) -> Self {
        Self::start_on(vars, None).await
    }

    /// Like [`Env::start_with_env`], on the private database server `pg` if given.
    pub async fn start_on(vars: &[(&str, &str)], pg: Option<PgCluster>) -> Self {
        Self::start_in(vars, pg, Nats::start(), Redis::start()).await
    }

    /// Like [`Env::start_with_env`], on the NATS servers `nats` (e.g. a [`Nats::cluster`]).
    pub async fn start_on_nats(vars: &[(&str, &str)], nats: Nats) -> Self {
        Self::start_in(vars, None, nats, Redis::start()).await
    }

    /// Like [`Env::start_with_env`], the database reached at `base` (servers the test keeps,
    /// e.g. a primary and its replica behind [`Haproxy`]).
    pub async fn start_at(vars: &[(&str, &str)], base: &str) -> Self {
        Self::start_base(
            vars,
            None,
            Some(base.to_string()),
            Nats::start(),
            Redis::start(),
        )
        .await
    }

    /// Like [`Env::start_with_env`], on the machine's own nats-server and redis-server, which
    /// other tests and installations use at the same time (the installation's namespace keeps
    /// them apart). Call [`Env::forget_shared`] at the end.
    pub async fn start_shared(vars: &[(&str, &str)]) -> Self {
        Self::start_in(vars, None, Nats::shared(), Redis::shared()).await
    }

    /// Removes what this env left on the shared servers: its stream and its Redis keys.
    pub async fn forget_shared(&self) {
        let i = self.installation().await;
        let _ = self
            .nats
            .client()
            .await
            .delete_stream(i.namespace.stream())
            .await;
        let mut r = self.redis.conn().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", i.redis_prefix()))
            .query_async(&mut r)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut r)
                .await
                .unwrap();
        }
    }

    async fn start_in(
        vars: &[(&str, &str)],
        pg: Option<PgCluster>,
        nats: Nats,
        redis: Redis,
    ) -> Self {
        Self::start_base(vars, pg, None, nats, redis).await
    }

    async fn start_base(
        vars: &[(&str, &str)],
        pg: Option<PgCluster>,
        private_base: Option<String>,
        nats: Nats,
        redis: Redis,
    ) -> Self {
        let db_name = format!("vbin_t_{}", Uuid::new_v4().simple());
        let private_db = private_base.is_some();
        let base = private_base
            .or_else(|| pg.as_ref().map(|p| p.base_url()))
            .unwrap_or_else(pg_base);
        let db_url = format!("{base}/{db_name}");
        let admin = format!("admin-{}", Uuid::new_v4());
        let mut env = Env {
            platform: Platform {
                port: 0,
                audiosocket_port: 0,
                sip_port: 0,
                child: None,
                log: PathBuf::new(),
            },
            db_name,
            pool: PgPool::connect_lazy(&db_url).unwrap(),
            db_url,
            nats,
            redis,
            admin,
            http: vbin_netguard::tls::client_builder().build().unwrap(),
            extra_env: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pg,
            private_db,
        };
        env.platform = env.spawn_platform().await;
        env
    }

    /// Starts another `vbin serve` process against this env's database and NATS.
    /// Replaces the platform with one running every part but media (media processes are
    /// then started on their own, or none is).
    pub async fn platform_without_media(&mut self) {
        self.platform.kill();
        self.platform = self
            .spawn_platform_only(&[
                "command-api",
                "query-api",
                "relay",
                "projections",
                "carrier",
                "process-managers",
            ])
            .await;
    }

    /// The media process running the call's session, if one does.
    pub async fn media_owner(&self, call: Uuid) -> Option<String> {
        sqlx::query_scalar("SELECT owner FROM media_sessions WHERE call_id = $1")
            .bind(call)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    pub async fn spawn_platform(&self) -> Platform {
        self.spawn_platform_only(&[]).await
    }

    /// Starts `vbin serve --only <parts>` (all parts if empty) and waits until it has started
    /// (its log says so, and its HTTP part, if any, answers). A free port can be taken by
    /// another test between `free_port` and the bind: then it starts again on other ports.
    pub async fn spawn_platform_only(&self, parts: &[&str]) -> Platform {
        for _ in 0..5 {
            if let Some(p) = self.try_spawn_platform(parts).await {
                return p;
            }
        }
        panic!("vbin found its ports taken five times");
    }

    /// One attempt of [`Env::spawn_platform_only`]; None if a port was taken meanwhile.
    async fn try_spawn_platform(&self, parts: &[&str]) -> Option<Platform> {
        let port = free_port();
        let audiosocket_port = free_port();
        let sip_port = free_port();
        let log = std::env::temp_dir().join(format!("{}-{port}.log", self.db_name));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vbin"));
        cmd.arg("serve");
        if !parts.is_empty() {
            cmd.arg("--only").arg(parts.join(","));
        }
        let child = cmd
            .env("DATABASE_URL", &self.db_url)
            .env("REDIS_URL", self.redis.url())
            .env("NATS_URL", self.nats.url())
            .env("VBIN_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "VBIN_AUDIOSOCKET_ADDR",
                format!("127.0.0.1:{audiosocket_port}"),
            )
            .env("VBIN_SIP_ADDR", format!("127.0.0.1:{sip_port}"))
            .env("VBIN_ADMIN_TOKEN", &self.admin)
            .env("VBIN_DATA_DIR", self.data_dir())
            .env("VBIN_JWT_SECRET", "test-jwt-secret")
            .env("VBIN_DB_POOL", "8")
            // Webhook retries in milliseconds instead of minutes and hours.
            .env("VBIN_WEBHOOK_RETRY_SCHEDULE_MS", "0,300,600,900")
            .env("VBIN_WEBHOOK_ALLOW_NETS", "127.0.0.1/32")
            // The same prompt is the same audio every run: what the far end hears is then
            // recognized the same way every run (Piper's variation once made a menu unheard).
            .env("VBIN_TTS_DETERMINISTIC", "true")
            // A plain log (no colour codes): read by people and by failures' messages.
            .env("NO_COLOR", "1")
            // VBIN_TEST_RUST_LOG replaces the filter (to look into a failing test).
            .env(
                "RUST_LOG",
                std::env::var("VBIN_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,vbin_http=debug,vbin_app=debug,sqlx=warn".into()),
            )
            // `{db}` in a value is this env's database name (e.g. in DATABASE_READ_URL).
            .envs(
                self.extra_env
                    .iter()
                    .map(|(k, v)| (k, v.replace("{db}", &self.db_name))),
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut p = Platform {
            port,
            audiosocket_port,
            sip_port,
            child: Some(child),
            log,
        };
        let t = Instant::now();
        let http = parts.is_empty() || parts.iter().any(|p| p.ends_with("-api") || *p == "gateway");
        loop {
            // "vbin started" comes after every bind: a /healthz answer alone could be another
            // process's on a port taken meanwhile.
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            if log.contains("vbin started") {
                let healthy = match self.http.get(format!("{}/healthz", p.url())).send().await {
                    Ok(r) => r.status().is_success(),
                    Err(_) => false,
                };
                if !http || healthy {
                    return Some(p);
                }
            }
            if let Some(status) = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                assert!(
                    log.contains("Address already in use"),
                    "vbin exited ({status}); log: {}",
                    p.log.display()
                );
                return None;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "vbin did not start; log: {}",
                p.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET `path` as `token`: the status and the raw body.
    pub async fn get_bytes(&self, token: &str, path: &str) -> (u16, Vec<u8>) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.bytes().await.unwrap().to_vec())
    }

    /// Where this env's platform keeps its files (recordings).
    pub fn data_dir(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-data", self.db_name))
    }

    /// Restarts the main platform process after a kill.
    pub async fn restart(&mut self) {
        self.platform.kill();
        self.platform = self.spawn_platform().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.platform.url())
    }

    /// The platform's Prometheus exposition (`GET /metrics`).
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends a request with an optional bearer; returns status and JSON body (Null if none).
    pub async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates a customer (random username) and logs in; returns (customer id, JWT, username).
    pub async fn customer(&self) -> (Uuid, String, String) {
        self.customer_with(json!({})).await
    }

    /// [`Env::customer`] with `fields` (`webhook_uri`, `balance_micros`, ...) over the defaults.
    pub async fn customer_with(&self, fields: Value) -> (Uuid, String, String) {
        let username = format!("u{}", &Uuid::new_v4().simple().to_string()[..12]);
        let mut body = json!({"name": "acme", "username": username, "password": "password123",
                              "balance_micros": 100_000_000});
        if let Value::Object(m) = fields {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let (s, c) = self.admin().post("/v1.0/customers", body).await;
        assert_eq!(s, 200, "{c}");
        let token = self.login(&username, "password123").await.expect("login");
        (c["id"].as_str().unwrap().parse().unwrap(), token, username)
    }

    pub async fn login(&self, username: &str, password: &str) -> Option<String> {
        let (s, v) = self
            .req(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        (s == 200).then(|| v["token"].as_str().unwrap().to_string())
    }

    /// Creates calls; returns their ids.
    pub async fn calls(&self, token: &str, destinations: &[&str], extra: Value) -> Vec<Uuid> {
        let mut body = json!({"source": "+15550001000", "destinations": destinations});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let (s, v) = self.client(token).post("/v1.0/calls", body).await;
        assert_eq!(s, 200, "{v}");
        v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// The events of one aggregate: (sequence, event_type, resource).
    pub async fn events_of(
        &self,
        aggregate_type: &str,
        aggregate_id: Uuid,
    ) -> Vec<(i64, String, Value)> {
        sqlx::query_as("SELECT sequence, event_type, resource FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence")
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// The last resource view of a call (from the event log).
    pub async fn call_state(&self, id: Uuid) -> Value {
        self.events_of("call", id)
            .await
            .pop()
            .map(|e| e.2)
            .unwrap_or(Value::Null)
    }

    /// Waits until a call's status is terminal; returns its final view.
    pub async fn wait_call_end(&self, id: Uuid, within: Duration) -> Value {
        let ended = |s: &str| {
            matches!(
                s,
                "completed" | "busy" | "no_answer" | "failed" | "canceled"
            )
        };
        self.wait_call(id, within, Duration::from_millis(100), ended)
            .await
    }

    /// Waits until a call's status (in the event log) satisfies `status`, looking `every` so
    /// often; returns its view.
    pub async fn wait_call(
        &self,
        id: Uuid,
        within: Duration,
        every: Duration,
        status: impl Fn(&str) -> bool,
    ) -> Value {
        let what = format!("call {id}; log {}", self.platform.log.display());
        wait_until_every(what, within, every, || async {
            let v = self.call_state(id).await;
            if status(v["status"].as_str().unwrap_or_default()) {
                Ok(v)
            } else {
                Err(v)
            }
        })
        .await
    }

    /// The installation's event stream on this env's NATS.
    pub async fn event_stream(&self) -> async_nats::jetstream::stream::Stream {
        let js = self.nats.client().await;
        js.get_stream(self.installation().await.namespace.stream())
            .await
            .unwrap()
    }

    /// The installation of this env's database (its id, NATS namespace, Redis prefix).
    pub async fn installation(&self) -> vbin_event_schema::Installation {
        vbin_eventlog::installation::load(&self.pool, None)
            .await
            .unwrap()
    }

    /// Every message in the private stream: (Nats-Msg-Id header, decoded body), in stream order.
    pub async fn stream_messages(&self) -> Vec<(String, vbin_event_schema::PublishedEvent)> {
        let js = self.nats.client().await;
        let mut stream = match js
            .get_stream(self.installation().await.namespace.stream())
            .await
        {
            Ok(s) => s,
            Err(_) => return vec![],
        };
        let info = stream.info().await.unwrap().state.clone();
        let mut out = vec![];
        if info.messages == 0 {
            return out;
        }
        for seq in info.first_sequence..=info.last_sequence {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default();
            out.push((id, serde_json::from_slice(&m.payload).unwrap()));
        }
        out
    }

    /// Waits until the log holds `n` events of `event_type` (e.g. the charges that follow
    /// hangups, before comparing the log with the stream).
    pub async fn wait_event_count(&self, event_type: &str, n: i64, within: Duration) {
        self.wait_count(
            "SELECT count(*) FROM events WHERE event_type = $1",
            event_type.to_string(),
            within,
            |have| have >= n,
        )
        .await
    }

    /// Polls the count query `sql` (its one parameter `bind`) until `done` holds for it.
    pub async fn wait_count<T>(
        &self,
        sql: &'static str,
        bind: T,
        within: Duration,
        done: impl Fn(i64) -> bool,
    ) where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + std::fmt::Display
            + Clone
            + Send
            + 'static,
    {
        let what = format!("{sql} ({bind}); log {}", self.platform.log.display());
        wait_until_every(what, within, Duration::from_millis(100), || async {
            let n: i64 = self.scalar(sql, bind.clone()).await;
            done(n).then_some(()).ok_or(n)
        })
        .await
    }

    /// The one value of the query `sql` with its one parameter `bind`.
    pub async fn scalar<T, R>(&self, sql: &'static str, bind: T) -> R
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
        R: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sql)
            .bind(bind)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Where the path from the log to the parts stands, for a failure's message (CI keeps no
    /// logs): the relay's checkpoint against the log's head, the stream's leader and replicas,
    /// the durable consumers that have work left (pending, unacknowledged, leader) and the
    /// platform's last distinct warnings.
    pub async fn bus_state(&self) -> String {
        use futures::TryStreamExt;
        let mut out = String::new();
        let relay: Option<(i64, i64)> = sqlx::query_as(
            "SELECT (SELECT global_position FROM log_checkpoints WHERE name = 'relay'), \
             (SELECT max(global_position) FROM events)",
        )
        .fetch_optional(&self.pool)
        .await
        .ok()
        .flatten();
        out += &format!("relay checkpoint/log head {relay:?}");
        let js = self.nats.client().await;
        let name = self.installation().await.namespace.stream();
        match js.get_stream(&name).await {
            Err(e) => out += &format!("; stream: {e}"),
            Ok(mut s) => {
                match s.info().await {
                    Ok(i) => {
                        let c = i.cluster.as_ref();
                        out += &format!(
                            "; stream {} msgs {}..{}, leader {:?}, replicas {:?}",
                            i.state.messages,
                            i.state.first_sequence,
                            i.state.last_sequence,
                            c.and_then(|c| c.leader.clone()),
                            c.map(|c| c
                                .replicas
                                .iter()
                                .map(|r| format!(
                                    "{} current {} offline {} lag {:?}",
                                    r.name, r.current, r.offline, r.lag
                                ))
                                .collect::<Vec<_>>())
                        );
                    }
                    Err(e) => out += &format!("; stream info: {e}"),
                }
                match s.consumers().try_collect::<Vec<_>>().await {
                    Ok(all) => {
                        let busy: Vec<String> = all
                            .iter()
                            .filter(|c| c.num_pending > 0 || c.num_ack_pending > 0)
                            .map(|c| {
                                format!(
                                    "{} pending {} unacked {} leader {:?}",
                                    c.name,
                                    c.num_pending,
                                    c.num_ack_pending,
                                    c.cluster.as_ref().and_then(|c| c.leader.clone())
                                )
                            })
                            .collect();
                        out += &format!("; {} consumers, with work left: {busy:?}", all.len());
                    }
                    Err(e) => out += &format!("; consumers: {e}"),
                }
            }
        }
        let log = std::fs::read_to_string(&self.platform.log).unwrap_or_default();
        let mut warnings: Vec<String> = Vec::new();
        for line in log
            .lines()
            .rev()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        {
            // Without the timestamp, so that a repeated warning is listed once.
            let text = line
                .split_once('Z')
                .map_or(line, |(_, t)| t)
                .trim()
                .to_string();
            if !warnings.contains(&text) {
                warnings.push(text);
            }
            if warnings.len() == 8 {
                break;
            }
        }
        out += &format!("; last warnings (newest first): {warnings:#?}");
        out
    }

    /// Event ids in the log, in commit order.
    pub async fn log_event_ids(&self) -> Vec<Uuid> {
        sqlx::query_scalar("SELECT event_id FROM events ORDER BY tx_id, global_position")
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }

    /// Waits until every logged event is in the stream; returns the stream's messages.
    pub async fn wait_all_published(
        &self,
        within: Duration,
    ) -> Vec<(String, vbin_event_schema::PublishedEvent)> {
        let what = format!(
            "every logged event to be published; log {}",
            self.platform.log.display()
        );
        wait_until_every(what, within, Duration::from_millis(200), || async {
            let (msgs, unpublished, logged) = self.stream_against_log().await;
            if unpublished == 0 {
                Ok(msgs)
            } else {
                Err(format!("{} of {logged} published", logged - unpublished))
            }
        })
        .await
    }

    /// The stream's messages, how many logged events they lack, and how many are logged.
    pub async fn stream_against_log(
        &self,
    ) -> (
        Vec<(String, vbin_event_schema::PublishedEvent)>,
        usize,
        usize,
    ) {
        let log = self.log_event_ids().await;
        let msgs = self.stream_messages().await;
        let published: std::collections::HashSet<&str> =
            msgs.iter().map(|m| m.0.as_str()).collect();
        let unpublished = log
            .iter()
            .filter(|id| !published.contains(id.to_string().as_str()))
            .count();
        (msgs, unpublished, log.len())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.platform.kill();
        if self.pg.is_some() || self.private_db {
            return; // the cluster goes with its directory
        }
        // VBIN_TEST_KEEP_DB=1 keeps a failed test's database to look into.
        if std::thread::panicking() && std::env::var_os("VBIN_TEST_KEEP_DB").is_some() {
            eprintln!("kept database {}", self.db_name);
            return;
        }
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", pg_base()),
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs the vbin binary with this env's database and Redis; returns (exit code, stdout).
pub async fn vbin(env: &Env, args: &[&str]) -> (i32, String) {
    // Awaited, not blocking: the test's runtime also serves its webhook receivers and load,
    // and a replay under load takes long enough that a blocked runtime let deliveries time out.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vbin"))
        .args(args)
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", env.redis.url())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

impl Env {
    /// Forces redelivery of the whole stream to the durable consumers `names`: deletes them
    /// (the running processes recreate them from the start of the stream) and waits until they
    /// exist again and have nothing pending.
    pub async fn redeliver_all(&self, names: &[&str], within: Duration) {
        let stream = self.event_stream().await;
        for name in names {
            stream.delete_consumer(name).await.unwrap();
        }
        let what = format!("redelivery to {names:?} to finish");
        wait_until_every(what, within, Duration::from_millis(100), || async {
            let (mut present, mut pending) = (0, 0);
            for name in names {
                if let Ok(mut c) = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
                    .await
                {
                    let info = c.info().await.unwrap();
                    present += 1;
                    pending += info.num_pending + info.num_ack_pending as u64;
                }
            }
            present == names.len() && pending == 0
        })
        .await
    }
}

impl Client<'_> {
    /// `secret` (a trunk's password, an AI's key) is nowhere in clear: not in the event log,
    /// nor in the audit trail of the resource (`resource_type`, `id`), which does hold its
    /// `created` event.
    pub async fn assert_sealed(&self, secret: &str, resource_type: &str, id: &str, created: &str) {
        let in_log: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'",
        )
        .bind(secret)
        .fetch_one(&self.env.pool)
        .await
        .unwrap();
        assert_eq!(in_log, 0, "{secret} is in the event log");
        let (_, audit) = self
            .get(&format!(
                "/v1.0/events?resource_type={resource_type}&resource_id={id}"
            ))
            .await;
        assert!(
            !audit.to_string().contains(secret) && audit.to_string().contains(created),
            "{audit}"
        );
    }
}

/// The value of an unlabelled sample `name` in a Prometheus exposition, if it is there.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The `id` of a resource view.
pub fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

impl Env {
    /// The API as the holder of `token` sees it.
    pub fn client(&self, token: &str) -> Client<'_> {
        Client {
            env: self,
            token: token.to_string(),
        }
    }

    /// The API as the platform admin.
    pub fn admin(&self) -> Client<'_> {
        self.client(&self.admin)
    }
}

/// A typed client of the platform's API with one bearer token: the requests the tests make
/// again and again, each answering (status, JSON body) unless it says otherwise.
pub struct Client<'e> {
    env: &'e Env,
    pub token: String,
}

impl Client<'_> {
    pub async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.env.req(method, path, Some(&self.token), body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.req(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.req(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.req(Method::DELETE, path, None).await
    }

    /// POSTs and expects 200; returns the body.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.post(path, body).await;
        assert_eq!(s, 200, "POST {path}: {v}");
        v
    }

    /// POSTs with an `Idempotency-Key`; returns the raw response (for its headers).
    pub async fn post_once(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.env
            .http
            .post(self.env.url(path))
            .bearer_auth(&self.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Polls `path` until `done` holds for its answer (or panics after `within`).
    pub async fn wait_get(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(u16, &Value) -> bool,
    ) -> Value {
        let what = format!(
            "GET {path} to satisfy the condition; log {}",
            self.env.platform.log_path().display()
        );
        wait_until_every(what, within, Duration::from_millis(25), || async {
            let (s, v) = self.get(path).await;
            if done(s, &v) {
                Ok(v)
            } else {
                Err(format!("{s} {v}"))
            }
        })
        .await
    }

    /// Waits until `path` answers 200; returns the body.
    pub async fn wait_found(&self, path: &str, within: Duration) -> Value {
        self.wait_get(path, within, |s, _| s == 200).await
    }

    /// Every item of a list endpoint, page by page.
    pub async fn all_pages(&self, path: &str, page_size: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let mut token_q = String::new();
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let (s, v) = self
                .get(&format!("{path}{sep}page_size={page_size}{token_q}"))
                .await;
            assert_eq!(s, 200, "{v}");
            let items = v["result"].as_array().unwrap();
            assert!(items.len() <= page_size);
            out.extend(items.iter().cloned());
            let next = v["next_page_token"].as_str().unwrap();
            if next.is_empty() {
                return out;
            }
            token_q = format!("&page_token={next}");
        }
    }

    /// Creates calls; returns their ids.
    pub async fn calls(&self, destinations: &[&str], extra: Value) -> Vec<Uuid> {
        self.env.calls(&self.token, destinations, extra).await
    }

    /// Places a call that answers and talks `talk` seconds; returns it once answered.
    pub async fn answered_call(&self, number: &str, talk: u64) -> Uuid {
        let id = self
            .calls(&[number], json!({"variables": {"talk_seconds": talk}}))
            .await[0];
        let (within, every) = (Duration::from_secs(10), Duration::from_millis(20));
        self.env
            .wait_call(id, within, every, |s| s == "progressing")
            .await;
        id
    }

    pub async fn hangup(&self, call: impl Display) -> (u16, Value) {
        self.post(&format!("/v1.0/calls/{call}/hangup"), json!({}))
            .await
    }

    /// Creates an agent (`fields` over a username and password); returns (status, view).
    pub async fn create_agent(
        &self,
        username: &str,
        password: &str,
        fields: Value,
    ) -> (u16, Value) {
        let mut body = json!({"username": username, "password": password});
        if let Value::Object(m) = fields {
            for (k, v) in m {
                body[k] = v;
            }
        }
        self.post("/v1.0/agents", body).await
    }

    pub async fn set_agent_status(&self, agent: impl Display, status: &str) -> (u16, Value) {
        self.put(
            &format!("/v1.0/agents/{agent}/status"),
            json!({ "status": status }),
        )
        .await
    }

    pub async fn delete_agent(&self, agent: impl Display) -> (u16, Value) {
        self.delete(&format!("/v1.0/agents/{agent}")).await
    }

    pub async fn delete_accesskey(&self, key: impl Display) -> (u16, Value) {
        self.delete(&format!("/v1.0/accesskeys/{key}")).await
    }

    pub async fn update_customer(&self, body: Value) -> (u16, Value) {
        self.put("/v1.0/customer", body).await
    }

    pub async fn rotate_webhook_secret(&self) -> (u16, Value) {
        self.post("/v1.0/customer/webhook_secret/rotate", json!({}))
            .await
    }

    pub async fn set_campaign_status(&self, campaign: impl Display, status: &str) -> (u16, Value) {
        self.put(
            &format!("/v1.0/campaigns/{campaign}/status"),
            json!({ "status": status }),
        )
        .await
    }

    pub async fn join_queue(&self, queue: impl Display, call: Uuid) -> (u16, Value) {
        self.post(
            &format!("/v1.0/queues/{queue}/calls"),
            json!({ "call_id": call }),
        )
        .await
    }

    pub async fn transcribe(&self, body: Value) -> (u16, Value) {
        self.post("/v1.0/transcribes", body).await
    }

    pub async fn stop_transcribe(&self, transcribe: impl Display) -> (u16, Value) {
        self.post(&format!("/v1.0/transcribes/{transcribe}/stop"), json!({}))
            .await
    }

    pub async fn retry_delivery(&self, delivery: impl Display) -> (u16, Value) {
        self.post(
            &format!("/v1.0/webhook_deliveries/{delivery}/retry"),
            json!({}),
        )
        .await
    }
}

/// Reads the query API served from `server` ("replica" or "primary") so far, for every reason.
pub async fn reads_from(env: &Env, server: &str) -> f64 {
    let prefix = format!("vbin_reads_total{{server=\"{server}\"");
    env.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
