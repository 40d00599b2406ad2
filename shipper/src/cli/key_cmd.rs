//! `key create`: a new key file for encryption at rest (docs/encryption.md), and reading a
//! passphrase file (the one way a passphrase reaches the shipper: never an argument, which
//! other users could read in the process list).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hrl::crypto::{KdfParams, MasterKey, Protection};
use zeroize::Zeroizing;

#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Write a new random 256-bit key file (mode 0600, never over an existing file). Keep a
    /// copy away from the host and the bucket: without it nothing of its groups can be read.
    Create {
        /// Path of the new key file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Wrap the key with the passphrase in the first line of this file (argon2id,
        /// 64 MiB, 3 passes); every command then needs `--passphrase-file` with `--key`.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
}

pub fn run(a: KeyArgs) -> Result<std::process::ExitCode> {
    match a.command {
        KeyCommand::Create {
            out,
            passphrase_file,
        } => {
            let pass = passphrase_file
                .as_deref()
                .map(read_passphrase)
                .transpose()?;
            let protection = match &pass {
                Some(p) => Protection::Passphrase(p.as_slice(), KdfParams::default()),
                None => Protection::Plain,
            };
            MasterKey::create(&out, protection)?;
            println!(
                "key file {} written ({}); keep a copy away from this host and the store",
                out.display(),
                if pass.is_some() {
                    "wrapped by the passphrase"
                } else {
                    "mode 0600"
                }
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// The passphrase in the first line of `path` (without its line end).
pub fn read_passphrase(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let bytes = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("read passphrase file {}", path.display()))?,
    );
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        bail!(
            "passphrase file {} is empty: put the passphrase in its first line",
            path.display()
        );
    }
    Ok(Zeroizing::new(line.to_vec()))
}
