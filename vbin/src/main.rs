//! `vbin`: run the platform (`serve`), operate it (`replay`, `events`) or measure it (`bench`).

use clap::{Parser, Subcommand};
use vbin_platform::{ops, Config, Part};

// The request path allocates many small, short-lived objects (JSON values, headers); glibc's
// malloc showed up at ~10% of CPU under load, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "vbin",
    version,
    about = "vbin: an event-sourced CPaaS platform"
)]
struct Cli {
    /// Log format on stderr: text or json.
    #[arg(
        long,
        env = "VBIN_LOG_FORMAT",
        global = true,
        value_name = "FORMAT",
        default_value = "text",
        value_parser = log_format
    )]
    log_format: LogFormat,
    /// Log filter: tracing directives such as `info,sqlx=warn,vbin_app=debug`.
    #[arg(
        long = "log",
        env = "RUST_LOG",
        global = true,
        value_name = "DIRECTIVES",
        default_value = "info,sqlx=warn,rsipstack=warn",
        value_parser = log_filter
    )]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "" | "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("VBIN_LOG_FORMAT: expected text or json".into()),
    }
}

fn log_filter(s: &str) -> Result<String, String> {
    let s = match s.trim() {
        // rsipstack logs every SIP message it sends and receives at info: a trace to ask
        // for (RUST_LOG=...,rsipstack=info), not the default.
        "" => "info,sqlx=warn,rsipstack=warn",
        s => s,
    };
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("RUST_LOG: expected tracing filter directives ({e})"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the platform (every part, or those given with --only).
    Serve {
        #[command(flatten)]
        config: Config,
        /// Run only these parts (comma-separated).
        #[arg(long, value_enum, value_delimiter = ',')]
        only: Vec<Part>,
    },
    /// Create the database if needed and run migrations, then exit.
    Migrate {
        #[command(flatten)]
        config: Config,
    },
    /// Rebuild read models from the event log (into shadow tables, then swap), or verify them.
    Replay(ops::ReplayArgs),
    /// Read the event log: tail it or export it as JSON lines.
    Events {
        #[command(subcommand)]
        cmd: ops::EventsCmd,
    },
    /// Load generators; results go to stdout (and JSON with --json).
    Bench {
        #[command(subcommand)]
        which: vbin_bench::Which,
    },
}

fn init_tracing(format: LogFormat, filter: &str) {
    use std::io::IsTerminal;
    // Colours only for a person at a terminal: a log file or journald would keep the escape
    // codes, and styling every span's fields costs CPU per request (`docs/benchmarks.md`).
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The OpenMP runtime of speech-to-text (CTranslate2) and the local model (llama.cpp) reads
/// its wait policy once, when it is loaded, before `main`: by default its idle threads spin,
/// which on a small machine starves every other thread (Whisper decodes measured 3.5 times
/// slower on 2 cores while a call's media ran, `docs/benchmarks.md`). Unless the operator chose
/// a policy, the process starts itself again (same pid, same arguments) with a passive one.
fn passive_openmp() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .exec();
    eprintln!("vbin: could not restart with OMP_WAIT_POLICY=PASSIVE ({err}); going on");
}

fn main() -> anyhow::Result<()> {
    passive_openmp();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // Every setting is parsed (and checked) here, once; a bad value stops the start.
    let cli = Cli::parse();
    init_tracing(cli.log_format, &cli.log);
    // TLS for every outgoing request (reqwest's rustls has no provider of its own here).
    vbin_netguard::tls::install_provider();
    // Every WebSocket connection is a file descriptor: use what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    match cli.cmd {
        Cmd::Serve { config, only } => {
            let parts = if only.is_empty() {
                Part::ALL.to_vec()
            } else {
                only
            };
            let running = vbin_platform::start(&config, &parts).await?;
            if let Some(addr) = running.http_addr {
                println!("vbin listening on http://{addr}");
            }
            shutdown_signal().await;
            tracing::info!("shutting down");
            running.shutdown().await;
        }
        Cmd::Migrate { config } => {
            vbin_migrations::connect_and_migrate(&config.database_url, 2).await?;
            println!("migrations applied");
        }
        Cmd::Replay(args) => {
            let code = ops::replay(args).await?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Cmd::Events { cmd } => ops::events(cmd).await?,
        Cmd::Bench { which } => vbin_bench::run(which).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_help_lists_every_setting() {
        // What `vbin serve --help` prints.
        let help = Cli::try_parse_from(["vbin", "serve", "--help"])
            .err()
            .expect("help")
            .to_string();
        for var in [
            "DATABASE_URL",
            "NATS_URL",
            "REDIS_URL",
            "VBIN_HTTP_ADDR",
            "VBIN_ADMIN_TOKEN",
            "VBIN_JWT_SECRET",
            "VBIN_DB_POOL",
            "VBIN_FUNDS_CHECK_FRESH_MS",
            "VBIN_HTTP_SNDBUF_BYTES",
            "VBIN_WEBHOOK_RETRY_SCHEDULE_MS",
            "VBIN_WEBHOOK_PER_CUSTOMER",
            "VBIN_WEBHOOK_DISABLE_AFTER_SECS",
            "VBIN_WEBHOOK_ALLOW_NETS",
            "VBIN_WEBHOOK_HTTPS_ONLY",
            "VBIN_WEBHOOK_RETENTION_DAYS",
            "VBIN_TLS_EXTRA_CA_FILE",
            "VBIN_WS_SEND_BUFFER",
            "VBIN_WS_MAX_TOPICS",
            "VBIN_WS_PING_MS",
            "VBIN_WS_IDLE_MS",
            "VBIN_WS_MAX_REPLAY",
            "VBIN_TTS_PROVIDER",
            "VBIN_TTS_DETERMINISTIC",
            "VBIN_TTS_URL",
            "VBIN_TTS_API_KEY",
            "VBIN_MEDIA_ORPHAN_TIMEOUT_MS",
            "VBIN_DATA_DIR",
            "VBIN_RECORDING_RETENTION_DAYS",
            "VBIN_AUDIOSOCKET_ADDR",
            "VBIN_STT_PROVIDER",
            "VBIN_STT_GRAMMAR",
            "VBIN_DEEPGRAM_API_KEY",
            "VBIN_DEEPGRAM_URL",
            "VBIN_HOUSEKEEPING_SECS",
            "VBIN_LOG_FORMAT",
            "RUST_LOG",
        ] {
            assert!(
                help.contains(&format!("env: {var}")),
                "{var} missing:\n{help}"
            );
        }
    }
}
