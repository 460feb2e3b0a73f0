//! `sequin-emulator`: the emulator as a program of its own.

use clap::Parser;
use sequin_emulator::cli::EmulatorArgs;

#[derive(Parser, Debug)]
#[command(
    name = "sequin-emulator",
    version,
    about = "A strict stand-in for Sequin's Management API and runtime, for tests"
)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match sequin_emulator::cli::run(cli.args, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
