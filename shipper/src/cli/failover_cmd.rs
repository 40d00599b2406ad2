//! `failover`: rebuild a group's disks on the recovery host and take the group over (the old
//! primary is fenced), ready for `hrl-tracker mount DIR` + `hrl-shipper sync --dir DIR` to
//! continue the group's chain (reverse replication).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::args::{group_for, protected, Common, DirArgs, StoreArgs};
use crate::recover::failover::{self, FailoverRequest};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FailoverArgs {
    #[command(subcommand)]
    pub planned: Option<FailoverSub>,
    #[command(flatten)]
    pub store: FailoverStore,
    #[command(flatten)]
    pub unplanned: UnplannedArgs,
    #[command(flatten)]
    pub net: super::args::NetArgs,
}

/// The store of a failover on the recovery host: [`StoreArgs`] with the group optional at
/// parse time (`failover planned` takes none; clap's optional flatten does not see a nested
/// flatten's arguments).
#[derive(Args)]
pub struct FailoverStore {
    /// Store URL: a path, file:///path, s3://bucket/prefix, az://container/prefix, gs://bucket/prefix.
    #[arg(long, default_value = crate::store::target::DEFAULT_TARGET)]
    pub target: String,
    /// Group name in the store (`hrl-shipper status` shows a directory's group).
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub key: super::args::KeyArgs,
}

#[derive(clap::Subcommand)]
pub enum FailoverSub {
    /// On the primary: switch the tracked directory read-only (writes get EROFS; refused
    /// while a file is open for writing), seal and ship a final point, and hand the group
    /// over at it; prints the command to run on the recovery host. No data loss.
    Planned(PlannedArgs),
    /// Test failover: serve point P at DIR at once (`hrl-shipper mount`: read on demand,
    /// writable into a throwaway overlay, the store untouched; replication of the group goes
    /// on); `--cleanup --to DIR` ends it and records the point as tested (`points` shows it).
    Test(TestArgs),
}

#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub store: FailoverStore,
    /// `latest`, a point id, or a time (RFC 3339), as for `restore`.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Directory to serve the point's disks in (one file per disk).
    #[arg(long)]
    pub to: PathBuf,
    /// End the test failover at DIR: unmount, remove the overlay, record the result.
    #[arg(long)]
    pub cleanup: bool,
    /// State directory (the overlay lives under `mounts/` there).
    #[arg(long, env = "HRL_STATE_DIR", default_value = crate::service::status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The mount's reads from the store (passed on to the `hrl-shipper mount` it starts).
    #[command(flatten)]
    pub net: super::args::NetArgs,
}

#[derive(Args)]
pub struct PlannedArgs {
    #[command(flatten)]
    pub at: DirArgs,
    /// Print what the hand-over did as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

/// `failover` on the recovery host (or the original host: a failback).
#[derive(Args)]
pub struct UnplannedArgs {
    /// `latest`, a point id, or a time (RFC 3339: the last point sealed at or before it), as
    /// for `restore`. Default: the point a planned failover handed over, else `latest`.
    #[arg(long)]
    pub point: Option<String>,
    /// Directory to rebuild the disks into (created 0700 if missing): empty, or holding
    /// older versions of the group's disks (a failback: only what differs is downloaded).
    /// Not a live tracker mount: mount the tracker over it afterwards.
    #[arg(long, required = true)]
    pub to: Option<PathBuf>,
    /// Download every disk whole, even where DIR holds an older or prepared version of it
    /// (by default only the blocks that differ from the point are downloaded: a failback).
    #[arg(long)]
    pub full: bool,
    /// A first pass while the other side is still live: build (or delta-update, or catch
    /// up) the disks under hidden names `.<disk id>.hrl-prepared` in DIR, recorded in
    /// DIR/.hrl-prepared.json (signed with $HRL_STATE_DIR/prepare.key). Nothing is taken or
    /// written to the store; run it as often as wanted. The final `failover --to DIR` then
    /// downloads only the logs since the prepared point and takes the group over.
    #[arg(long)]
    pub prepare: bool,
    /// Print what the failover did as JSON (bytes downloaded per disk).
    #[arg(long)]
    pub json: bool,
    /// State directory (the state the next `sync --dir DIR` continues from). The store's
    /// key, if any, is the one of the store arguments.
    #[arg(long, env = "HRL_STATE_DIR", default_value = crate::service::status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub async fn cmd_failover(a: FailoverArgs) -> Result<std::process::ExitCode> {
    a.net.apply()?;
    let usage = "give --target URL --group NAME --to DIR (recovery host), or `failover planned --dir DIR` (primary)";
    match (a.planned, a.store.group) {
        (Some(FailoverSub::Planned(p)), _) => cmd_planned(p).await,
        (Some(FailoverSub::Test(mut t)), _) => {
            // `failover --bandwidth R test` and `failover test --bandwidth R` alike.
            t.net.bandwidth = t.net.bandwidth.or(a.net.bandwidth);
            cmd_test(t).await
        }
        (None, Some(group)) => {
            let store = StoreArgs {
                target: a.store.target,
                group,
                key: a.store.key,
            };
            cmd_unplanned(store, a.unplanned).await
        }
        (None, None) => anyhow::bail!(usage),
    }
}

async fn cmd_planned(a: PlannedArgs) -> Result<std::process::ExitCode> {
    super::args::check_dir(&a.at.dir)?;
    let group = group_for(&a.at.dir, a.at.group.clone(), &a.common.state_dir)?;
    // The target on record (a planned failover hands over the group the directory
    // really replicates to).
    let target = a.at.target(&a.common.state_dir)?;
    let p = protected(&a.at.dir, &target, &group, &a.common, false)?;
    let initial = crate::service::status::load(&p.state_dir, &p.dir)?.filter(|s| s.group == group);
    let st = std::sync::Mutex::new(initial.unwrap_or_else(|| {
        crate::service::status::DirStatus::new(&p.dir, &group, &p.store.target.url)
    }));
    let started = std::time::Instant::now();
    let result = crate::recover::planned::hand_over(&p, &st).await;
    let mut s = st
        .lock()
        .map_err(|_| anyhow::anyhow!("status lock poisoned"))?
        .clone();
    s.updated_ns = hrl::now_ns();
    let h = match result {
        Ok(h) => {
            s.cycle_succeeded();
            crate::service::status::save(&p.state_dir, &s)?;
            h
        }
        Err(e) => {
            let _ = crate::service::status::save(&p.state_dir, &s);
            return Err(e);
        }
    };
    let next = format!(
        "hrl-shipper failover --target {} --group {} --to DIR",
        p.store.target.url, group
    );
    if a.json {
        let v = serde_json::json!({
            "point": h.point, "epoch": h.epoch, "group": group, "disks": h.disks,
            "bytes_uploaded": h.bytes_uploaded, "seconds": started.elapsed().as_secs_f64(),
            "next": next,
        });
        println!("{v}");
    } else {
        println!(
            "handed group {group} over at point {} ({} disks, {} bytes shipped, {:.1}s); {} stays read-only (writes get EROFS) until unmounted",
            h.point,
            h.disks,
            h.bytes_uploaded,
            started.elapsed().as_secs_f64(),
            p.dir.display()
        );
        println!("on the recovery host run: {next}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn cmd_unplanned(store: StoreArgs, a: UnplannedArgs) -> Result<std::process::ExitCode> {
    let store = store.open()?;
    let to = a.to.context("--to DIR is required")?;
    let started = std::time::Instant::now();
    let req = FailoverRequest {
        store: &store,
        point: a.point.as_deref(),
        to: &to,
        state_dir: &a.state_dir,
        full: a.full,
    };
    if a.prepare {
        let r = crate::recover::prepare::prepare(&req).await?;
        return Ok(print_prepared(&store, &to, &r, a.json, started));
    }
    let r = failover::failover(&req).await?;
    let dir = crate::replicate::owner::canonical_dir(&to);
    let next = format!(
        "hrl-tracker mount {0} && hrl-shipper sync --dir {0} --target {1} --group {2}",
        dir.display(),
        store.target.url,
        store.group
    );
    if a.json {
        let v = serde_json::json!({
            "point": r.point,
            "epoch": r.epoch,
            "group": store.group,
            "previous_owner": r.previous_owner,
            "bytes_downloaded": r.bytes_downloaded,
            "disks": r.disks.iter().map(|(name, size, down, how)| serde_json::json!({
                "name": name, "disk_size": size, "bytes_downloaded": down, "how": how,
            })).collect::<Vec<_>>(),
            "next": next,
        });
        println!("{v}");
    } else {
        println!(
            "failed over group {} to point {} in {}: {} disks, {} bytes downloaded, {:.1}s; this host owns the group (epoch {}){}",
            store.group,
            r.point,
            dir.display(),
            r.disks.len(),
            r.bytes_downloaded,
            started.elapsed().as_secs_f64(),
            r.epoch,
            r.previous_owner
                .as_ref()
                .map(|o| format!(", taken from {o}"))
                .unwrap_or_default()
        );
        println!("to replicate from here (continues the group's chain, no base copy): {next}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `failover --prepare` did, and the command that finishes the failover.
fn print_prepared(
    store: &crate::store::GroupStore,
    to: &std::path::Path,
    r: &failover::FailoverReport,
    json: bool,
    started: std::time::Instant,
) -> std::process::ExitCode {
    let dir = crate::replicate::owner::canonical_dir(to);
    let next = format!(
        "hrl-shipper failover --target {} --group {} --to {}",
        store.target.url,
        store.group,
        dir.display()
    );
    if json {
        let v = serde_json::json!({
            "prepared": true,
            "point": r.point,
            "group": store.group,
            "bytes_downloaded": r.bytes_downloaded,
            "disks": r.disks.iter().map(|(name, size, down, how)| serde_json::json!({
                "name": name, "disk_size": size, "bytes_downloaded": down, "how": how,
            })).collect::<Vec<_>>(),
            "seconds": started.elapsed().as_secs_f64(),
            "next": next,
        });
        println!("{v}");
    } else {
        println!(
            "prepared point {} of group {} in {} (hidden names, nothing taken over): {} disks, {} bytes downloaded, {:.1}s",
            r.point,
            store.group,
            dir.display(),
            r.disks.len(),
            r.bytes_downloaded,
            started.elapsed().as_secs_f64()
        );
        println!(
            "run it again to catch up, or fail over (only the logs since are fetched): {next}"
        );
    }
    std::process::ExitCode::SUCCESS
}

/// `failover test`: a mount of the point (start) or its end and record (`--cleanup`).
async fn cmd_test(a: TestArgs) -> Result<std::process::ExitCode> {
    use super::mount_cmd::{test_failover_cleanup, test_failover_start};
    if a.cleanup {
        match test_failover_cleanup(&a.to, &a.state_dir).await? {
            Some(r) => println!(
                "test failover of point {} at {} ended: {}",
                r.point,
                a.to.display(),
                r.result
            ),
            None => println!("test failover at {} ended", a.to.display()),
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let Some(group) = a.store.group else {
        anyhow::bail!("give --target URL --group NAME --point P --to DIR (or --cleanup --to DIR)");
    };
    let store = StoreArgs {
        target: a.store.target,
        group,
        key: a.store.key,
    };
    std::fs::create_dir_all(&a.to).with_context(|| format!("create {}", a.to.display()))?;
    let id = test_failover_start(
        &store,
        &a.point,
        &a.to,
        &a.state_dir,
        a.net.bandwidth.as_deref(),
    )?;
    println!(
        "test failover: point {id} of group {} served at {} (writes go to a throwaway overlay); end it with `hrl-shipper failover test --cleanup --to {}`",
        store.group,
        a.to.display(),
        a.to.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}
