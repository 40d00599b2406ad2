//! Sealing: the active logs of all disks of a mount are cut at one instant (all disk locks
//! held, so no write falls between two disks' cuts: one crash-consistent point for the whole
//! directory). The locks are held only for the cut itself: from then on, changes wait in a
//! per-disk memory buffer (still marked in the bitmap first) while the old log is renamed and
//! sealed and the next log is created and made durable, without any lock. The buffered
//! changes are then appended to the next log, which becomes active.

use std::path::Path;
use std::sync::Arc;

use hrl::control::{DiskMode, SealedLog};
use hrl::log::{verify_sealed, LogHeader, LogWriter, SealInfo};
use hrl::naming;

use crate::disk::{sealed_entry, Disk, LogCut};
use crate::error::TrackError;
use crate::tracking::Tracker;

/// Result of one seal.
pub struct Sealed {
    pub seal_id: u64,
    pub time_ns: u64,
    pub disks: Vec<SealedLog>,
    /// How long the disk locks were held for the cut (the longest any writer waited for it).
    pub hold_us: u64,
    /// Disks whose seal failed (their active log keeps going).
    pub errors: Vec<TrackError>,
}

/// One disk's log, cut and waiting to be sealed.
struct Cut {
    disk: Arc<Disk>,
    log: LogCut,
    next: LogHeader,
}

/// One disk's log, sealed, waiting to be reported.
struct Done {
    disk: Arc<Disk>,
    file: String,
    info: SealInfo,
    name: String,
    mode: DiskMode,
    /// The image's size at the cut: the size recorded for the seal. Not the header's size
    /// (the disk may have shrunk since the log was opened) and not a later stat (writes after
    /// the cut, in the next log, may have grown it since).
    size: u64,
}

/// Seals every disk of the mount at one instant.
pub fn seal_all(tracker: &Tracker) -> Sealed {
    let mut last_id = tracker.seal_state.lock().unwrap_or_else(|p| p.into_inner());
    let disks = tracker.disks();
    let root = tracker.root_path().to_path_buf();
    // Flush the logs' data first, so the seal's own syncs are short.
    for d in &disks {
        let path = naming::active_log_path(&root.join(d.name()));
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.sync_data();
        }
    }
    // Seal ids are monotonic across restarts: wall clock in microseconds, bumped if needed.
    let time_ns = hrl::now_ns();
    let seal_id = (time_ns / 1000).max(*last_id + 1);
    *last_id = seal_id;

    let started = std::time::Instant::now();
    let cuts = cut_all(&disks, seal_id);
    let hold_us = started.elapsed().as_micros() as u64;
    crate::metrics::sealed(hold_us);
    tracing::debug!(disks = cuts.len(), hold_us, "seal cut");

    let mut errors = Vec::new();
    let done: Vec<Done> = cuts
        .into_iter()
        .filter_map(|c| swap(&root, c).map_err(|e| errors.push(e)).ok())
        .collect();
    let disks = report(tracker, &root, done, &mut errors);
    Sealed {
        seal_id,
        time_ns,
        disks,
        hold_us,
        errors,
    }
}

/// The cut: every disk's lock held at once, no I/O.
fn cut_all(disks: &[Arc<Disk>], seal_id: u64) -> Vec<Cut> {
    let mut held: Vec<_> = disks.iter().map(|d| d.hold()).collect();
    let mut cuts = Vec::new();
    for (d, h) in disks.iter().zip(held.iter_mut()) {
        let Some(log) = h.cut(seal_id) else { continue };
        let old = log.old.header();
        let mut next = LogHeader::new(
            old.disk_id,
            old.generation,
            old.sequence + 1,
            log.size,
            log.old.seal_hash(),
        );
        next.block_size = old.block_size;
        cuts.push(Cut {
            disk: d.clone(),
            log,
            next,
        });
    }
    cuts
}

/// Without locks: moves the old log aside, opens the next, seals the old one; the next log
/// then takes over with the changes buffered meanwhile. On failure the old log stays
/// active.
fn swap(root: &Path, c: Cut) -> Result<Done, TrackError> {
    let Cut { disk, log, next } = c;
    let LogCut {
        mut old,
        name,
        mode,
        size,
    } = log;
    let h = old.header();
    let file = naming::sealed_log_path(Path::new(&name), h.sequence, &hrl::to_hex(&h.disk_id))
        .to_string_lossy()
        .into_owned();
    let sealed_path = root.join(&file);
    let active = naming::active_log_path(&root.join(&name));
    let opened = if sealed_path.exists() {
        Err(format!("{file} already exists; move it away"))
    } else {
        old.rename_to(&sealed_path)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                LogWriter::create(&active, &next).map_err(|e| {
                    if let Err(back) = old.rename_to(&active) {
                        tracing::error!(error = %back, "cannot move the log back after a failed seal");
                    }
                    e.to_string()
                })
            })
    };
    let next = match opened {
        Ok(next) => next,
        Err(reason) => {
            // Keep the old log active, with what was buffered meanwhile.
            disk.resume(old);
            return Err(TrackError::SealFailed { disk: name, reason });
        }
    };
    let seal = old.seal();
    disk.resume(next);
    match seal {
        Ok(info) => Ok(Done {
            disk,
            file,
            info,
            name,
            mode,
            size,
        }),
        Err(e) => Err(TrackError::SealFailed {
            disk: name,
            reason: format!("{e} (the log is sealed at the next start)"),
        }),
    }
}

/// Reports the sealed logs and makes the images durable. The marks stay until the
/// shipper's `clear` after the point holding these logs: until then the bitmap alone covers
/// them.
fn report(
    tracker: &Tracker,
    root: &Path,
    done: Vec<Done>,
    errors: &mut Vec<TrackError>,
) -> Vec<SealedLog> {
    let mut out = Vec::new();
    for d in done {
        let mut e = match verify_sealed(&root.join(&d.file), None) {
            Ok(v) => {
                debug_assert_eq!(v.seal.hash, d.info.hash);
                sealed_entry(&v, &d.name, &d.file, d.mode)
            }
            Err(err) => {
                errors.push(err.into());
                continue;
            }
        };
        e.disk_size = d.size;
        // After the cut: a change outside the tracker before it is seen here.
        e.changed_outside = d.disk.take_changed_outside();
        if let Err(err) = d.disk.sync_image() {
            tracing::warn!(disk = %d.name, error = %err, "cannot sync image after seal")
        }
        tracker.add_pending(&d.disk, e.clone());
        out.push(e);
    }
    out
}
