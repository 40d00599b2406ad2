//! `failover`: rebuild a group's disks on the recovery host and take the group over (the old
//! primary is fenced), ready for `hrl-tracker mount DIR` + `hrl-shipper sync --dir DIR` to
//! continue the group's chain (reverse replication).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::{Common, StoreArgs};
use crate::recover::failover::{self, FailoverRequest};

#[derive(Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// `latest`, `latest-app`, a point id, or a time (RFC 3339: the last point sealed at or
    /// before it). Default: the point a planned failover handed over, else `latest`.
    #[arg(long)]
    pub point: Option<String>,
    /// Directory to rebuild the disks into (created 0700 if missing): empty, or holding
    /// older versions of the group's disks (a failback: only what differs is downloaded).
    /// Not a live tracker mount: mount the tracker over it afterwards.
    #[arg(long)]
    pub to: PathBuf,
    /// Download every disk whole, even where DIR holds an older version of it (by default
    /// only the blocks that differ from the point are downloaded: a failback).
    #[arg(long)]
    pub full: bool,
    /// Print what the failover did as JSON (bytes downloaded per disk).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub common: Common,
}

pub async fn cmd_failover(a: FailoverArgs) -> Result<std::process::ExitCode> {
    let store = a.store.open()?;
    let started = std::time::Instant::now();
    let r = failover::failover(&FailoverRequest {
        store: &store,
        point: a.point.as_deref(),
        to: &a.to,
        state_dir: &a.common.state_dir,
        full: a.full,
    })
    .await?;
    let dir = crate::replicate::owner::canonical_dir(&a.to);
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
