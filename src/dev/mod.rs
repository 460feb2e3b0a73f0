//! Development tools, compiled only with the `dev` feature (on by default; the production
//! image builds without it): the demo, the Sequin emulator as a subcommand, the seed's
//! notification generator and the benchmark. They depend on the product, never the reverse.

pub mod bench;
pub mod demo;
pub mod generate;
pub mod local;
pub mod progress;
pub mod stack;

use clap::{Args, Subcommand};
use sequin_emulator::cli::EmulatorArgs;

use crate::config::DatabaseArgs;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Run the strict Sequin Management API emulator.
    Emulator(EmulatorArgs),
    /// Show the whole flow on this machine: emulator with delivery, worker, a few users.
    Demo(DemoArgs),
    /// A local stack until Ctrl-C: emulator delivering webhooks, a receiver that prints them,
    /// the worker and `serve` on 127.0.0.1:3333, all against DATABASE_URL.
    DevStack(stack::StackArgs),
    /// Insert notifications for random existing users (the seed's generator).
    GenerateNotifications(GenerateArgs),
    /// End-to-end benchmark (burn-down, pickup, idle, claim).
    Bench(bench::BenchArgs),
}

impl DevCommand {
    /// The demo and the benchmark print their own story: only warnings interleave with it.
    pub fn prints_its_own_story(&self) -> bool {
        matches!(self, DevCommand::Demo(_) | DevCommand::Bench(_))
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            DevCommand::Emulator(args) => {
                let shutdown = crate::shutdown::on_signal()?;
                sequin_emulator::cli::run(args, shutdown).await?;
            }
            DevCommand::Demo(args) => demo::run(args).await?,
            DevCommand::DevStack(args) => stack::run(args).await?,
            DevCommand::GenerateNotifications(args) => run_generate(args).await?,
            DevCommand::Bench(args) => {
                bench::run(args).await?;
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Notifications per second.
    #[arg(long, default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Postgres server to use; the demo creates (and recreates) its own database on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Name of the demo database (dropped and recreated).
    #[arg(long, default_value = "userhooks_demo")]
    pub demo_database: String,
    /// Leave everything running (with /metrics on 127.0.0.1:9610) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Notifications per second while generating.
    #[arg(long, default_value_t = 200.0, value_parser = parse_rate)]
    pub rate: f64,
    /// How long to generate notifications.
    #[arg(long, default_value = "3s", value_parser = crate::config::parse_duration)]
    pub generate_for: std::time::Duration,
}

/// A rate of notifications per second: a positive, finite number.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a number of notifications per second greater than 0".to_string()),
    }
}

/// `userhooks generate-notifications`: insert until the duration passes or Ctrl-C.
pub async fn run_generate(args: GenerateArgs) -> Result<(), crate::cli::CliError> {
    let fail = |e: &(dyn std::error::Error + 'static)| {
        crate::cli::CliError(crate::telemetry::error_chain(e))
    };
    let client = crate::db::connect(&args.db.database_url, "userhooks-generate")
        .await
        .map_err(|e| fail(&e))?;
    generate::require_tables(&client)
        .await
        .map_err(|e| fail(&e))?;
    let rate = args.rate;
    let mut shown =
        progress::Progress::spinner("inserted").plain_every(std::time::Duration::from_secs(5));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let total = generate::run(&client, rate, args.duration, stop, |sent, elapsed| {
        let secs = elapsed.as_secs_f64().max(0.001);
        shown.message(format!(
            "{sent} notifications in {secs:.1}s ({}, target {})",
            progress::rate(sent as f64 / secs),
            progress::rate(rate)
        ));
    })
    .await
    .map_err(|e| fail(&e))?;
    shown.finish();
    println!("inserted {total} notifications");
    Ok(())
}
