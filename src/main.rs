//! Thin entry point: parse the command line, set up logging, hand over to the library.

use anyhow::Context;
use userhooks::cli::Command;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc returns freed pages to the system at once instead of keeping them for 10 s: each
/// Sequin call in flight holds hyper's buffers for its duration only, and without this a burst
/// at high concurrency keeps the peak resident long after. `_RJEM_MALLOC_CONF` overrides it.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"dirty_decay_ms:0,muzzy_decay_ms:0\0";

/// Errors end the process with one line, `error: what: why`, and exit code 1: no `Debug`
/// rendering, no backtrace whatever RUST_BACKTRACE says.
#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(userhooks::cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            let line = userhooks::telemetry::error_chain(err.as_ref());
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: userhooks::cli::Cli) -> anyhow::Result<()> {
    // The demo prints its own story; only warnings from the parts interleave with it.
    let default_filter = match &cli.command {
        #[cfg(feature = "dev")]
        Command::Dev(dev) if dev.prints_its_own_story() => "warn",
        Command::Doctor(_) => "warn",
        _ => "info,tokio_postgres=warn",
    };
    userhooks::telemetry::init(cli.log_format, default_filter);
    // Each Sequin call in flight holds a socket (in the bench, the emulator one more): at
    // concurrency 1,024 the common soft limit of 1,024 open files is reached. The soft limit
    // goes up to the hard one, as Go's runtime does.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %err, "could not raise the open-file limit");
    }
    match cli.command {
        Command::Migrate(args) => {
            let applied = userhooks::db::migrate(&args.db.database_url)
                .await
                .context("migration failed")?;
            if args.example_app {
                userhooks::db::create_example_app(&args.db.database_url)
                    .await
                    .context("could not create the example application tables")?;
            }
            if args.roles {
                userhooks::db::apply_roles(&args.db.database_url)
                    .await
                    .context("could not apply sql/roles.sql")?;
                println!("roles userhooks_app and userhooks_worker are in place");
            }
            if applied.is_empty() {
                println!("userhooks schema is up to date");
            } else {
                println!("applied migrations: {applied:?}");
            }
        }
        Command::Run(args) => {
            let config = args.into_config()?;
            let shutdown = userhooks::shutdown::on_signal()?;
            let app = userhooks::build(config).await?;
            app.run(shutdown).await?;
        }
        Command::Reconcile(args) => {
            userhooks::cli::run_reconcile(args).await?;
        }
        Command::Doctor(args) => {
            userhooks::cli::run_doctor(args).await?;
        }
        Command::Serve(args) => {
            let shutdown = userhooks::shutdown::on_signal()?;
            userhooks::cli::run_serve(args, shutdown).await?;
        }
        #[cfg(feature = "dev")]
        Command::Dev(dev) => dev.run().await?,
        Command::Status(args) => {
            print!("{}", userhooks::ops::status(&args.database_url).await?);
        }
        Command::Retry(args) => {
            let one = args.id;
            let selection = match one {
                Some(id) => userhooks::ops::RetrySelection::One(id),
                None => userhooks::ops::RetrySelection::Failed { since: args.since },
            };
            let report = userhooks::ops::retry(&args.db.database_url, selection).await?;
            if let (Some(_), Some(skipped)) = (one, report.skipped.first()) {
                // The one request asked for was not re-queued: that is the command failing.
                anyhow::bail!("{}", skipped.reason);
            }
            if !report.requeued.is_empty() {
                let ids = &report.requeued;
                println!("re-queued {} request(s): {ids:?}", ids.len());
            } else if report.skipped.is_empty() {
                println!("nothing to retry: no failed requests");
            }
            for skipped in &report.skipped {
                println!("{}", skipped.reason);
            }
        }
    }
    Ok(())
}
