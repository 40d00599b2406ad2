//! `hrl-shipper prune`: retention by hand — keep the points the policy names, merge the
//! logs up to the oldest kept point into new bases, delete the other points and collect
//! what no kept point needs (after the grace period).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::StoreArgs;
use crate::retain::policy::{self, Policy};
use crate::retain::prune::{prune, PruneOptions, PruneReport};
use crate::service::status;

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub net: super::args::NetArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Objects unneeded for less than this are not collected yet (a shipper or reader
    /// that read an older manifest must finish within it). `0s` only with nothing else
    /// using the group.
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// Say what would be kept, removed and collected, and what a merge would rewrite and
    /// free (old indexes and logs); change nothing (JSON: `merge_plan`).
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
    /// Scratch space for merges.
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

/// The retention policy flags (`prune`, and `run` / `sync` for the service's prunes).
#[derive(Args, Clone, Default)]
pub struct PolicyArgs {
    /// Every point sealed within this of now is kept (any duration: 24h, 90m, 3600s).
    #[arg(long)]
    pub retention: Option<String>,
    /// Of the older points, keep the newest of each of this many latest hours.
    #[arg(long)]
    pub keep_hourly: Option<u32>,
    /// Of the older points, keep the newest of each of this many latest days (UTC).
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep this many newest app-consistent points wherever they are.
    #[arg(long)]
    pub keep_app_consistent: Option<u32>,
}

impl PolicyArgs {
    /// The policy: the flags given over `base` (the config's, or the defaults).
    pub fn over(&self, base: Policy) -> Result<Policy> {
        let mut p = base;
        if let Some(r) = &self.retention {
            p.retention = policy::parse_duration("--retention", r)?;
        }
        p.keep_hourly = self.keep_hourly.unwrap_or(p.keep_hourly);
        p.keep_daily = self.keep_daily.unwrap_or(p.keep_daily);
        p.keep_app_consistent = self.keep_app_consistent.unwrap_or(p.keep_app_consistent);
        Ok(p)
    }
}

pub async fn cmd_prune(a: PruneArgs) -> Result<std::process::ExitCode> {
    a.net.apply()?;
    let opts = PruneOptions {
        policy: a.policy.over(Policy::default())?,
        grace: policy::parse_duration("--grace", &a.grace)?,
        dry_run: a.dry_run,
        state_dir: a.state_dir.clone(),
    };
    let store = a.store.open()?;
    let report = prune(&store, &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn print_report(r: &PruneReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "{} point(s) kept, {verb} {} point(s){}",
        r.kept.len(),
        r.removed.len(),
        if r.leased.is_empty() {
            String::new()
        } else {
            format!(" ({} kept only for a reader's lease)", r.leased.len())
        }
    );
    if !r.dry_run {
        println!(
            "merged {} disk(s) into new bases ({} bytes uploaded), {} point(s) rewritten",
            r.merge.disks_merged, r.merge.bytes_sent, r.merge.points_rewritten
        );
    }
    if let Some(p) = &r.merge_plan {
        println!(
            "a merge would give {} disk(s) new bases and rewrite {} point(s); afterwards {} object(s), {} bytes (old indexes and logs) would be unneeded, collected once the grace period has passed",
            p.disks, p.points_rewritten, p.frees_objects, p.frees_bytes
        );
    }
    let s = &r.sweep;
    println!(
        "collected {} object(s), {} bytes{}; {} object(s), {} bytes awaiting the grace period; {} bytes in the store",
        s.deleted_objects,
        s.deleted_bytes,
        if r.dry_run { " (dry run: nothing deleted)" } else { "" },
        s.awaiting_objects,
        s.awaiting_bytes,
        s.store_bytes
    );
}
