//! Thin entry point: parse the command line, set up logging, hand over to the library.

use anyhow::Context;
use clap::Parser;
use userhooks::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The demo prints its own story; only warnings from the parts interleave with it.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info,tokio_postgres=warn",
    };
    userhooks::telemetry::init(cli.log_format, default_filter);
    match cli.command {
        Command::Migrate(args) => {
            let applied = userhooks::db::migrate(&args.db.database_url)
                .await
                .context("migration failed")?;
            if args.example_app {
                userhooks::demo::create_example_app(&args.db.database_url)
                    .await
                    .context("could not create the example application tables")?;
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
        Command::Emulator(args) => {
            let shutdown = userhooks::shutdown::on_signal()?;
            userhooks::cli::run_emulator(args, shutdown).await?;
        }
        Command::Demo(args) => {
            userhooks::demo::run(args).await?;
        }
        Command::Reconcile(args) => {
            userhooks::cli::run_reconcile(args).await?;
        }
        Command::Serve(args) => {
            let shutdown = userhooks::shutdown::on_signal()?;
            userhooks::cli::run_serve(args, shutdown).await?;
        }
        Command::GenerateNotifications(args) => {
            userhooks::cli::run_generate(args).await?;
        }
    }
    Ok(())
}
