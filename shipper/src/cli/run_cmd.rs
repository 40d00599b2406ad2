//! `run`: the background service, for one directory or every directory of a config file.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

use super::app_args::{AppArgs, HookSettings};
use super::args::{check_dir, group_for, protected, target_for, Common, KeyArgs};
use super::prune_cmd::PolicyArgs;
use crate::retain::policy::{self, Policy};
use crate::service::retention as service_retention;
use crate::service::run as service;
use crate::service::{config, metrics, retry, window};
use crate::store::bandwidth;

#[derive(Args)]
pub struct RunArgs {
    /// Protected directory (the tracker's mount).
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub dir: Option<PathBuf>,
    /// Store URL: a path, file:///path, s3://bucket/prefix, az://container/prefix,
    /// gs://bucket/prefix. Default: the target the directory replicates to (its state file
    /// records it), else /var/lib/hrl/store. Another one is refused without --retarget.
    #[arg(long)]
    pub target: Option<String>,
    /// Move the directory (each directory of the config) whose recorded target differs to
    /// the target given: a new base copy starts there (the old target's chain ends).
    #[arg(long)]
    pub retarget: bool,
    /// Replication interval (30s, 5m, 15m, ...).
    #[arg(long, default_value = "5m")]
    pub interval: String,
    /// Group name in the store (default: <host>-<directory path>, unique per host and
    /// directory; a directory that shipped before keeps the group its state file records).
    #[arg(long)]
    pub group: Option<String>,
    /// Configuration file (TOML) with a target and protected directories.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Back-off unit: retries wait 1, 2, 4, 8, 10, then every 30 units.
    #[arg(long, env = "HRL_RETRY_UNIT", default_value = "1m")]
    pub retry_unit: String,
    /// Daily local-time span (HH:MM-HH:MM) in which automatic resyncs may run, or `any`;
    /// default 18:00-08:00 (outside office hours). Outside it a disk waits in "resync
    /// required"; `hrl-shipper resync --dir DIR --now` starts one at once.
    #[arg(long)]
    pub resync_window: Option<String>,
    /// Serve Prometheus metrics (OpenMetrics text) on this address, e.g. 127.0.0.1:9477:
    /// health, RPO lag, unshipped bytes, resyncs, bytes moved, cycle durations, errors by
    /// class, store points and bytes (docs/shipper.md#metrics). Config: `metrics = "ADDR"`.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub net: super::args::NetArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub app: AppArgs,
    /// Prune the group after a cycle at most this often (the config's `prune_every`).
    #[arg(long)]
    pub prune_every: Option<String>,
    /// The prunes' grace period: objects unneeded for less are not collected yet.
    #[arg(long, default_value = "24h")]
    pub prune_grace: String,
    #[command(flatten)]
    pub common: Common,
}

/// The retention of one directory: the config's (or the defaults) under the flags.
fn retention_for(
    a: &RunArgs,
    policy: Policy,
    every: Duration,
) -> Result<service_retention::Retention> {
    let every = match &a.prune_every {
        Some(e) => policy::parse_duration("--prune-every", e)?,
        None => every,
    };
    if every.is_zero() {
        anyhow::bail!("--prune-every must be above zero (like 1h)");
    }
    let mut r = service_retention::Retention::new(a.policy.over(policy)?, every);
    r.grace = policy::parse_duration("--prune-grace", &a.prune_grace)?;
    Ok(r)
}

pub async fn cmd_run(a: RunArgs) -> Result<std::process::ExitCode> {
    let (jobs, metrics_in_config) = match (&a.config, &a.dir) {
        (Some(path), _) => jobs_of_config(&a, path)?,
        (None, Some(dir)) => (vec![job_of_dir(&a, dir)?], None),
        (None, None) => (Vec::new(), None),
    };
    // After the config's schedule: --bandwidth replaces it.
    a.net.apply()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut set = tokio::task::JoinSet::new();
    if let Some(addr) = a.metrics.as_deref().or(metrics_in_config.as_deref()) {
        let listener = metrics::bind(addr).await?;
        let dirs = jobs
            .iter()
            .map(|j| (j.protected.dir.clone(), j.protected.state_dir.clone()))
            .collect();
        tracing::info!(addr, "serving metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve(listener, dirs, rx.clone()));
    }
    for j in jobs {
        let mut j = j;
        j.protected.progress_bar = false;
        set.spawn(service::run_dir(j, rx.clone()));
    }
    crate::service::systemd::ready(set.len());
    tokio::spawn(crate::service::systemd::watchdog(rx.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        _ = async { while set.join_next().await.is_some() {} } => {}
    }
    crate::service::systemd::stopping();
    let _ = tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while set.join_next().await.is_some() {}
    })
    .await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The jobs of every directory of the config file at `path` (the config's bandwidth schedule
/// installed), and its metrics address.
fn jobs_of_config(
    a: &RunArgs,
    path: &std::path::Path,
) -> Result<(Vec<service::DirJob>, Option<String>)> {
    let cfg = config::load(path)?;
    let mut jobs = Vec::new();
    let retry_unit = match cfg.retry_unit {
        Some(u) => u,
        None => retry::parse_duration(&a.retry_unit).context("--retry-unit")?,
    };
    let common = Common {
        state_dir: cfg.state_dir.clone().unwrap_or(a.common.state_dir.clone()),
        chunk_size: cfg.chunk_size.unwrap_or(a.common.chunk_size),
        key: a.common.key.clone(),
    };
    bandwidth::set_schedule(cfg.bandwidth.clone());
    let window = window::parse_option(
        cfg.resync_window
            .as_deref()
            .or(a.resync_window.as_deref())
            .unwrap_or(window::DEFAULT_WINDOW),
    )?;
    for d in &cfg.dirs {
        check_dir(&d.path)?;
        let group = group_for(&d.path, d.group.clone(), &common.state_dir)?;
        let mut common = common.clone();
        if let Some(k) = &d.encryption_key {
            common.key = KeyArgs {
                key: Some(k.clone()),
                passphrase_file: cfg.passphrase_file.clone().or(common.key.passphrase_file),
            };
        }
        let t = target_for(&d.path, Some(&cfg.target), a.retarget, &common.state_dir)?;
        let mut pr = protected(&d.path, &t, &group, &common, false)?;
        pr.resync_window = window;
        pr.app = a
            .app
            .over(d.hooks.clone())
            .hooks(config::DEFAULT_APP_EVERY)?;
        jobs.push(service::DirJob {
            protected: pr,
            interval: d.interval,
            retry_unit,
            retention: Some(retention_for(a, d.policy, d.prune_every)?),
        });
    }
    Ok((jobs, cfg.metrics.clone()))
}

/// The job of the one directory `run --dir` names.
fn job_of_dir(a: &RunArgs, dir: &std::path::Path) -> Result<service::DirJob> {
    check_dir(dir)?;
    let group = group_for(dir, a.group.clone(), &a.common.state_dir)?;
    let t = target_for(dir, a.target.as_deref(), a.retarget, &a.common.state_dir)?;
    let mut pr = protected(dir, &t, &group, &a.common, false)?;
    pr.resync_window =
        window::parse_option(a.resync_window.as_deref().unwrap_or(window::DEFAULT_WINDOW))?;
    pr.app = a
        .app
        .over(HookSettings::default())
        .hooks(config::DEFAULT_APP_EVERY)?;
    Ok(service::DirJob {
        protected: pr,
        interval: retry::parse_duration(&a.interval).context("--interval")?,
        retry_unit: retry::parse_duration(&a.retry_unit).context("--retry-unit")?,
        retention: Some(retention_for(
            a,
            Policy::default(),
            service_retention::DEFAULT_PRUNE_EVERY,
        )?),
    })
}
