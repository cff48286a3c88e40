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
    #[command(subcommand)]
    cmd: Cmd,
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

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("VBIN_LOG_FORMAT").is_ok_and(|f| f == "json");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init()
    } else {
        b.init()
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    // Every WebSocket connection is a file descriptor: use what the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    match Cli::parse().cmd {
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
