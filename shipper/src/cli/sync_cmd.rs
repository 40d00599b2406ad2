//! `sync` (one replication cycle now) and `resync` (start, pause or resume a resync).

use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::app_args::{AppArgs, HookSettings};
use super::args::{check_dir, group_for, protected, Common, DirArgs};
use super::prune_cmd::PolicyArgs;
use crate::private;
use crate::replicate::{cycle, resync};
use crate::service::{retry, status};

#[derive(Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub at: DirArgs,
    /// Resync every disk: compare every block with the replica and commit a new base (after a
    /// broken chain; only blocks that differ upload).
    #[arg(long)]
    pub resync: bool,
    /// Print what the cycle did as JSON.
    #[arg(long)]
    pub json: bool,
    /// Trust nothing in the shipper's state for this directory (lost, damaged, restored from
    /// a backup): a damaged state file is moved aside (`.damaged-<time>`), and every disk is
    /// resynced against the store's latest point over the tracker's marks (every block where
    /// they cannot prove what changed).
    #[arg(long)]
    pub reconcile: bool,
    /// With a policy flag, prune the group after the cycle (as the service does).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// With hooks, the point is sealed between them (app-consistent when the pre hook
    /// succeeds).
    #[command(flatten)]
    pub app: AppArgs,
    /// The prune's grace period (with a policy flag).
    #[arg(long, default_value = "24h")]
    pub prune_grace: String,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("action").required(true).args(["now", "pause", "resume"])))]
pub struct ResyncArgs {
    #[command(flatten)]
    pub at: DirArgs,
    /// Resync this disk (a file name in DIR); a disk that needs no resync is compared block
    /// by block. Default: the disks that need one.
    #[arg(long)]
    pub disk: Option<String>,
    /// Run the resync now, whatever the window and the pause say; returns when the recovery
    /// point after it is committed.
    #[arg(long)]
    pub now: bool,
    /// Pause resyncs of DIR (a running one stops after saving its progress).
    #[arg(long)]
    pub pause: bool,
    /// Resume paused resyncs of DIR (they continue where they stopped).
    #[arg(long)]
    pub resume: bool,
    /// Print what the cycle did as JSON (with --now).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

pub async fn cmd_resync(a: ResyncArgs) -> Result<std::process::ExitCode> {
    check_dir(&a.at.dir)?;
    let marker = resync::pause_marker(&a.common.state_dir, &a.at.dir);
    if a.pause || a.resume {
        if a.pause {
            private::create_dir(&a.common.state_dir).with_context(|| {
                format!("create state directory {}", a.common.state_dir.display())
            })?;
            std::fs::write(&marker, format!("{}\n", a.at.dir.display()))
                .with_context(|| format!("write {}", marker.display()))?;
            println!(
                "resyncs of {} paused (a running one stops after saving its progress)",
                a.at.dir.display()
            );
        } else {
            match std::fs::remove_file(&marker) {
                Ok(()) => println!("resyncs of {} resumed", a.at.dir.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("resyncs of {} were not paused", a.at.dir.display())
                }
                Err(e) => return Err(e).with_context(|| format!("remove {}", marker.display())),
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let group = group_for(&a.at.dir, a.at.group.clone(), &a.common.state_dir)?;
    let target = a.at.target(&a.common.state_dir)?;
    if let Some(disk) = &a.disk {
        if !a.at.dir.join(disk).is_file() {
            bail!(
                "{disk} is not a disk in {}; give a file name in the directory",
                a.at.dir.display()
            );
        }
        // Mark it: one that needs no resync yet is compared block by block.
        let mut s = status::load(&a.common.state_dir, &a.at.dir)?
            .filter(|s| s.group == group)
            .unwrap_or_else(|| status::DirStatus::new(&a.at.dir, &group, &target));
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
        at: DirArgs {
            group: Some(group),
            target: Some(target),
            retarget: false,
            ..a.at
        },
        resync: false,
        reconcile: false,
        policy: PolicyArgs::default(),
        app: AppArgs::default(),
        prune_grace: "24h".into(),
        json: a.json,
        common: a.common,
    };
    run_sync(sync, true).await
}

/// The prune after a sync: only when a policy flag asks for one.
fn sync_retention(a: &SyncArgs) -> Result<Option<crate::service::retention::Retention>> {
    use crate::retain::policy;
    let p = &a.policy;
    if p.retention.is_none()
        && p.keep_hourly.is_none()
        && p.keep_daily.is_none()
        && p.keep_app_consistent.is_none()
    {
        return Ok(None);
    }
    let mut r = crate::service::retention::Retention::new(
        p.over(policy::Policy::default())?,
        crate::service::retention::DEFAULT_PRUNE_EVERY,
    );
    r.grace = policy::parse_duration("--prune-grace", &a.prune_grace)?;
    Ok(Some(r))
}

pub async fn cmd_sync(a: SyncArgs) -> Result<std::process::ExitCode> {
    run_sync(a, false).await
}

async fn run_sync(a: SyncArgs, resync_now: bool) -> Result<std::process::ExitCode> {
    check_dir(&a.at.dir)?;
    if status::is_paused(&a.common.state_dir, &a.at.dir) {
        bail!(
            "replication of {} is paused; run `hrl-shipper resume --dir {}` first",
            a.at.dir.display(),
            a.at.dir.display()
        );
    }
    let retention = sync_retention(&a)?;
    let group = group_for(&a.at.dir, a.at.group.clone(), &a.common.state_dir)?;
    let target = a.at.target(&a.common.state_dir)?;
    let mut p = protected(&a.at.dir, &target, &group, &a.common, a.resync)?;
    p.resync_now = resync_now;
    // A sync with hooks makes an app-consistent point every time.
    p.app = a
        .app
        .over(HookSettings::default())
        .hooks(std::time::Duration::ZERO)?;
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
    let mut result = cycle::run_cycle(&p, &st).await;
    if let (Ok(_), Some(r)) = (&result, &retention) {
        crate::service::retention::run(&p, r, &st).await;
        if let Some(e) = st.lock().ok().and_then(|s| s.retention.clone()?.last_error) {
            result = Err(anyhow::anyhow!(
                "the point is committed, but the prune after it failed: {e}"
            ));
        }
    }
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
