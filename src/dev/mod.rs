//! Development tools, compiled only with the `dev` feature (on by default; the production
//! image builds without it): the demo, the Sequin emulator as a subcommand, the seed's
//! notification generator and the benchmark. They depend on the product, never the reverse.

pub mod bench;
pub mod demo;
pub mod generate;

use clap::{Args, Subcommand};
use sequin_emulator::cli::EmulatorArgs;

use crate::config::DatabaseArgs;

#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Run the strict Sequin Management API emulator.
    Emulator(EmulatorArgs),
    /// Show the whole flow on this machine: emulator with delivery, worker, a few users.
    Demo(DemoArgs),
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
    #[arg(long, default_value_t = 100.0)]
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
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to generate notifications.
    #[arg(long, default_value = "3s", value_parser = crate::config::parse_duration)]
    pub generate_for: std::time::Duration,
}

/// `userhooks generate-notifications`: insert until the duration passes or Ctrl-C.
pub async fn run_generate(args: GenerateArgs) -> Result<(), crate::cli::CliError> {
    let client = crate::db::connect(&args.db.database_url, "userhooks-generate")
        .await
        .map_err(|e| crate::cli::CliError(e.to_string()))?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let rate = args.rate;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut last_print = std::time::Instant::now();
    let hidden = bar.is_hidden();
    let total = generate::run(&client, rate, args.duration, stop, |sent, elapsed| {
        let secs = elapsed.as_secs_f64().max(0.001);
        let line = format!(
            "inserted {sent} notifications in {secs:.1}s ({:.0}/s, target {rate}/s)",
            sent as f64 / secs
        );
        if hidden {
            // Not a terminal: one line every few seconds instead of a spinner.
            if last_print.elapsed() >= std::time::Duration::from_secs(5) {
                eprintln!("{line}");
                last_print = std::time::Instant::now();
            }
        } else {
            bar.set_message(line);
        }
    })
    .await
    .map_err(|e| crate::cli::CliError(e.to_string()))?;
    bar.finish_and_clear();
    println!("inserted {total} notifications");
    Ok(())
}
