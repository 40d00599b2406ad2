//! `hrl-shipper log …`: the log tools (filled in by the foundation work).
use clap::Args;

#[derive(Args)]
pub struct LogArgs {}

pub fn run(_args: LogArgs) -> anyhow::Result<std::process::ExitCode> {
    Ok(std::process::ExitCode::SUCCESS)
}
