//! Command line: `mount`, `unmount`, `status`, `seal`, `ack`, and `completions` / `man`
//! (generated from these definitions).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hrl::control::Request;

use crate::control_server::request;
use crate::mount::{self, MountArgs};
use crate::tracking::DEFAULT_INCLUDE;

#[derive(Parser)]
#[command(
    name = "hrl-tracker",
    version,
    about = "Track every change to the disk images in a directory"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines on stderr: text (coloured only on a terminal) or json (one object a line,
    /// for log shippers). Level: RUST_LOG.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "HRL_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount over DIR (in place), or mount --backing SRC at MOUNTPOINT. The mount is always
    /// nosuid,nodev (noexec like the backing mount) and honours POSIX ACLs.
    Mount {
        /// The directory to track (and mount over), or the mount point with --backing.
        dir: PathBuf,
        /// Backing directory when mounting elsewhere.
        #[arg(long, value_name = "SRC")]
        backing: Option<PathBuf>,
        /// Which regular files are disks (repeatable). Default: *.vhd *.vhdx *.img *.raw *.qcow2
        #[arg(long, value_name = "GLOB")]
        include: Vec<String>,
        /// Stay attached (for systemd) instead of returning once the mount is live.
        #[arg(long)]
        foreground: bool,
        /// FUSE worker threads: requests served at once. VMs keep 16 or more requests in
        /// flight (qemu aio=native); fewer threads queue them in the kernel.
        #[arg(long, default_value_t = 16)]
        threads: usize,
        /// Mount even though a process, loop device or other mount can change the disks
        /// without passing through the tracker (normally refused, naming them). The disks
        /// they reach get a full compare at the next cycle, and every seal checks each disk
        /// for changes the tracker did not make.
        #[arg(long)]
        force: bool,
    },
    /// Unmount DIR and wait until the tracker has closed its logs.
    Unmount {
        dir: PathBuf,
        /// Seconds to wait for the tracker to finish.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Show the tracked disks of the mount at DIR.
    Status {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Seal the active logs of all disks at DIR now (normally the shipper does this).
    Seal { dir: PathBuf },
    /// Delete DISK's sealed logs up to SEQ (normally the shipper does this once shipped).
    Ack {
        dir: PathBuf,
        disk: String,
        seq: u64,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (hrl-tracker.1 and one per command) into a directory.
    Man { dir: PathBuf },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.cmd {
        // fuser warns about its own umount after the kernel already unmounted: noise.
        Cmd::Mount { .. } => "info,fuser::session=error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => log.json().init(),
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "hrl-tracker: error: {}",
                hrl::display::escaped(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Completions { shell } => print_completions(shell),
        Cmd::Man { dir } => write_man_pages(&dir),
        Cmd::Mount {
            dir,
            backing,
            include,
            foreground,
            threads,
            force,
        } => {
            let include = if include.is_empty() {
                DEFAULT_INCLUDE.iter().map(|s| s.to_string()).collect()
            } else {
                include
            };
            mount::mount(MountArgs {
                backing: backing.unwrap_or_else(|| dir.clone()),
                mountpoint: dir,
                include,
                foreground,
                threads,
                force,
            })
        }
        Cmd::Unmount { dir, timeout } => mount::unmount(&dir, Duration::from_secs(timeout)),
        Cmd::Status { dir, json } => show_status(&dir, json),
        Cmd::Ack { dir, disk, seq } => {
            let socket = mount::socket_for(&dir)?;
            let r = request(
                &socket,
                &Request::Ack {
                    disk,
                    seq,
                    disk_id: None,
                },
            )?;
            if !r.ok {
                anyhow::bail!("{}", r.error.unwrap_or_default());
            }
            Ok(())
        }
        Cmd::Seal { dir } => {
            let socket = mount::socket_for(&dir)?;
            let r = request(&socket, &Request::Seal)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
            if !r.ok {
                anyhow::bail!("{}", r.error.unwrap_or_default());
            }
            Ok(())
        }
    }
}

/// `completions SHELL`: the completion script on stdout.
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    let mut c = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut c, "hrl-tracker", &mut script);
    std::io::stdout()
        .write_all(&script)
        .context("write the completion script")
}

/// `man DIR`: the man pages.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), dir)
        .with_context(|| format!("write man pages into {}", dir.display()))
}

/// `status DIR [--json]`: the tracker's account of its disks.
fn show_status(dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let socket = mount::socket_for(dir)?;
    let r = request(&socket, &Request::Status)?;
    if !r.ok {
        anyhow::bail!("{}", r.error.unwrap_or_default());
    }
    let st = r
        .status
        .context("status missing from the tracker's answer")?;
    if json {
        let mut v = serde_json::to_value(&st)?;
        if let (Some(c), Some(m)) = (r.counters, v.as_object_mut()) {
            m.insert("counters".into(), serde_json::to_value(c)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let esc = hrl::display::escaped;
    println!("mount:   {}", esc(&st.mount));
    println!("socket:  {}", esc(&st.socket));
    println!("pid:     {}", st.pid);
    println!(
        "{:<24} {:<6} {:>14} {:>8} {:>14} {:>8} {:>8}",
        "DISK", "MODE", "SIZE", "SEQ", "ACTIVE LOG", "PENDING", "DIRTY"
    );
    for d in &st.disks {
        println!(
            "{:<24} {:<6} {:>14} {:>8} {:>14} {:>8} {:>8}",
            esc(&d.disk),
            format!("{:?}", d.mode).to_lowercase(),
            d.disk_size,
            d.active_seq,
            d.active_log_bytes,
            d.pending_logs,
            d.dirty_extents
        );
        if let Some(why) = &d.changed_outside {
            println!("  warning: {why}");
        }
        if !d.unclean_extents.is_empty() {
            println!(
                "  unclean stop: {} extent(s) may differ from the logs: {:?}",
                d.unclean_extents.len(),
                d.unclean_extents
            );
        }
    }
    for u in &st.untracked {
        println!("warning: {u}");
    }
    Ok(())
}
