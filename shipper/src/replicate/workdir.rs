//! The scratch directory of a group's cycles (`<state dir>/work/<group>/`): coalesced and
//! compressed logs on their way up, replica rebuilds of a resync. Nothing in it outlives a
//! cycle, so each cycle starts by emptying it: what a killed cycle left there (a 72 MiB
//! compressed log, a half-rebuilt replica) does not stay on the host forever.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::info;

/// Creates the group's scratch directory, emptied; call it holding the cycle lock.
pub fn fresh(state_dir: &Path, group: &str) -> Result<PathBuf> {
    let top = state_dir.join("work");
    let work = top.join(group);
    std::fs::create_dir_all(&work)
        .with_context(|| format!("create work directory {}", work.display()))?;
    let mut freed = 0u64;
    for entry in std::fs::read_dir(&work).with_context(|| format!("read {}", work.display()))? {
        freed += remove(
            &entry
                .with_context(|| format!("read {}", work.display()))?
                .path(),
        );
    }
    // Files of this group left at the top by versions before the per-group directory.
    let legacy = format!("{group}-");
    if let Ok(entries) = std::fs::read_dir(&top) {
        for e in entries.flatten() {
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if is_file && e.file_name().to_string_lossy().starts_with(&legacy) {
                freed += remove(&e.path());
            }
        }
    }
    if freed > 0 {
        info!(dir = %work.display(), bytes = freed, "removed what an interrupted cycle left in the work directory");
    }
    Ok(work)
}

/// Removes a file or directory tree; returns the bytes of the files removed.
fn remove(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_dir() {
        let bytes = std::fs::read_dir(path)
            .map(|es| es.flatten().map(|e| remove(&e.path())).sum())
            .unwrap_or(0);
        if let Err(e) = std::fs::remove_dir(path) {
            tracing::warn!(path = %path.display(), "cannot remove: {e}");
        }
        bytes
    } else {
        match std::fs::remove_file(path) {
            Ok(()) => meta.len(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove: {e}");
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_starts_with_an_empty_work_directory() {
        let state = tempfile::tempdir().unwrap();
        let w = fresh(state.path(), "vm1").unwrap();
        std::fs::write(w.join("vm1-abc-3-4.hrl.zst"), vec![1u8; 4096]).unwrap();
        std::fs::create_dir_all(w.join("replica-x")).unwrap();
        std::fs::write(w.join("replica-x/replica.img"), b"x").unwrap();
        let top = state.path().join("work");
        std::fs::write(top.join("vm1-abc-1-2.hrl"), b"old").unwrap();
        std::fs::write(top.join("vm2-abc-1-2.hrl"), b"other group").unwrap();
        let again = fresh(state.path(), "vm1").unwrap();
        assert_eq!(again, w);
        assert_eq!(std::fs::read_dir(&w).unwrap().count(), 0);
        assert!(!top.join("vm1-abc-1-2.hrl").exists());
        assert!(
            top.join("vm2-abc-1-2.hrl").exists(),
            "another group's file was removed"
        );
    }
}
