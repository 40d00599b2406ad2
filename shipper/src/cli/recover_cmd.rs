//! The commands that read a group's store without a protected directory: `points`,
//! `verify`, `restore`.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

use super::args::{NetArgs, StoreArgs};
use crate::recover::{points, restore, verify};

#[derive(Args)]
pub struct PointsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub net: NetArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// `all` (default), `latest`, `latest-app`, a point id, or a time.
    #[arg(long, default_value = "all")]
    pub point: String,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// `latest`, `latest-app` (the latest app-consistent point), a point id, or a time
    /// (RFC 3339): the last point sealed at or before it.
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Directory to restore into (created 0700 if missing; existing disks are never
    /// overwritten). Disks get the mode and owner recorded at the seal (0600 root if unknown).
    #[arg(long)]
    pub to: PathBuf,
}

pub async fn cmd_points(a: PointsArgs) -> Result<std::process::ExitCode> {
    a.net.apply()?;
    let store = a.store.open()?;
    let ids = points::list_ids(&store).await?;
    let mut all = Vec::new();
    for id in ids {
        all.push(points::load(&store, id).await?);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        println!(
            "group {:?} in {} has no recovery points",
            a.store.group, a.store.target
        );
    } else {
        let records = crate::replicate::owner::records(&store).await?;
        println!("{:>6}  {:<26} {:<5} disks", "point", "sealed at", "kind");
        let tested = crate::store::tests::latest_by_point(&store).await?;
        let times: Vec<u64> = all.iter().map(|m| m.time_ns).collect();
        for (m, back) in all.iter().zip(points::time_went_back(&times)) {
            let disks: Vec<String> = m
                .disks
                .iter()
                .map(|d| format!("{} ({} B)", hrl::display::escaped(&d.name), d.disk_size))
                .collect();
            println!(
                "{:>6}  {:<26} {:<5} {}{}",
                m.id,
                points::fmt_time(m.time_ns),
                if m.is_app_consistent() {
                    "app"
                } else {
                    "crash"
                },
                disks.join(", "),
                if back {
                    "  [seal time went back (clock stepped back): restore it by id]"
                } else {
                    ""
                }
            );
            for note in points::carried_notes(m) {
                println!("{:>6}  note: {note}", "");
            }
            if hrl::owner::is_fenced(m.id, m.epoch, &records) {
                println!(
                    "{:>6}  note: fenced: its owner committed it after a failover took the group (not in the chain; restore it by id only)",
                    ""
                );
            }
            if let Some(t) = tested.get(&m.id) {
                println!(
                    "{:>6}  tested {} ({}; mounted {})",
                    "",
                    points::fmt_time(t.ended_ns),
                    hrl::display::escaped(&t.result),
                    points::fmt_time(t.started_ns)
                );
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn cmd_verify(a: VerifyArgs) -> Result<std::process::ExitCode> {
    a.net.apply()?;
    let store = a.store.open()?;
    let r = verify::verify_selected(&store, &a.point).await?;
    for p in &r.problems {
        eprintln!(
            "hrl-shipper: verify: {}",
            hrl::display::escaped(&p.to_string())
        );
    }
    for id in &r.gone {
        eprintln!("hrl-shipper: verify: point {id} was removed (by a prune) while verify listed the points; not checked");
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

pub async fn cmd_restore(a: RestoreArgs) -> Result<std::process::ExitCode> {
    a.net.apply()?;
    let store = a.store.open()?;
    let chosen = points::select(&store, &a.point).await?;
    // Leased before the manifest is read again for the restore: retention keeps it whole.
    // A store this user may only read gets no lease (the grace period still covers it).
    let lease = match crate::store::leases::hold(&store, chosen.id, "restore").await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("restoring without a lease (a prune may collect the point meanwhile once its grace period passes): {e}");
            None
        }
    };
    let point = points::load(&store, chosen.id).await?;
    let started = std::time::Instant::now();
    let report = restore::restore_point(&store, &point, &a.to).await;
    if let Some(l) = lease {
        l.release().await;
    }
    let report = report?;
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
    for note in points::carried_notes(&point) {
        println!("note: {note}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}
