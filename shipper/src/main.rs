//! `hrl-shipper`: seals .hrl logs into recovery points, ships them to an object store,
//! restores disks from it, and offers the log tools (`log inspect|verify|apply`).

mod log_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hrl-shipper", version, about = "Replicate disk-image change logs (.hrl) to an object store and restore from it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify and replay .hrl logs.
    Log(log_cmd::LogArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HRL_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(args) => log_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hrl-shipper: error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
