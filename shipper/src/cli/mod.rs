//! The command line of `hrl-shipper`: parses the arguments and runs a command (one module
//! per command family; the arguments they share, and how those open a store, in `args`).

pub mod app_args;
pub mod args;
pub mod docs_cmd;
pub mod failover_cmd;
pub mod key_cmd;
pub mod log_cmd;
pub mod mount_cmd;
pub mod prune_cmd;
pub mod recover_cmd;
pub mod run_cmd;
pub mod status_cmd;
pub mod sync_cmd;

use crate::private;
use mount_cmd::{cmd_mount, cmd_unmount, MountArgs, UnmountArgs};
use recover_cmd::{cmd_points, cmd_restore, cmd_verify, PointsArgs, RestoreArgs, VerifyArgs};
use run_cmd::{cmd_run, RunArgs};
use status_cmd::{cmd_pause, cmd_status, PauseArgs, StatusArgs};
use sync_cmd::{cmd_resync, cmd_sync, ResyncArgs, SyncArgs};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hrl-shipper",
    version,
    about = "Replicate disk-image change logs (.hrl) to an object store and restore from it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: text (coloured only on a terminal) or json (one object a line,
    /// for log shippers). Level: HRL_LOG (default info).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "HRL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: docs_cmd::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify and replay .hrl logs.
    Log(log_cmd::LogArgs),
    /// Key files for encryption at rest (`key create --out FILE`); give one to every command
    /// of an encrypted group with `--key FILE` (docs/encryption.md).
    Key(key_cmd::KeyArgs),
    /// The background service: a replication cycle every interval, for one directory or all
    /// directories of a config file. Stops cleanly on SIGTERM/SIGINT.
    Run(RunArgs),
    /// One replication cycle now (initial replication first if the store has none); returns
    /// when the recovery point is committed.
    Sync(SyncArgs),
    /// Replication state per disk: state, health, last point, RPO lag, unshipped bytes, errors.
    Status(StatusArgs),
    /// Pause replication of a directory (the service skips its cycles; logs wait on the host).
    Pause(PauseArgs),
    /// Resume replication of a paused directory.
    Resume(PauseArgs),
    /// Start a resync at once (`--now`, outside the resync window too), or pause / resume
    /// resyncs. A resync compares blake3 digests of fixed-size blocks with the replica and
    /// uploads only the blocks that differ; it continues where it stopped after a crash.
    Resync(ResyncArgs),
    /// The recovery points of a group in the store.
    Points(PointsArgs),
    /// Rebuild every disk of a group as of a recovery point into a directory.
    Restore(RestoreArgs),
    /// Check that recovery points can be restored (indexes, every chunk, log chains) without
    /// writing a disk.
    Verify(VerifyArgs),
    /// On the recovery host: rebuild the disks of a point into a directory (over older
    /// versions of them, a failback, only what differs is downloaded) and take the group
    /// over (the old primary is fenced: it commits no more points). Then mount the tracker
    /// over the directory and `sync --dir` it: replication continues the group's chain with
    /// no base copy. `failover planned --dir DIR` on the primary hands the group over first,
    /// with no data loss.
    Failover(failover_cmd::FailoverArgs),
    /// Retention: keep the points the policy names (always the latest), merge the logs up
    /// to the oldest kept point into new bases, delete the other points, and collect the
    /// objects no kept point needs once unneeded for the grace period.
    Prune(prune_cmd::PruneArgs),
    /// Serve a recovery point over FUSE at once, without downloading it: one file per disk,
    /// read on demand from the store, writes into a throwaway local overlay (test failover,
    /// file-level restore). Returns once the mount is live; the store is not written except
    /// a lease while mounted and the test record at the end.
    Mount(MountArgs),
    /// End a `mount`: unmount, remove the overlay, record the point as tested.
    Unmount(UnmountArgs),
    /// Print a shell completion script (e.g. `hrl-shipper completions bash >
    /// /etc/bash_completion.d/hrl-shipper`).
    Completions(docs_cmd::CompletionsArgs),
    /// Write man pages (hrl-shipper.1 and one per command) into a directory.
    Man(docs_cmd::ManArgs),
}

/// Runs the command the arguments name; the exit code is the process's.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    docs_cmd::init_logging(
        tracing_subscriber::EnvFilter::try_from_env("HRL_LOG").unwrap_or_else(|_| "info".into()),
        cli.log_format,
    );
    private::set_umask();
    let result = match cli.command {
        Command::Log(args) => log_cmd::run(args),
        Command::Completions(a) => {
            docs_cmd::completions(<Cli as clap::CommandFactory>::command(), a.shell)
                .map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Man(a) => docs_cmd::man_pages(<Cli as clap::CommandFactory>::command(), &a.dir)
            .map(|()| std::process::ExitCode::SUCCESS),
        Command::Key(args) => key_cmd::run(args),
        other => runtime().and_then(|rt| rt.block_on(dispatch(other))),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!(
                "hrl-shipper: error: {}",
                hrl::display::escaped(&format!("{err:#}"))
            );
            std::process::ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

async fn dispatch(cmd: Command) -> Result<std::process::ExitCode> {
    match cmd {
        Command::Log(_) | Command::Key(_) | Command::Completions(_) | Command::Man(_) => {
            unreachable_log()
        }
        Command::Run(a) => cmd_run(a).await,
        Command::Sync(a) => cmd_sync(a).await,
        Command::Status(a) => cmd_status(a),
        Command::Points(a) => cmd_points(a).await,
        Command::Pause(a) => cmd_pause(a, true),
        Command::Resume(a) => cmd_pause(a, false),
        Command::Resync(a) => cmd_resync(a).await,
        Command::Restore(a) => cmd_restore(a).await,
        Command::Verify(a) => cmd_verify(a).await,
        Command::Failover(a) => failover_cmd::cmd_failover(a).await,
        Command::Prune(a) => prune_cmd::cmd_prune(a).await,
        Command::Mount(a) => cmd_mount(a).await,
        Command::Unmount(a) => cmd_unmount(a).await,
    }
}

fn unreachable_log() -> Result<std::process::ExitCode> {
    bail!("internal: log, key, completions and man are dispatched before the runtime starts")
}
