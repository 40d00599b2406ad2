//! Sealing: the active logs of all disks of a mount are swapped for new ones at one instant
//! (all disk locks held, so no write falls between two disks' cuts: one crash-consistent point
//! for the whole directory). Writing the seal records and syncing happen after the locks are
//! released, so writers wait only for the swap (renames and new log headers).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use hrl::control::{DiskMode, SealedLog};
use hrl::log::{verify_sealed, LogHeader, LogWriter};
use hrl::naming;

use crate::disk::Disk;
use crate::tracking::{TrackError, Tracker};

/// Result of one seal.
pub struct Sealed {
    pub seal_id: u64,
    pub time_ns: u64,
    pub disks: Vec<SealedLog>,
    /// Disks whose seal failed (their active log keeps going).
    pub errors: Vec<TrackError>,
}

struct Swapped {
    disk: Arc<Disk>,
    old: LogWriter,
    file: String,
    touched: HashSet<u64>,
    mode: DiskMode,
}

/// Seals every disk of the mount at one instant.
pub fn seal_all(tracker: &Tracker) -> Sealed {
    let mut last_id = tracker.seal_state.lock().unwrap_or_else(|p| p.into_inner());
    let disks = tracker.disks();
    let root = tracker.root_path().to_path_buf();
    // Flush the logs' data before taking the locks, so the seal's own syncs are short.
    for d in &disks {
        let path = naming::active_log_path(&root.join(d.name()));
        if let Ok(f) = std::fs::File::open(&path) {
            let _ = f.sync_data();
        }
    }
    let mut swapped = Vec::new();
    let mut errors = Vec::new();
    // Seal ids are monotonic across restarts: wall clock in microseconds, bumped if needed.
    let time_ns = hrl::now_ns();
    let seal_id = (time_ns / 1000).max(*last_id + 1);
    *last_id = seal_id;
    {
        let mut guards: Vec<_> = disks.iter().map(|d| d.lock()).collect();
        let started = std::time::Instant::now();
        for (d, st) in disks.iter().zip(guards.iter_mut()) {
            match swap(&root, st, seal_id) {
                Ok(Some((old, file, touched))) => swapped.push(Swapped {
                    disk: d.clone(),
                    old,
                    file,
                    touched,
                    mode: st.mode,
                }),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        tracing::debug!(
            disks = disks.len(),
            held_us = started.elapsed().as_micros() as u64,
            "seal swap"
        );
    }
    let mut out = Vec::new();
    for s in swapped {
        let name = s.disk.name();
        let path = root.join(&s.file);
        let res = s
            .old
            .seal()
            .and_then(|_| verify_sealed(&path, None))
            .map_err(TrackError::from);
        match res {
            Ok(v) => {
                let entry = SealedLog {
                    disk: name.clone(),
                    disk_id: hrl::to_hex(&v.header.disk_id),
                    generation: v.header.generation,
                    seq: v.header.sequence,
                    log: s.file.clone(),
                    bytes: v.file_len,
                    hash: hrl::to_hex(&v.seal.hash),
                    prev_hash: hrl::to_hex(&v.header.prev_hash),
                    records: v.seal.records,
                    disk_size: v.header.disk_size.max(s.disk.image_size().unwrap_or(0)),
                    mode: s.mode,
                };
                // The interval's log is durable; once the image is too, its marks can go.
                match s.disk.sync_image() {
                    Ok(()) => {
                        if let Err(e) = s.disk.clear_sealed(s.touched) {
                            tracing::warn!(disk = %name, error = %e, "cannot clear sealed marks");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(disk = %name, error = %e, "cannot sync image after seal")
                    }
                }
                s.disk.lock().pending.push(entry.clone());
                out.push(entry);
            }
            Err(e) => errors.push(TrackError::SealFailed {
                disk: name,
                reason: e.to_string(),
            }),
        }
    }
    Sealed {
        seal_id,
        time_ns,
        disks: out,
        errors,
    }
}

/// Under the disk's lock: moves the active log to its sealed name and opens the next one,
/// which names the sealed log's hash.
fn swap(
    root: &Path,
    st: &mut crate::disk::DiskState,
    seal_id: u64,
) -> Result<Option<(LogWriter, String, HashSet<u64>)>, TrackError> {
    let Some(mut old) = st.log.take() else {
        return Ok(None);
    };
    let h = old.header().clone();
    let disk_path = root.join(&st.name);
    let file = naming::sealed_log_path(Path::new(&st.name), h.sequence)
        .to_string_lossy()
        .into_owned();
    let sealed_path = root.join(&file);
    let fail = |reason: String| TrackError::SealFailed {
        disk: st.name.clone(),
        reason,
    };
    if sealed_path.exists() {
        st.log = Some(old);
        return Err(fail(format!("{file} already exists; move it away")));
    }
    let mut next = LogHeader::new(
        h.disk_id,
        h.generation,
        h.sequence + 1,
        st.size,
        old.seal_hash(),
    );
    next.block_size = h.block_size;
    let active = naming::active_log_path(&disk_path);
    if let Err(e) = old.rename_to(&sealed_path) {
        st.log = Some(old);
        return Err(fail(e.to_string()));
    }
    match LogWriter::create(&active, &next) {
        Ok(w) => {
            st.log = Some(w);
            let touched = Disk::begin_interval(st, seal_id);
            Ok(Some((old, file, touched)))
        }
        Err(e) => {
            let msg = e.to_string();
            if let Err(back) = old.rename_to(&active) {
                tracing::error!(error = %back, "cannot move the log back after a failed seal");
            }
            st.log = Some(old);
            Err(fail(msg))
        }
    }
}
