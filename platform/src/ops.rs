//! Operator commands: `vbin replay` (rebuild, verify, swap read models) and `vbin events`
//! (tail and export the event log as JSON lines).

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::time::Duration;
use uuid::Uuid;
use vbin_eventlog::log::{read_after, LogCursor, LogFilter};
use vbin_projections::cache::Cache;
use vbin_projections::replay::{self, ReplayOptions, ReplayReport};
use vbin_projections::Projection;

/// `vbin replay`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    action: Option<ReplayAction>,
    #[command(flatten)]
    target: Target,
    /// Only repair aggregates with an event at or after this global position.
    #[arg(long)]
    from_position: Option<i64>,
    /// Rebuild and compare, but keep the live tables.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct Target {
    /// Projection to rebuild (repeatable; default: all).
    #[arg(long = "projection", value_name = "NAME")]
    projections: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/vbin"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[derive(Debug, Subcommand)]
enum ReplayAction {
    /// Rebuild into shadow tables and report differences with the live read model (exit 1 if
    /// any); the live tables are not touched.
    Verify {
        #[command(flatten)]
        target: Target,
    },
}

impl Target {
    fn projections(&self) -> anyhow::Result<Vec<Projection>> {
        if self.projections.is_empty() {
            return Ok(vbin_projections::all().to_vec());
        }
        self.projections
            .iter()
            .map(|n| {
                vbin_projections::by_name(n).with_context(|| {
                    let names: Vec<&str> = vbin_projections::all().iter().map(|p| p.name).collect();
                    format!("no projection {n:?} (there are: {})", names.join(", "))
                })
            })
            .collect()
    }
}

fn bar(name: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos}/{len} events  {per_sec}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(name.to_string());
    pb
}

/// Runs `vbin replay ...`; the process exit code is 1 if a verification found differences.
pub async fn replay(args: ReplayArgs) -> anyhow::Result<i32> {
    let (target, opts) = match &args.action {
        Some(ReplayAction::Verify { target }) => (
            target,
            ReplayOptions {
                from_position: None,
                dry_run: true,
            },
        ),
        None => (
            &args.target,
            ReplayOptions {
                from_position: args.from_position,
                dry_run: args.dry_run,
            },
        ),
    };
    let projections = target.projections()?;
    let pool = vbin_migrations::connect_and_migrate(&target.database_url, 4).await?;
    let installation = vbin_eventlog::installation::load(&pool, None).await?;
    let cache = Cache::new(
        redis::Client::open(target.redis_url.as_str()).context("parsing REDIS_URL")?,
        &installation.redis_prefix(),
    );
    let mut reports: Vec<ReplayReport> = Vec::new();
    for p in projections {
        let pb = bar(p.name);
        let report = replay::replay(&pool, Some(&cache), p, &opts, |pr| {
            pb.set_length(pr.total);
            pb.set_position(pr.done);
        })
        .await?;
        pb.finish_and_clear();
        if !target.json {
            let v = &report.verify;
            println!(
                "{}: {} events in {:.1} s ({:.0} events/s), {} unappliable; compared {} rows, \
                 {} differences, {} aggregates in flight; {}",
                report.projection,
                report.events,
                report.seconds,
                report.events_per_second,
                report.unappliable,
                v.rows_compared,
                v.difference_count,
                v.aggregates_in_flight,
                if report.swapped {
                    "swapped in"
                } else {
                    "live tables kept"
                }
            );
            for d in &v.differences {
                println!("  {} {} {}", d.kind, d.table, d.id);
            }
        }
        reports.push(report);
    }
    if target.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    let differences: u64 = reports.iter().map(|r| r.verify.difference_count).sum();
    Ok(if args.action.is_some() && differences > 0 {
        1
    } else {
        0
    })
}

/// `vbin events`.
#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print the last events (and, with --follow, every new one) as JSON lines.
    Tail {
        #[command(flatten)]
        filter: FilterArgs,
        /// How many past events to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: i64,
        /// Keep printing new events as they are committed.
        #[arg(short, long)]
        follow: bool,
    },
    /// Write the whole log (or the filtered part) as JSON lines, in commit order.
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
}

/// Event filters.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only this customer's events.
    #[arg(long)]
    customer: Option<Uuid>,
    /// Only this aggregate type (call, customer, ...).
    #[arg(long)]
    aggregate_type: Option<String>,
    /// Only events at or after this global position.
    #[arg(long)]
    from_position: Option<i64>,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/vbin"
    )]
    database_url: String,
}

impl FilterArgs {
    fn filter(&self) -> LogFilter {
        LogFilter {
            customer_id: self.customer,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_ids: None,
            from_position: self.from_position,
            view_only: false,
        }
    }
}

/// Runs `vbin events ...`.
pub async fn events(cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Export { filter, output } => {
            let pool = vbin_migrations::connect_and_migrate(&filter.database_url, 2).await?;
            let mut out: Box<dyn Write> = match output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let (f, mut cursor) = (filter.filter(), LogCursor::start());
            let mut conn = pool.acquire().await?;
            let mut n = 0u64;
            loop {
                let batch = read_after(&mut conn, &f, &mut cursor, 5_000).await?;
                if batch.is_empty() {
                    break;
                }
                for e in &batch {
                    serde_json::to_writer(&mut out, e)?;
                    out.write_all(b"\n")?;
                }
                n += batch.len() as u64;
            }
            out.flush()?;
            eprintln!("exported {n} events");
        }
        EventsCmd::Tail {
            filter,
            lines,
            follow,
        } => {
            let pool = vbin_migrations::connect_and_migrate(&filter.database_url, 2).await?;
            let f = filter.filter();
            let mut conn = pool.acquire().await?;
            // Start `lines` events before the end (of the filtered log).
            let start: Option<(String, i64)> = sqlx::query_as(
                "SELECT tx_id::text AS tx_text, global_position FROM events \
                 WHERE ($1::uuid IS NULL OR customer_id = $1) AND ($2::text IS NULL OR aggregate_type = $2) \
                   AND ($3::bigint IS NULL OR global_position >= $3) \
                 ORDER BY tx_id DESC, global_position DESC OFFSET $4 LIMIT 1",
            )
            .bind(f.customer_id)
            .bind(&f.aggregate_type)
            .bind(f.from_position)
            .bind(lines.max(0))
            .fetch_optional(&mut *conn)
            .await?;
            let mut cursor = start
                .map(|(tx_id, position)| LogCursor { tx_id, position })
                .unwrap_or_else(LogCursor::start);
            let stdout = std::io::stdout();
            loop {
                let batch = read_after(&mut conn, &f, &mut cursor, 1_000).await?;
                {
                    let mut out = stdout.lock();
                    for e in &batch {
                        serde_json::to_writer(&mut out, e)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                }
                if batch.is_empty() {
                    if !follow {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    Ok(())
}
