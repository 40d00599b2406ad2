//! `status` (replication state per disk) and `pause` / `resume` of a directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::args::check_dir;
use crate::private;
use crate::service::status;

#[derive(Args)]
pub struct StatusArgs {
    /// Only this directory (default: every directory with a state file).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct PauseArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, env = "HRL_STATE_DIR", default_value = status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

pub fn cmd_pause(a: PauseArgs, pause: bool) -> Result<std::process::ExitCode> {
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

pub fn cmd_status(a: StatusArgs) -> Result<std::process::ExitCode> {
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
