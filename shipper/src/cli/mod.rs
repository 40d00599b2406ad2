//! The command line of `hrl-shipper`: parses the arguments and runs a command.

pub mod log_cmd;

use crate::private;
use crate::recover::{points, restore, verify};
use crate::replicate::{copy as initial, cycle, owner, resync};
use crate::service::run as service;
use crate::service::{config, retry, status, window};
use crate::store;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use store::target;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hrl-shipper",
    version,
    about = "Replicate disk-image change logs (.hrl) to an object store and restore from it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify and replay .hrl logs.
    Log(log_cmd::LogArgs),
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
}

#[derive(Args)]
struct Common {
    /// State directory (status files, scratch space).
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Chunk size in bytes for base copies (power of two, 4 KiB..64 MiB).
    #[arg(long, default_value_t = initial::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
}

#[derive(Args)]
struct RunArgs {
    /// Protected directory (the tracker's mount).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    dir: Option<PathBuf>,
    /// Store URL: a path, file:///path, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    /// Replication interval (30s, 5m, 15m, ...).
    #[arg(long, default_value = "5m")]
    interval: String,
    /// Group name in the store (default: <host>-<directory path>, unique per host and
    /// directory; a directory that shipped before keeps the group its state file records).
    #[arg(long)]
    group: Option<String>,
    /// Configuration file (TOML) with a target and protected directories.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Back-off unit: retries wait 1, 2, 4, 8, 10, then every 30 units.
    #[arg(long, env = "HRL_RETRY_UNIT", default_value = "1m")]
    retry_unit: String,
    /// Daily local-time span (HH:MM-HH:MM) in which automatic resyncs may run, or `any`;
    /// default 18:00-08:00 (outside office hours). Outside it a disk waits in "resync
    /// required"; `hrl-shipper resync --dir DIR --now` starts one at once.
    #[arg(long)]
    resync_window: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct SyncArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    /// Group name in the store (default: <host>-<directory path>, unique per host and
    /// directory; a directory that shipped before keeps the group its state file records).
    #[arg(long)]
    group: Option<String>,
    /// Resync every disk: compare every block with the replica and commit a new base (after a
    /// broken chain; only blocks that differ upload).
    #[arg(long)]
    resync: bool,
    /// Print what the cycle did as JSON.
    #[arg(long)]
    json: bool,
    /// Trust nothing in the shipper's state for this directory (lost, damaged, restored from
    /// a backup): a damaged state file is moved aside (`.damaged-<time>`), and every disk is
    /// resynced against the store's latest point over the tracker's marks (every block where
    /// they cannot prove what changed).
    #[arg(long)]
    reconcile: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["now", "pause", "resume"])))]
struct ResyncArgs {
    /// Protected directory (the tracker's mount).
    #[arg(long)]
    dir: PathBuf,
    /// Store URL (as for `sync`).
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    /// Group name in the store (default: <host>-<directory path>, unique per host and
    /// directory; a directory that shipped before keeps the group its state file records).
    #[arg(long)]
    group: Option<String>,
    /// Resync this disk (a file name in DIR); a disk that needs no resync is compared block
    /// by block. Default: the disks that need one.
    #[arg(long)]
    disk: Option<String>,
    /// Run the resync now, whatever the window and the pause say; returns when the recovery
    /// point after it is committed.
    #[arg(long)]
    now: bool,
    /// Pause resyncs of DIR (a running one stops after saving its progress).
    #[arg(long)]
    pause: bool,
    /// Resume paused resyncs of DIR (they continue where they stopped).
    #[arg(long)]
    resume: bool,
    /// Print what the cycle did as JSON (with --now).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct StatusArgs {
    /// Only this directory (default: every directory with a state file).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long)]
    json: bool,
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
struct PauseArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Args)]
struct PointsArgs {
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    #[arg(long)]
    group: String,
    /// `all` (default), `latest`, a point id, or a time.
    #[arg(long, default_value = "all")]
    point: String,
}

#[derive(Args)]
struct RestoreArgs {
    #[arg(long, default_value = target::DEFAULT_TARGET)]
    target: String,
    #[arg(long)]
    group: String,
    /// `latest`, a point id, or a time (RFC 3339): the last point sealed at or before it.
    #[arg(long, default_value = "latest")]
    point: String,
    /// Directory to restore into (created 0700 if missing; existing disks are never
    /// overwritten). Disks get the mode and owner recorded at the seal (0600 root if unknown).
    #[arg(long)]
    to: PathBuf,
}

/// Runs the command the arguments name; the exit code is the process's.
pub fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HRL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    private::set_umask();
    let result = match cli.command {
        Command::Log(args) => log_cmd::run(args),
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
        Command::Log(_) => unreachable_log(),
        Command::Run(a) => cmd_run(a).await,
        Command::Sync(a) => cmd_sync(a).await,
        Command::Status(a) => cmd_status(a),
        Command::Points(a) => cmd_points(a).await,
        Command::Pause(a) => cmd_pause(a, true),
        Command::Resume(a) => cmd_pause(a, false),
        Command::Resync(a) => cmd_resync(a).await,
        Command::Restore(a) => cmd_restore(a).await,
        Command::Verify(a) => cmd_verify(a).await,
    }
}

fn unreachable_log() -> Result<std::process::ExitCode> {
    bail!("internal: the log subcommand is dispatched before the runtime starts")
}

/// The group of `dir`: the one given; else the one its state file recorded (installs from
/// before the per-host default keep their group); else the default, unique per host and
/// directory (`owner::default_group`).
fn group_for(dir: &Path, group: Option<String>, state_dir: &Path) -> Result<String> {
    if let Some(g) = group {
        return Ok(g);
    }
    if let Ok(Some(s)) = status::load(state_dir, dir) {
        if !s.group.is_empty() {
            return Ok(s.group);
        }
    }
    owner::default_group(dir)
}

fn check_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} is not a directory; pass the tracker's mount directory with --dir",
            dir.display()
        );
    }
    Ok(())
}

fn protected(
    dir: &Path,
    target: &str,
    group: &str,
    common: &Common,
    force_resync: bool,
) -> Result<cycle::Protected> {
    hrl::chunk::check_block_size(common.chunk_size).context("--chunk-size")?;
    let t = target::open(target)?;
    Ok(cycle::Protected {
        dir: dir.to_path_buf(),
        store: store::GroupStore::new(t, group)?,
        chunk_size: common.chunk_size,
        state_dir: common.state_dir.clone(),
        force_resync,
        resync_now: false,
        resync_window: None,
        progress_bar: std::io::stderr().is_terminal(),
        reconcile: false,
    })
}

async fn cmd_resync(a: ResyncArgs) -> Result<std::process::ExitCode> {
    check_dir(&a.dir)?;
    let marker = resync::pause_marker(&a.common.state_dir, &a.dir);
    if a.pause || a.resume {
        if a.pause {
            private::create_dir(&a.common.state_dir).with_context(|| {
                format!("create state directory {}", a.common.state_dir.display())
            })?;
            std::fs::write(&marker, format!("{}\n", a.dir.display()))
                .with_context(|| format!("write {}", marker.display()))?;
            println!(
                "resyncs of {} paused (a running one stops after saving its progress)",
                a.dir.display()
            );
        } else {
            match std::fs::remove_file(&marker) {
                Ok(()) => println!("resyncs of {} resumed", a.dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("resyncs of {} were not paused", a.dir.display())
                }
                Err(e) => return Err(e).with_context(|| format!("remove {}", marker.display())),
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let group = group_for(&a.dir, a.group.clone(), &a.common.state_dir)?;
    if let Some(disk) = &a.disk {
        if !a.dir.join(disk).is_file() {
            bail!(
                "{disk} is not a disk in {}; give a file name in the directory",
                a.dir.display()
            );
        }
        // Mark it: one that needs no resync yet is compared block by block.
        let mut s = status::load(&a.common.state_dir, &a.dir)?
            .filter(|s| s.group == group)
            .unwrap_or_else(|| status::DirStatus::new(&a.dir, &group, &a.target));
        let d = s.disk_mut(disk, "");
        if !matches!(
            d.state,
            status::DiskState::ResyncRequired | status::DiskState::Resyncing
        ) {
            d.resync_full = true;
            d.state = status::DiskState::ResyncRequired;
            d.resync_reason = Some("resync requested by an operator".into());
        }
        status::save(&a.common.state_dir, &s)?;
    }
    let sync = SyncArgs {
        dir: a.dir,
        target: a.target,
        group: Some(group),
        resync: false,
        reconcile: false,
        json: a.json,
        common: a.common,
    };
    run_sync(sync, true).await
}

async fn cmd_sync(a: SyncArgs) -> Result<std::process::ExitCode> {
    run_sync(a, false).await
}

async fn run_sync(a: SyncArgs, resync_now: bool) -> Result<std::process::ExitCode> {
    check_dir(&a.dir)?;
    if status::is_paused(&a.common.state_dir, &a.dir) {
        bail!(
            "replication of {} is paused; run `hrl-shipper resume --dir {}` first",
            a.dir.display(),
            a.dir.display()
        );
    }
    let group = group_for(&a.dir, a.group, &a.common.state_dir)?;
    let mut p = protected(&a.dir, &a.target, &group, &a.common, a.resync)?;
    p.resync_now = resync_now;
    p.reconcile = a.reconcile;
    if a.reconcile {
        if let Some(aside) = status::set_aside_if_damaged(&p.state_dir, &p.dir)? {
            tracing::warn!("moved the damaged state file aside to {}", aside.display());
        }
    }
    let initial = status::load(&p.state_dir, &p.dir)?.filter(|s| s.group == group);
    let st = Mutex::new(
        initial.unwrap_or_else(|| status::DirStatus::new(&p.dir, &group, &p.store.target.url)),
    );
    let result = cycle::run_cycle(&p, &st).await;
    let mut s = st
        .lock()
        .map_err(|_| anyhow::anyhow!("status lock poisoned"))?
        .clone();
    s.target = p.store.target.url.clone();
    s.updated_ns = hrl::now_ns();
    let report = match result {
        Ok(r) => {
            s.cycle_succeeded();
            status::save(&p.state_dir, &s)?;
            r
        }
        Err(e) => {
            let class = retry::classify(&e);
            let e = retry::with_hint(e);
            s.cycle_failed(class == retry::ErrorClass::Fatal, &e);
            let _ = status::save(&p.state_dir, &s);
            return Err(e);
        }
    };
    if a.json {
        let v = serde_json::json!({
            "point": report.point_id,
            "time_ns": report.time_ns,
            "disks": report.disks,
            "logs_shipped": report.logs_shipped,
            "log_bytes_sealed": report.log_bytes_sealed,
            "log_bytes_coalesced": report.log_bytes_coalesced,
            "log_bytes_uploaded": report.log_bytes_uploaded,
            "base_copies": report.base_copies.iter().map(|c| serde_json::json!({
                "index": c.index_key, "disk_size": c.disk_size, "blocks": c.blocks,
                "zero_blocks": c.zero_blocks, "uploaded_chunks": c.uploaded_chunks,
                "uploaded_bytes": c.uploaded_bytes, "existing_chunks": c.existing_chunks,
                "resync": c.resync,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "recovery point {} committed ({} disks, {} logs, {} bytes uploaded, {} base copies)",
            report.point_id,
            report.disks,
            report.logs_shipped,
            report.log_bytes_uploaded
                + report
                    .base_copies
                    .iter()
                    .map(|c| c.uploaded_bytes)
                    .sum::<u64>(),
            report.base_copies.len()
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn cmd_run(a: RunArgs) -> Result<std::process::ExitCode> {
    let mut jobs = Vec::new();
    if let Some(path) = &a.config {
        let cfg = config::load(path)?;
        let retry_unit = match cfg.retry_unit {
            Some(u) => u,
            None => retry::parse_duration(&a.retry_unit).context("--retry-unit")?,
        };
        let common = Common {
            state_dir: cfg.state_dir.clone().unwrap_or(a.common.state_dir.clone()),
            chunk_size: cfg.chunk_size.unwrap_or(a.common.chunk_size),
        };
        let window = window::parse_option(
            cfg.resync_window
                .as_deref()
                .or(a.resync_window.as_deref())
                .unwrap_or(window::DEFAULT_WINDOW),
        )?;
        for d in &cfg.dirs {
            check_dir(&d.path)?;
            let group = group_for(&d.path, d.group.clone(), &common.state_dir)?;
            let mut pr = protected(&d.path, &cfg.target, &group, &common, false)?;
            pr.resync_window = window;
            jobs.push(service::DirJob {
                protected: pr,
                interval: d.interval,
                retry_unit,
            });
        }
    } else if let Some(dir) = &a.dir {
        check_dir(dir)?;
        let group = group_for(dir, a.group.clone(), &a.common.state_dir)?;
        let mut pr = protected(dir, &a.target, &group, &a.common, false)?;
        pr.resync_window =
            window::parse_option(a.resync_window.as_deref().unwrap_or(window::DEFAULT_WINDOW))?;
        jobs.push(service::DirJob {
            protected: pr,
            interval: retry::parse_duration(&a.interval).context("--interval")?,
            retry_unit: retry::parse_duration(&a.retry_unit).context("--retry-unit")?,
        });
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    for j in jobs {
        let mut j = j;
        j.protected.progress_bar = false;
        set.spawn(service::run_dir(j, rx.clone()));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = async { while set.join_next().await.is_some() {} } => {}
    }
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    Ok(std::process::ExitCode::SUCCESS)
}

fn cmd_pause(a: PauseArgs, pause: bool) -> Result<std::process::ExitCode> {
    check_dir(&a.dir)?;
    let marker = status::pause_marker(&a.state_dir, &a.dir);
    if pause {
        private::create_dir(&a.state_dir)
            .with_context(|| format!("create state directory {}", a.state_dir.display()))?;
        std::fs::write(&marker, format!("{}\n", a.dir.display()))
            .with_context(|| format!("write {}", marker.display()))?;
        println!("replication of {} paused", a.dir.display());
    } else {
        match std::fs::remove_file(&marker) {
            Ok(()) => println!("replication of {} resumed", a.dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                println!("replication of {} was not paused", a.dir.display())
            }
            Err(e) => return Err(e).with_context(|| format!("remove {}", marker.display())),
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn cmd_status(a: StatusArgs) -> Result<std::process::ExitCode> {
    let mut all = match &a.dir {
        Some(d) => match status::load(&a.state_dir, d)? {
            Some(s) => vec![s],
            None => bail!(
                "no shipper state for {} in {}; has `hrl-shipper sync` or `run` been started for it?",
                d.display(),
                a.state_dir.display()
            ),
        },
        None => status::load_all(&a.state_dir)?,
    };
    for s in &mut all {
        s.paused = status::is_paused(&a.state_dir, Path::new(&s.dir));
        s.apply_rpo(hrl::now_ns());
    }
    if a.json {
        let now = hrl::now_ns();
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["rpo_lag_s"] = s
                    .last_point_ns
                    .map(|t| now.saturating_sub(t) as f64 / 1e9)
                    .into();
                if let Some(disks) = v["disks"].as_array_mut() {
                    for (d, k) in disks.iter_mut().zip(&s.disks) {
                        let state = if s.paused {
                            status::DiskState::Paused
                        } else {
                            k.state
                        };
                        d["state"] = serde_json::to_value(state).unwrap_or_default();
                        d["state_label"] = state.label().into();
                        // The point, lag and retry are the directory's (one point covers all
                        // its disks); repeated per disk for readers that look at one disk.
                        d["last_point_ns"] = s.last_point_ns.into();
                        d["rpo_lag_s"] = s
                            .last_point_ns
                            .map(|t| now.saturating_sub(t) as f64 / 1e9)
                            .into();
                        d["next_retry_ns"] = s.next_retry_ns.into();
                        if d["last_error"].is_null() && s.health != status::Health::Normal {
                            d["last_error"] = s.last_error.clone().into();
                        }
                        d["unshipped_share"] = (if k.disk_size > 0 {
                            k.unshipped_bytes as f64 / k.disk_size as f64
                        } else {
                            0.0
                        })
                        .into();
                    }
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", status::render(&all));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn cmd_points(a: PointsArgs) -> Result<std::process::ExitCode> {
    let store = store::GroupStore::new(target::open(&a.target)?, &a.group)?;
    let ids = points::list_ids(&store).await?;
    let mut all = Vec::new();
    for id in ids {
        all.push(points::load(&store, id).await?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!("group {:?} in {} has no recovery points", a.group, a.target);
    } else {
        println!("{:>6}  {:<26} disks", "point", "sealed at");
        let times: Vec<u64> = all.iter().map(|m| m.time_ns).collect();
        for (m, back) in all.iter().zip(points::time_went_back(&times)) {
            let disks: Vec<String> = m
                .disks
                .iter()
                .map(|d| format!("{} ({} B)", hrl::display::escaped(&d.name), d.disk_size))
                .collect();
            println!(
                "{:>6}  {:<26} {}{}",
                m.id,
                points::fmt_time(m.time_ns),
                disks.join(", "),
                if back {
                    "  [seal time went back (clock stepped back): restore it by id]"
                } else {
                    ""
                }
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn cmd_verify(a: VerifyArgs) -> Result<std::process::ExitCode> {
    let store = store::GroupStore::new(target::open(&a.target)?, &a.group)?;
    let selected = if a.point.trim() == "all" {
        let mut all = Vec::new();
        for id in points::list_ids(&store).await? {
            all.push(points::load(&store, id).await?);
        }
        if all.is_empty() {
            bail!("group {:?} in {} has no recovery points", a.group, a.target);
        }
        all
    } else {
        vec![points::select(&store, &a.point).await?]
    };
    let r = verify::verify_points(&store, &selected).await?;
    for p in &r.problems {
        eprintln!(
            "hrl-shipper: verify: {}",
            hrl::display::escaped(&p.to_string())
        );
    }
    println!(
        "{} point(s), {} disk entries, {} chunks, {} logs checked: {}",
        r.points,
        r.disks,
        r.chunks,
        r.logs,
        if r.problems.is_empty() {
            "all good".to_string()
        } else {
            format!("{} problem(s)", r.problems.len())
        }
    );
    Ok(if r.problems.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

async fn cmd_restore(a: RestoreArgs) -> Result<std::process::ExitCode> {
    let store = store::GroupStore::new(target::open(&a.target)?, &a.group)?;
    let point = points::select(&store, &a.point).await?;
    let started = std::time::Instant::now();
    let report = restore::restore_point(&store, &point, &a.to).await?;
    let total: u64 = report.disks.iter().map(|(_, s)| s).sum();
    println!(
        "restored point {} (sealed {}) into {}: {} disks, {} bytes, {} logs applied, {:.1}s",
        point.id,
        points::fmt_time(point.time_ns),
        a.to.display(),
        report.disks.len(),
        total,
        report.logs,
        started.elapsed().as_secs_f64()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
