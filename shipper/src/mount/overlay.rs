//! The copy-on-write overlay of one disk: a sparse local file the size of the disk and a
//! map of which 4 KiB granules were written through the mount. Written granules are read
//! from the file, the rest from the point; the store is never written. Removed with the
//! mount's scratch directory.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use super::error::{MountError, MountResult};

/// Overlay granule: a write smaller than this copies the rest of the granule from the point.
pub const GRANULE: u64 = 4096;

pub struct Overlay {
    file: File,
    /// One bit per granule: written.
    map: Mutex<Vec<u64>>,
}

/// A run of granules `[offset, offset + len)` that is all in the overlay or all not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    pub written: bool,
}

impl Overlay {
    /// A new, empty overlay for a disk of `size` bytes at `path` (must not exist).
    pub fn create(path: &Path, size: u64) -> MountResult<Overlay> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| MountError::local(format!("create overlay {}", path.display()), e))?;
        file.set_len(size)
            .map_err(|e| MountError::local(format!("size overlay {}", path.display()), e))?;
        let granules = size.div_ceil(GRANULE);
        Ok(Overlay {
            file,
            map: Mutex::new(vec![0; granules.div_ceil(64) as usize]),
        })
    }

    fn bits(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_written(&self, granule: u64) -> bool {
        let m = self.bits();
        m.get((granule / 64) as usize)
            .is_some_and(|w| w & (1 << (granule % 64)) != 0)
    }

    /// `[offset, offset + len)` split into runs of written and unwritten granules.
    pub fn runs(&self, offset: u64, len: u64) -> Vec<Run> {
        let end = offset + len;
        let mut out: Vec<Run> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let g = pos / GRANULE;
            let next = ((g + 1) * GRANULE).min(end);
            let written = self.is_written(g);
            match out.last_mut() {
                Some(r) if r.written == written => r.len += next - pos,
                _ => out.push(Run {
                    offset: pos,
                    len: next - pos,
                    written,
                }),
            }
            pos = next;
        }
        out
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> MountResult<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| MountError::local("read overlay", e))
    }

    /// Writes whole granules at `offset` (granule-aligned; the caller filled partial
    /// granules from the point) and marks them written once they are in the file.
    pub fn write_granules(&self, offset: u64, data: &[u8]) -> MountResult<()> {
        debug_assert_eq!(offset % GRANULE, 0);
        self.file
            .write_all_at(data, offset)
            .map_err(|e| MountError::local("write overlay", e))?;
        let mut m = self.bits();
        let first = offset / GRANULE;
        for g in first..first + (data.len() as u64).div_ceil(GRANULE) {
            if let Some(w) = m.get_mut((g / 64) as usize) {
                *w |= 1 << (g % 64);
            }
        }
        Ok(())
    }

    pub fn sync(&self) -> MountResult<()> {
        self.file
            .sync_data()
            .map_err(|e| MountError::local("sync overlay", e))
    }

    /// Bytes written through the mount (granules).
    pub fn written_bytes(&self) -> u64 {
        self.bits()
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
            * GRANULE
    }
}
