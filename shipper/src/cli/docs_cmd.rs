//! `completions SHELL` and `man DIR`: shell completions and man pages generated from the
//! clap definitions (so they never drift from `--help`), and the log output's format.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Directory to write the pages into (hrl-shipper.1, hrl-shipper-run.1, ...).
    pub dir: PathBuf,
}

/// Log lines on stderr: text (colour only on a terminal) or one JSON object per line.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the process's log output: `filter` as the level, `format` as the shape.
pub fn init_logging(filter: tracing_subscriber::EnvFilter, format: LogFormat) {
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Prints the completion script of `cmd` for `shell`.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> Result<()> {
    use std::io::Write;
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("write the completion script")
}

/// Writes a man page for `cmd` and one for each of its subcommands into `dir`.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("write man pages into {}", dir.display()))?;
    println!("man pages written to {}", dir.display());
    Ok(())
}
