//! Sealing: the active logs of all disks of a mount are cut at one instant (all disk locks
//! held, so no write falls between two disks' cuts: one crash-consistent point for the whole
//! directory). The locks are held only for the cut itself: from then on, changes wait in a
//! per-disk memory buffer (still marked in the bitmap first) while the old log is renamed and
//! sealed and the next log is created and made durable, without any lock. The buffered
//! changes are then appended to the next log, which becomes active.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use hrl::control::{DiskMode, SealedLog};
use hrl::log::{verify_sealed, LogHeader, LogWriter, SealInfo};
use hrl::naming;

use crate::disk::Disk;
use crate::tracking::{TrackError, Tracker};

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
    old: LogWriter,
    name: String,
    touched: HashSet<u64>,
    mode: DiskMode,
    next: LogHeader,
    /// The image's size at the cut (what the sealed log leaves the disk at): the size
    /// recorded for the seal. Not the header's size (the disk may have shrunk since the log
    /// was opened) and not a later stat (writes after the cut, in the next log, may have
    /// grown it since).
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
    let mut errors = Vec::new();
    // Seal ids are monotonic across restarts: wall clock in microseconds, bumped if needed.
    let time_ns = hrl::now_ns();
    let seal_id = (time_ns / 1000).max(*last_id + 1);
    *last_id = seal_id;

    // 1. The cut: all locks, no I/O.
    let started = std::time::Instant::now();
    let mut cuts = Vec::new();
    {
        let mut guards: Vec<_> = disks.iter().map(|d| d.lock_settled()).collect();
        for (d, st) in disks.iter().zip(guards.iter_mut()) {
            let Some(old) = st.start_swap() else { continue };
            let h = old.header().clone();
            let mut next = LogHeader::new(
                h.disk_id,
                h.generation,
                h.sequence + 1,
                st.size,
                old.seal_hash(),
            );
            next.block_size = h.block_size;
            cuts.push(Cut {
                disk: d.clone(),
                old,
                name: st.name.clone(),
                touched: Disk::begin_interval(st, seal_id),
                mode: st.mode,
                next,
                size: st.size,
            });
        }
    }
    let hold_us = started.elapsed().as_micros() as u64;
    tracing::debug!(disks = cuts.len(), hold_us, "seal cut");

    // 2. Without locks: move the old log aside, open the next, seal the old one; then the
    //    next log takes over with the changes buffered meanwhile.
    let mut sealed = Vec::new();
    for mut c in cuts {
        let disk_path = root.join(&c.name);
        let h = c.old.header();
        let file =
            naming::sealed_log_path(Path::new(&c.name), h.sequence, &hrl::to_hex(&h.disk_id))
                .to_string_lossy()
                .into_owned();
        let sealed_path = root.join(&file);
        let active = naming::active_log_path(&disk_path);
        let opened = if sealed_path.exists() {
            Err(format!("{file} already exists; move it away"))
        } else {
            c.old
                .rename_to(&sealed_path)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    LogWriter::create(&active, &c.next).map_err(|e| {
                        if let Err(back) = c.old.rename_to(&active) {
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
                let mut st = c.disk.lock();
                st.finish_swap(c.old);
                drop(st);
                c.disk.notify_swapped();
                errors.push(TrackError::SealFailed {
                    disk: c.name,
                    reason,
                });
                continue;
            }
        };
        let seal = c.old.seal();
        {
            let mut st = c.disk.lock();
            st.finish_swap(next);
        }
        c.disk.notify_swapped();
        match seal {
            Ok(info) => sealed.push((c.disk, file, info, c.touched, c.mode, c.name, c.size)),
            Err(e) => errors.push(TrackError::SealFailed {
                disk: c.name,
                reason: format!("{e} (the log is sealed at the next start)"),
            }),
        }
    }

    // 3. Report, make the images durable, clear the marks the sealed logs cover.
    let mut out = Vec::new();
    for (disk, file, info, touched, mode, name, size) in sealed {
        match entry(&root, &file, &info, mode, &name, size) {
            Ok(mut e) => {
                // After the cut: a change outside the tracker before it is seen here.
                e.changed_outside = disk.take_changed_outside();
                match disk.sync_image() {
                    Ok(()) => {
                        if let Err(err) = disk.clear_sealed(touched) {
                            tracing::warn!(disk = %name, error = %err, "cannot clear sealed marks");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(disk = %name, error = %err, "cannot sync image after seal")
                    }
                }
                tracker.add_pending(&disk, e.clone());
                out.push(e);
            }
            Err(err) => errors.push(err),
        }
    }
    Sealed {
        seal_id,
        time_ns,
        disks: out,
        hold_us,
        errors,
    }
}

fn entry(
    root: &Path,
    file: &str,
    info: &SealInfo,
    mode: DiskMode,
    name: &str,
    size: u64,
) -> Result<SealedLog, TrackError> {
    let v = verify_sealed(&root.join(file), None)?;
    debug_assert_eq!(v.seal.hash, info.hash);
    Ok(SealedLog {
        disk: name.to_string(),
        disk_id: hrl::to_hex(&v.header.disk_id),
        generation: v.header.generation,
        seq: v.header.sequence,
        log: file.to_string(),
        bytes: v.file_len,
        hash: hrl::to_hex(&v.seal.hash),
        prev_hash: hrl::to_hex(&v.header.prev_hash),
        records: v.seal.records,
        disk_size: size,
        mode,
        changed_outside: false,
    })
}
