//! The persistent dirty bitmap of a disk: one bit per extent that may differ from what the
//! replica plus the unshipped logs describe. Memory-mapped, so a mark survives the death of
//! the process as soon as it is made, and survives a power cut once flushed. A clean-shutdown
//! flag tells the next user whether the previous one stopped cleanly.
//!
//! It also carries what vouches for the image while nothing tracks it: the image's stamp
//! (size, mtime, ctime) as of the tracker's last change to it — kept current while tracking,
//! so it survives a killed tracker — and, from a clean stop, where the active log ended.
//!
//! File layout: a 4 KiB header (magic `hrl-bmp\0`, version u16, extent size u32 at 12,
//! disk size u64 at 16, bit count u64 at 24, clean flag u8 at 32, image stamp flag u8 at 33,
//! closed log flag u8 at 34, standing
//! report flag u8 at 35, image size / mtime ns / ctime ns u64 at 40 / 48 / 56, closed
//! log sequence / length u64 at 64 / 72 and its running hash at 80..112), then the bits,
//! LSB first.

use std::path::{Path, PathBuf};

use bitvec::prelude::*;
use memmap2::MmapMut;

const MAGIC: [u8; 8] = *b"hrl-bmp\0";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 4096;
const CLEAN_OFFSET: usize = 32;
const STAMP_FLAG_OFFSET: usize = 33;
const LOG_FLAG_OFFSET: usize = 34;
const REPORT_FLAG_OFFSET: usize = 35;
const STAMP_OFFSET: usize = 40;
const LOG_OFFSET: usize = 64;

/// What the image looked like after the tracker's last change to it (kept current while
/// tracking, written again at a clean stop). A different stamp at the next start means the
/// image was changed while nothing tracked it (ctime cannot be set back by tools that copy or
/// touch files, so it catches edits that restore the mtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageStamp {
    pub size: u64,
    pub mtime_ns: u64,
    pub ctime_ns: u64,
}

impl ImageStamp {
    /// The stamp of an image from its metadata.
    pub fn of(md: &std::fs::Metadata) -> ImageStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| {
            (s.max(0) as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(n.max(0) as u64)
        };
        ImageStamp {
            size: md.size(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        }
    }
}

/// Where the active log ended at a clean stop: the next start must find exactly this log
/// (same sequence, length and running hash), else the changes it held are unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedLog {
    pub seq: u64,
    pub len: u64,
    pub hash: [u8; 32],
}

/// What a clean close records beside the clean flag.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanClose {
    /// The image as it is now (None: keep the stamp of the last tracked change).
    pub stamp: Option<ImageStamp>,
    /// Where the active log ended.
    pub log: Option<ClosedLog>,
    /// An unclean report is still standing (no resync cleared it): report the marks again.
    pub report_stands: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BitmapError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: not a valid dirty bitmap: {reason}; move it aside and resync the disk")]
    Bad { path: PathBuf, reason: String },
    #[error("extent size {0} is not a power of two of at least 512 bytes")]
    BadExtentSize(u32),
}

/// A disk's dirty bitmap, mapped from its file.
pub struct DirtyBitmap {
    path: PathBuf,
    file: std::fs::File,
    map: MmapMut,
    extent_size: u32,
    disk_size: u64,
    /// The stamp the previous user left (after its last change, or at its clean close).
    found_stamp: Option<ImageStamp>,
    /// The active log the previous user's clean close recorded.
    found_log: Option<ClosedLog>,
    /// The previous user closed with an unclean report still standing (not yet resynced).
    report_stands: bool,
    /// The stamp kept in the header now (rewritten with every header write).
    stamp: Option<ImageStamp>,
    /// The file did not exist (or was empty): no marks from anyone before.
    created: bool,
}

fn bits_for(disk_size: u64, extent: u32) -> u64 {
    disk_size.div_ceil(u64::from(extent))
}

/// Gives `file` the blocks of `[from, to)` and the length `to`, before anything maps them:
/// a mapped page the filesystem cannot back kills the process with SIGBUS at the first
/// store, while a reservation that does not fit fails here with ENOSPC. Filesystems without
/// fallocate get the range past the old end written with zeros (which fails the same way).
fn reserve(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    if to <= from {
        return Ok(());
    }
    let old_len = file.metadata()?.len();
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, from as i64, (to - from) as i64) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        // Whatever was allocated beyond the old end goes again; the length stays.
        let _ = file.set_len(old_len);
        return Err(e);
    }
    // Zeros only past the old end: what is there already is the bitmap.
    let zeros = vec![0u8; 1 << 16];
    let mut at = from.max(old_len);
    while at < to {
        let n = (to - at).min(zeros.len() as u64) as usize;
        if let Err(e) = file.write_all_at(&zeros[..n], at) {
            let _ = file.set_len(old_len);
            return Err(e);
        }
        at += n as u64;
    }
    Ok(())
}

fn file_len_for(bits: u64) -> u64 {
    // Room for at least one more byte of bits, rounded up to whole pages.
    (HEADER_LEN as u64 + bits.div_ceil(8).max(1)).div_ceil(4096) * 4096
}

/// What an existing bitmap's header says (or what a new one starts with).
struct FoundHeader {
    extent_size: u32,
    disk_size: u64,
    /// The last tracker closed it cleanly.
    clean: bool,
    stamp: Option<ImageStamp>,
    log: Option<ClosedLog>,
    report_stands: bool,
}

impl FoundHeader {
    fn fresh(extent_size: u32, disk_size: u64, clean: bool) -> FoundHeader {
        FoundHeader {
            extent_size,
            disk_size,
            clean,
            stamp: None,
            log: None,
            report_stands: false,
        }
    }

    /// Checks and decodes the header of a `len`-byte bitmap file.
    fn parse(path: &Path, h: &[u8; 112], len: u64) -> Result<FoundHeader, BitmapError> {
        let bad = |reason: String| BitmapError::Bad {
            path: path.to_path_buf(),
            reason,
        };
        if len < HEADER_LEN as u64 {
            return Err(bad(format!("file is {len} bytes, shorter than its header")));
        }
        if h[0..8] != MAGIC || u16::from_le_bytes([h[8], h[9]]) != VERSION {
            return Err(bad("bad magic or version".into()));
        }
        let es = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let ds = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
        if !es.is_power_of_two() || es < 512 || file_len_for(bits_for(ds, es)) > len {
            return Err(bad(format!(
                "extent size {es} / disk size {ds} do not fit a {len}-byte file"
            )));
        }
        let word = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap_or_default());
        let clean = h[CLEAN_OFFSET] == 1;
        let stamp = (h[STAMP_FLAG_OFFSET] == 1).then(|| ImageStamp {
            size: word(STAMP_OFFSET),
            mtime_ns: word(STAMP_OFFSET + 8),
            ctime_ns: word(STAMP_OFFSET + 16),
        });
        let log = (h[LOG_FLAG_OFFSET] == 1).then(|| ClosedLog {
            seq: word(LOG_OFFSET),
            len: word(LOG_OFFSET + 8),
            hash: h[LOG_OFFSET + 16..LOG_OFFSET + 48]
                .try_into()
                .unwrap_or_default(),
        });
        Ok(FoundHeader {
            extent_size: es,
            disk_size: ds,
            clean,
            stamp,
            log,
            report_stands: clean && h[REPORT_FLAG_OFFSET] == 1,
        })
    }
}

impl DirtyBitmap {
    /// Opens the bitmap at `path`, creating it if missing. Returns whether the previous user
    /// closed it cleanly (a new bitmap counts as clean), and marks it in use.
    /// An existing bitmap keeps its own extent size.
    pub fn open(
        path: &Path,
        extent_size: u32,
        disk_size: u64,
    ) -> Result<(DirtyBitmap, bool), BitmapError> {
        if !extent_size.is_power_of_two() || extent_size < 512 {
            return Err(BitmapError::BadExtentSize(extent_size));
        }
        let io = |op| {
            move |source| BitmapError::Io {
                path: path.to_path_buf(),
                op,
                source,
            }
        };
        let file = crate::sidecar::open_or_create(path).map_err(io("open bitmap"))?;
        let len = file.metadata().map_err(io("stat bitmap"))?.len();
        let mut header = [0u8; 112];
        if len >= HEADER_LEN as u64 {
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0)
                .map_err(io("read bitmap header"))?;
        }
        // A header of zeros: the bitmap was being created when its filesystem ran out of
        // space (or the process died). It vouches for nothing: start over, every extent
        // marked, reported as an unclean stop (the whole disk is compared).
        let untrusted = len > 0 && header.iter().all(|b| *b == 0);
        if untrusted {
            tracing::warn!(path = %path.display(), "the dirty bitmap has an empty header; it vouches for nothing, the whole disk is marked");
        }
        let found = if len == 0 || untrusted {
            if let Err(e) = reserve(&file, 0, file_len_for(bits_for(disk_size, extent_size))) {
                if len == 0 {
                    let _ = std::fs::remove_file(path);
                }
                return Err(io("reserve bitmap")(e));
            }
            FoundHeader::fresh(extent_size, disk_size, !untrusted)
        } else {
            let found = FoundHeader::parse(path, &header, len)?;
            // Bitmaps written sparse (by older versions) get their holes filled now.
            if let Err(e) = reserve(&file, 0, len) {
                tracing::warn!(path = %path.display(), error = %e, "cannot reserve the dirty bitmap's blocks");
            }
            found
        };
        let FoundHeader {
            extent_size,
            disk_size: existing_size,
            clean: was_clean,
            stamp: found_stamp,
            log: found_log,
            report_stands,
        } = found;
        // SAFETY: the file is hrl's own and only this process maps it for writing; the length
        // is fixed while the map lives (resize remaps).
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io("map bitmap"))?;
        let mut bm = DirtyBitmap {
            path: path.to_path_buf(),
            file,
            map,
            extent_size,
            disk_size: existing_size,
            found_stamp,
            found_log,
            report_stands,
            stamp: None,
            created: len == 0,
        };
        if untrusted {
            bm.bits_mut().fill(true);
        }
        bm.write_header(false, None);
        bm.flush()?;
        if disk_size > existing_size {
            bm.resize(disk_size)?;
        }
        Ok((bm, was_clean))
    }

    fn write_header(&mut self, clean: bool, close: Option<CleanClose>) {
        let (log, stands) = close.map_or((None, false), |c| (c.log, c.report_stands));
        let stamp = self.stamp;
        let h = &mut self.map[..HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.extent_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.disk_size.to_le_bytes());
        h[24..32].copy_from_slice(&bits_for(self.disk_size, self.extent_size).to_le_bytes());
        h[CLEAN_OFFSET] = u8::from(clean);
        h[STAMP_FLAG_OFFSET] = u8::from(stamp.is_some());
        let st = stamp.unwrap_or(ImageStamp {
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        });
        h[STAMP_OFFSET..STAMP_OFFSET + 8].copy_from_slice(&st.size.to_le_bytes());
        h[STAMP_OFFSET + 8..STAMP_OFFSET + 16].copy_from_slice(&st.mtime_ns.to_le_bytes());
        h[STAMP_OFFSET + 16..STAMP_OFFSET + 24].copy_from_slice(&st.ctime_ns.to_le_bytes());
        h[LOG_FLAG_OFFSET] = u8::from(log.is_some());
        h[REPORT_FLAG_OFFSET] = u8::from(stands);
        let log = log.unwrap_or(ClosedLog {
            seq: 0,
            len: 0,
            hash: [0; 32],
        });
        h[LOG_OFFSET..LOG_OFFSET + 8].copy_from_slice(&log.seq.to_le_bytes());
        h[LOG_OFFSET + 8..LOG_OFFSET + 16].copy_from_slice(&log.len.to_le_bytes());
        h[LOG_OFFSET + 16..LOG_OFFSET + 48].copy_from_slice(&log.hash);
    }

    /// The image stamp the previous user left: as of its last change to the image (even if
    /// it was killed) or its clean close. None for a new bitmap or one from before stamps.
    pub fn found_stamp(&self) -> Option<ImageStamp> {
        self.found_stamp
    }

    /// The active log the previous user's close recorded (None if it was killed first).
    pub fn found_log(&self) -> Option<ClosedLog> {
        self.found_log
    }

    /// The previous user stopped cleanly with an unclean report still standing: its marks
    /// are to be reported again.
    pub fn report_stands(&self) -> bool {
        self.report_stands
    }

    /// True if this open created the bitmap: nobody's marks are in it.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Keeps `stamp` in the header as the image's state after the latest tracked change.
    /// A plain store into the mapped header: it survives a killed process at once; a power
    /// cut may lose it, which only makes the next start distrust the image (never trust it).
    pub fn set_stamp(&mut self, stamp: ImageStamp) {
        self.stamp = Some(stamp);
        let h = &mut self.map[..HEADER_LEN];
        h[STAMP_OFFSET..STAMP_OFFSET + 8].copy_from_slice(&stamp.size.to_le_bytes());
        h[STAMP_OFFSET + 8..STAMP_OFFSET + 16].copy_from_slice(&stamp.mtime_ns.to_le_bytes());
        h[STAMP_OFFSET + 16..STAMP_OFFSET + 24].copy_from_slice(&stamp.ctime_ns.to_le_bytes());
        h[STAMP_FLAG_OFFSET] = 1;
    }

    /// The stamp kept now (see [`DirtyBitmap::set_stamp`]).
    pub fn stamp(&self) -> Option<ImageStamp> {
        self.stamp
    }

    fn bits(&self) -> &BitSlice<u8, Lsb0> {
        let n = bits_for(self.disk_size, self.extent_size) as usize;
        &self.map[HEADER_LEN..].view_bits::<Lsb0>()[..n]
    }

    fn bits_mut(&mut self) -> &mut BitSlice<u8, Lsb0> {
        let n = bits_for(self.disk_size, self.extent_size) as usize;
        &mut self.map[HEADER_LEN..].view_bits_mut::<Lsb0>()[..n]
    }

    pub fn extent_size(&self) -> u32 {
        self.extent_size
    }
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// Bit range covering bytes `[offset, offset+len)`, clipped to the mapped disk size.
    fn bit_range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let es = u64::from(self.extent_size);
        let n = bits_for(self.disk_size, self.extent_size);
        let first = (offset / es).min(n);
        let last = offset.saturating_add(len).div_ceil(es).min(n);
        first as usize..last as usize
    }

    /// Marks the extents covering `[offset, offset+len)`, growing the bitmap if the range ends
    /// past the disk size. Returns true if any bit was newly set (then the caller flushes
    /// before letting the data reach the image).
    pub fn mark(&mut self, offset: u64, len: u64) -> Result<bool, BitmapError> {
        if len == 0 {
            return Ok(false);
        }
        let end = offset.saturating_add(len);
        if end > self.disk_size {
            self.resize(end)?;
        }
        let r = self.bit_range(offset, len);
        let bits = &mut self.bits_mut()[r];
        if bits.all() {
            return Ok(false);
        }
        bits.fill(true);
        Ok(true)
    }

    /// True if any extent of the range is marked.
    pub fn is_marked(&self, offset: u64, len: u64) -> bool {
        let r = self.bit_range(offset, len);
        self.bits()[r].any()
    }

    /// Clears the extents lying wholly inside `[offset, offset+len)`.
    pub fn clear(&mut self, offset: u64, len: u64) {
        let es = u64::from(self.extent_size);
        let first = offset.div_ceil(es);
        let end = offset.saturating_add(len);
        // An extent that ends at the disk end counts as whole when the range reaches it.
        let last = if end >= self.disk_size {
            bits_for(self.disk_size, self.extent_size)
        } else {
            end / es
        };
        if first < last {
            self.bits_mut()[first as usize..last as usize].fill(false);
        }
    }

    pub fn clear_all(&mut self) {
        self.bits_mut().fill(false);
    }

    /// Number of marked extents.
    pub fn count(&self) -> usize {
        self.bits().count_ones()
    }

    /// Marked extents as merged byte ranges `(offset, len)`, clipped to the disk size.
    pub fn dirty_extents(&self) -> Vec<(u64, u64)> {
        let es = u64::from(self.extent_size);
        let bits = self.bits();
        let mut out = Vec::new();
        let mut i = 0usize;
        while let Some(start) = bits[i..].first_one().map(|s| s + i) {
            let end = bits[start..].first_zero().map_or(bits.len(), |z| z + start);
            let off = start as u64 * es;
            let stop = (end as u64 * es).min(self.disk_size);
            out.push((off, stop - off));
            i = end;
        }
        out
    }

    /// Grows (never shrinks: marks past a shrink stay meaningful) to cover `disk_size`.
    pub fn resize(&mut self, disk_size: u64) -> Result<(), BitmapError> {
        if disk_size <= self.disk_size {
            return Ok(());
        }
        let need = file_len_for(bits_for(disk_size, self.extent_size));
        let io = |op| {
            let path = self.path.clone();
            move |source| BitmapError::Io { path, op, source }
        };
        let have = self.file.metadata().map_err(io("stat bitmap"))?.len();
        if need > have {
            self.map.flush().map_err(io("flush bitmap"))?;
            // Grow in steps so a disk that grows write by write does not remap every time;
            // the blocks are reserved before they are mapped (ENOSPC here, never SIGBUS).
            if reserve(&self.file, have, need.max(have * 2)).is_err() {
                reserve(&self.file, have, need).map_err(io("grow bitmap"))?;
            }
            // SAFETY: as in `open`; the old map is dropped on assignment.
            self.map = unsafe { MmapMut::map_mut(&self.file) }.map_err(io("remap bitmap"))?;
        }
        self.disk_size = disk_size;
        self.write_header(false, None);
        Ok(())
    }

    /// Makes the marks durable (msync).
    pub fn flush(&self) -> Result<(), BitmapError> {
        self.map.flush().map_err(|source| BitmapError::Io {
            path: self.path.clone(),
            op: "flush bitmap",
            source,
        })
    }

    /// Records a clean shutdown: the marks stay, and the next `open` reports a clean stop.
    pub fn close_clean(self) -> Result<(), BitmapError> {
        self.close_clean_with(CleanClose::default())
    }

    /// Records a clean shutdown, what the image looks like now and where its active log
    /// ended, so that the next user can tell whether either was changed in between.
    pub fn close_clean_with(mut self, close: CleanClose) -> Result<(), BitmapError> {
        if let Some(s) = close.stamp {
            self.stamp = Some(s);
        }
        self.write_header(true, Some(close));
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_persist_and_clean_flag_reports_crash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.img.hrl-bitmap");
        let (mut bm, clean) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert!(clean);
        assert!(bm.mark(5000, 10).unwrap());
        assert!(!bm.mark(4096, 100).unwrap(), "already marked");
        assert!(bm.mark(3 * 4096 - 1, 2).unwrap());
        assert_eq!(bm.dirty_extents(), vec![(4096, 3 * 4096)]);
        drop(bm); // no clean close: like a killed process
        let (bm, clean) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert!(!clean, "an unclean stop must be reported");
        assert_eq!(bm.dirty_extents(), vec![(4096, 3 * 4096)]);
        bm.close_clean().unwrap();
        let (mut bm, clean) = DirtyBitmap::open(&p, 65536, 1 << 20).unwrap();
        assert!(clean);
        assert_eq!(
            bm.extent_size(),
            4096,
            "an existing bitmap keeps its extent size"
        );
        bm.clear(4096, 4096);
        assert_eq!(bm.dirty_extents(), vec![(8192, 2 * 4096)]);
        bm.clear_all();
        assert!(bm.dirty_extents().is_empty());
    }

    #[test]
    fn the_stamp_survives_a_crash_and_the_closed_log_only_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let stamp = |n| ImageStamp {
            size: n,
            mtime_ns: n + 1,
            ctime_ns: n + 2,
        };
        let log = ClosedLog {
            seq: 3,
            len: 4096 + 77,
            hash: [9; 32],
        };
        let (bm, _) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert!(bm.created());
        assert_eq!(bm.found_stamp(), None);
        bm.close_clean_with(CleanClose {
            stamp: Some(stamp(5)),
            log: Some(log),
            report_stands: true,
        })
        .unwrap();
        let (mut bm, clean) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert!(clean && !bm.created());
        assert_eq!(bm.found_stamp(), Some(stamp(5)));
        assert_eq!(bm.found_log(), Some(log));
        assert!(bm.report_stands());
        bm.set_stamp(stamp(6));
        bm.resize(4 << 20).unwrap(); // a header rewrite keeps the stamp
        drop(bm); // a crash: the latest stamp stays, the closed log no longer vouches
        let (bm, clean) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert!(!clean && !bm.report_stands());
        assert_eq!(bm.found_stamp(), Some(stamp(6)));
        assert_eq!(bm.found_log(), None);
        drop(bm); // killed before anything set a stamp: none is found
        let (bm, _) = DirtyBitmap::open(&p, 4096, 1 << 20).unwrap();
        assert_eq!(bm.found_stamp(), None);
    }

    #[test]
    fn a_zero_header_is_untrusted_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("z");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let (bm, clean) = DirtyBitmap::open(&p, 4096, 5 * 4096 + 1).unwrap();
        assert!(!clean, "a zero header is not a clean stop");
        assert_eq!(bm.dirty_extents(), vec![(0, 5 * 4096 + 1)]);
        drop(bm);
        // Any other bad header is still refused.
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        assert!(matches!(
            DirtyBitmap::open(&p, 4096, 4096),
            Err(BitmapError::Bad { .. })
        ));
    }

    #[test]
    fn grows_with_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let (mut bm, _) = DirtyBitmap::open(&p, 512, 1000).unwrap();
        assert!(bm.mark(10 << 20, 1).unwrap());
        assert_eq!(bm.disk_size(), (10 << 20) + 1);
        assert!(bm.is_marked(10 << 20, 1));
        assert_eq!(bm.dirty_extents(), vec![(10 << 20, 1)]);
        assert!(DirtyBitmap::open(&p, 1000, 1).is_err());
    }
}
