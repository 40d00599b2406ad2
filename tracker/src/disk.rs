//! Per-disk change tracking: the active log and the dirty bitmap of one disk image, under one
//! lock, and the write path that keeps the invariant *never a change on the image without its
//! record*: mark the bitmap (made durable when a bit is newly set) -> append the log record ->
//! change the image -> answer the writer.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use hrl::bitmap::{BitmapError, CleanClose, ClosedLog, DirtyBitmap, ImageStamp};
use hrl::control::{DiskMode, DiskStatus, SealedLog};
use hrl::log::{verify_sealed, LogError, LogHeader, LogWriter, VerifiedLog};
use hrl::naming;
use rangemap::RangeSet;

use crate::core::TrackedFile;
use crate::error::TrackError;
use crate::sys::{self, BackingKey};

/// Bitmap extent size: the granularity of crash resync. Each newly marked extent costs a
/// synchronous bitmap flush before the write proceeds, so extents are large (as DRBD's
/// activity-log extents are).
pub const EXTENT_SIZE: u32 = 4 << 20;

/// How many past seal intervals remember which extents they touched (for `clear`).
const HISTORY: usize = 256;

/// Most bytes of changes held in memory while a seal swaps a disk's logs; writers beyond it
/// wait for the swap to finish.
const SWAP_BUFFER_LIMIT: usize = 32 << 20;

/// A change to record: appended to the active log, or held in memory during a log swap.
#[derive(Debug, Clone)]
pub enum Change {
    Write { offset: u64, data: Vec<u8> },
    Truncate { size: u64 },
    Zero { offset: u64, len: u64 },
    Punch { offset: u64, len: u64 },
    Rename { name: String },
    Delete,
}

impl Change {
    fn bytes(&self) -> usize {
        64 + match self {
            Change::Write { data, .. } => data.len(),
            Change::Rename { name } => name.len(),
            _ => 0,
        }
    }

    /// Appends this change to `log`.
    pub fn append_to(&self, log: &mut LogWriter) -> Result<(), LogError> {
        match self {
            Change::Write { offset, data } => log.append_write(*offset, data),
            Change::Truncate { size } => log.append_truncate(*size),
            Change::Zero { offset, len } => log.append_zero(*offset, *len),
            Change::Punch { offset, len } => log.append_punch(*offset, *len),
            Change::Rename { name } => log.append_rename(name),
            Change::Delete => log.append_delete(),
        }
    }
}

fn log_err(e: LogError) -> io::Error {
    tracing::error!(error = %e, "log append failed; refusing the change");
    io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO))
}

fn bitmap_err(e: BitmapError) -> io::Error {
    tracing::error!(error = %e, "dirty bitmap update failed; refusing the change");
    match e {
        BitmapError::Io { source, .. } => {
            io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(libc::EIO))
        }
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

/// The mutable state of a tracked disk (only this module changes it).
struct DiskState {
    /// File name in the mount root.
    name: String,
    /// The active log (None once the disk is retired: deleted or renamed away).
    log: Option<LogWriter>,
    bitmap: Option<DirtyBitmap>,
    mode: DiskMode,
    /// Current image size as the tracker knows it.
    size: u64,
    /// Extents touched through the log since the last seal (cleared after that seal).
    touched_log: HashSet<u64>,
    /// Extents touched through the log in the interval before (still hot: kept marked one
    /// more interval so that a working set is not re-marked, and re-flushed, every seal).
    prev_touched_log: HashSet<u64>,
    /// Extents touched in any mode since the seal that started this interval.
    touched_all: HashSet<u64>,
    /// Seal id that started the current interval.
    interval_start: u64,
    /// Past intervals: (seal id that started it, extents touched in it).
    history: Vec<(u64, HashSet<u64>)>,
    /// Marks that only `clear` removes: bitmap-mode changes and what a crash left.
    held: HashSet<u64>,
    /// Ranges reported as possibly different after an unclean stop.
    unclean: Vec<(u64, u64)>,
    torn_at: Option<u64>,
    /// Sealed logs not acked yet, in sequence order.
    pending: Vec<SealedLog>,
    /// While a seal swaps this disk's logs (outside the locks), changes wait here in order;
    /// the seal appends them to the new log. Every one of them is marked in the bitmap.
    swap_buffer: Option<Vec<Change>>,
    swap_bytes: usize,
    /// The disk is gone (deleted or renamed away); its logs belong to the retired list.
    retired: bool,
    /// For the operator (status), until the shipper has cleared the marks (`clear`): a log
    /// set aside at startup.
    warnings: Vec<String>,
    /// For the operator, for as long as the mount lives: extra hard links.
    lasting_warnings: Vec<String>,
    /// Why the image is known to have changed outside the tracker (until `clear`).
    changed_outside: Option<String>,
    /// A change outside the tracker was found since the last seal (reported by the next).
    outside_unsealed: bool,
    /// Byte ranges known to have every block, so a write there needs no `fallocate` ahead
    /// (see [`Disk::reserve`]): whole extents found without a hole inside the image's size,
    /// and the ranges the tracker reserved, allocated or zeroed itself (such as the growing
    /// tail of a qcow2 image, whose extent is never whole while the file grows past it).
    /// Forgotten where the tracker punches, zeroes or cuts, and all of it on a change from
    /// outside. At most [`ALLOCATED_RANGES`] ranges.
    allocated: RangeSet<u64>,
}

/// Bound of [`DiskState::allocated`]: random writes into a sparse image leave one range
/// each; past this many the set starts again empty (a few KiB of memory, never more).
const ALLOCATED_RANGES: usize = 4096;

impl DiskState {
    /// Records `change` in the active log, or in the swap buffer during a seal. Writes with
    /// data are passed by reference and copied only when buffered.
    fn record(&mut self, change: ChangeRef<'_>) -> io::Result<()> {
        if self.mode != DiskMode::Log {
            return Ok(());
        }
        crate::metrics::recorded(
            matches!(change, ChangeRef::Write { .. }),
            change.logged_bytes(),
        );
        if let Some(buf) = self.swap_buffer.as_mut() {
            let owned = change.to_owned();
            self.swap_bytes += owned.bytes();
            buf.push(owned);
            return Ok(());
        }
        if let Some(log) = self.log.as_mut() {
            match change {
                ChangeRef::Write { offset, data } => log.append_write(offset, data),
                ChangeRef::Other(c) => c.append_to(log),
            }
            .map_err(log_err)?;
        }
        Ok(())
    }

    /// Logs the disk's removal or renaming (mode-independent: the shipper must know).
    fn record_lifecycle(&mut self, change: Change) -> io::Result<()> {
        if let Some(buf) = self.swap_buffer.as_mut() {
            self.swap_bytes += change.bytes();
            buf.push(change);
            return Ok(());
        }
        if let Some(log) = self.log.as_mut() {
            change.append_to(log).map_err(log_err)?;
        }
        Ok(())
    }

    /// Starts a log swap: changes are buffered until [`DiskState::finish_swap`].
    fn start_swap(&mut self) -> Option<LogWriter> {
        let old = self.log.take()?;
        self.swap_buffer = Some(Vec::new());
        self.swap_bytes = 0;
        Some(old)
    }

    /// Ends a log swap: the buffered changes go to `next` in order and it becomes active.
    /// Changes that cannot be appended stay marked and are reported unclean.
    fn finish_swap(&mut self, mut next: LogWriter) {
        let buffered = self.swap_buffer.take().unwrap_or_default();
        self.swap_bytes = 0;
        let mut failed: Option<LogError> = None;
        for c in &buffered {
            if failed.is_none() {
                if let Err(e) = c.append_to(&mut next) {
                    failed = Some(e);
                }
            }
            if failed.is_some() {
                if let Some((off, len)) = c.range(self.size) {
                    self.hold_range(off, len);
                }
            }
        }
        if let Some(e) = failed {
            tracing::error!(disk = %self.name, error = %e, "changes made during a seal could not be logged; their extents are held for resync");
        }
        self.log = Some(next);
    }

    /// `[off, end)` has every block (reserved, allocated or found so).
    fn note_allocated(&mut self, off: u64, end: u64) {
        if off >= end {
            return;
        }
        if self.allocated.len() >= ALLOCATED_RANGES {
            self.allocated.clear();
        }
        self.allocated.insert(off..end);
    }

    /// `[off, off+len)` may have holes again.
    fn forget_allocated(&mut self, off: u64, len: u64) {
        if len > 0 {
            self.allocated.remove(off..off.saturating_add(len));
        }
    }

    /// Nothing vouches for the image any more (changed behind the tracker's back, bitmap or
    /// log lost): marks the whole disk, holds it and reports it unclean, so the shipper
    /// compares every block.
    fn hold_range(&mut self, off: u64, len: u64) {
        let Some(bm) = self.bitmap.as_ref() else {
            return;
        };
        let es = u64::from(bm.extent_size());
        for e in off / es..off.saturating_add(len).div_ceil(es) {
            self.held.insert(e);
        }
        self.unclean.push((off, len));
    }
}

/// A change borrowed from the caller (writes are not copied unless buffered).
enum ChangeRef<'a> {
    Write { offset: u64, data: &'a [u8] },
    Other(Change),
}

impl ChangeRef<'_> {
    /// Bytes it takes in a log (for the counters).
    fn logged_bytes(&self) -> u64 {
        match self {
            ChangeRef::Write { data, .. } => 64 + data.len() as u64,
            ChangeRef::Other(c) => c.bytes() as u64,
        }
    }

    fn to_owned(&self) -> Change {
        match self {
            ChangeRef::Write { offset, data } => Change::Write {
                offset: *offset,
                data: data.to_vec(),
            },
            ChangeRef::Other(c) => c.clone(),
        }
    }
}

impl Change {
    /// The byte range a change touches (truncates: from the new size to the known size).
    fn range(&self, size: u64) -> Option<(u64, u64)> {
        match self {
            Change::Write { offset, data } => Some((*offset, data.len() as u64)),
            Change::Zero { offset, len } | Change::Punch { offset, len } => Some((*offset, *len)),
            Change::Truncate { size: s } => {
                let (lo, hi) = ((*s).min(size), (*s).max(size));
                Some((lo, hi - lo))
            }
            _ => None,
        }
    }
}

/// Where a disk's chain starts when it has no active log.
pub enum Start {
    /// After its last sealed log.
    Continue {
        last_seq: u64,
        prev: hrl::Digest,
        id: [u8; 16],
        generation: u64,
    },
    /// A new disk (new id); sequence numbers start at `first_seq`.
    Fresh { first_seq: u64 },
}

/// Reopens the active log (cutting a torn tail), or starts it where `start` says. Returns
/// the log, whether it was closed cleanly, and where a torn tail was cut.
fn open_active_log(
    active: &Path,
    exists: bool,
    start: Start,
    size: u64,
    name: &str,
) -> Result<(LogWriter, bool, Option<u64>), TrackError> {
    Ok(if exists {
        let (w, rec) = LogWriter::open_append(active)?;
        if let Some(at) = rec.torn_at {
            tracing::warn!(
                disk = name,
                offset = at,
                "cut a torn tail off the active log"
            );
        }
        (w, rec.was_clean, rec.torn_at)
    } else {
        let (seq, prev, id, generation) = match start {
            Start::Continue {
                last_seq,
                prev,
                id,
                generation,
            } => (last_seq + 1, prev, id, generation),
            Start::Fresh { first_seq } => {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id).map_err(|e| TrackError::Io {
                    what: "draw a disk id".into(),
                    source: io::Error::other(e.to_string()),
                })?;
                (first_seq, [0u8; 32], id, 1)
            }
        };
        let mut h = LogHeader::new(id, generation, seq, size, prev);
        h.block_size = EXTENT_SIZE;
        (LogWriter::create(active, &h)?, true, None)
    })
}

/// What a disk's files say at startup about changes nobody tracked.
struct Vouch<'a> {
    bitmap: &'a DirtyBitmap,
    /// The disk has a chain (an active log or sealed logs): it was tracked before.
    chain_exists: bool,
    /// The active log found (None: it was missing).
    log: Option<&'a LogWriter>,
    now: ImageStamp,
}

impl Vouch<'_> {
    /// Why nothing vouches for the image (every block may differ), or None.
    fn distrust(&self) -> Option<String> {
        let bm = self.bitmap;
        if bm.created() {
            // A disk that never had a chain gets a new id: the shipper copies it whole.
            return self.chain_exists.then(|| {
                "its dirty bitmap is missing, so nothing vouches for the changes since the last point".to_string()
            });
        }
        match bm.found_stamp() {
            None => return Some("its dirty bitmap holds no image stamp (written by a tracker that stopped before recording one)".into()),
            Some(then) if then != self.now => {
                return Some(format!(
                    "the image changed while it was not tracked (then {then:?}, now {:?})",
                    self.now
                ))
            }
            Some(_) => {}
        }
        let closed = bm.found_log()?;
        match self.log {
            None => Some(format!(
                "its active log (sequence {}) is gone; the changes it held are unknown",
                closed.seq
            )),
            Some(l)
                if l.header().sequence != closed.seq
                    || l.len() != closed.len
                    || l.seal_hash() != closed.hash =>
            {
                Some(format!(
                    "its active log is not the one the clean stop left (sequence {} of {} bytes, found sequence {} of {} bytes); the changes it held are unknown",
                    closed.seq,
                    closed.len,
                    l.header().sequence,
                    l.len()
                ))
            }
            Some(_) => None,
        }
    }
}

/// A disk held still for a seal's cut (its lock, no log swap in progress).
pub struct Held<'a> {
    st: MutexGuard<'a, DiskState>,
}

/// A disk's active log, cut by a seal: changes wait in the swap buffer until
/// [`Disk::resume`].
pub struct LogCut {
    pub old: LogWriter,
    /// The disk's name at the cut.
    pub name: String,
    pub mode: DiskMode,
    /// The image's size at the cut (what the sealed log leaves the disk at).
    pub size: u64,
}

impl Held<'_> {
    /// Cuts the active log and starts the seal interval `seal_id`; None when the disk has
    /// no active log.
    pub fn cut(&mut self, seal_id: u64) -> Option<LogCut> {
        let old = self.st.start_swap()?;
        Disk::begin_interval(&mut self.st, seal_id);
        Some(LogCut {
            old,
            name: self.st.name.clone(),
            mode: self.st.mode,
            size: self.st.size,
        })
    }
}

/// What a retired disk leaves behind.
pub struct Retired {
    /// Its sealed logs not acked yet (the last one included).
    pub pending: Vec<SealedLog>,
    /// Its bitmap's file name, to be removed.
    pub bitmap: Option<String>,
}

/// The control-protocol entry of the sealed, verified log `log` of `disk`.
pub fn sealed_entry(v: &VerifiedLog, disk: &str, log: &str, mode: DiskMode) -> SealedLog {
    SealedLog {
        disk: disk.to_string(),
        disk_id: hrl::to_hex(&v.header.disk_id),
        generation: v.header.generation,
        seq: v.header.sequence,
        log: log.to_string(),
        bytes: v.file_len,
        hash: hrl::to_hex(&v.seal.hash),
        prev_hash: hrl::to_hex(&v.header.prev_hash),
        records: v.seal.records,
        disk_size: v.header.disk_size,
        mode,
        changed_outside: false,
    }
}

/// One tracked disk.
pub struct Disk {
    pub key: BackingKey,
    /// Read-only descriptor of the image, for fsync and size.
    image: File,
    state: Mutex<DiskState>,
    /// Signalled when a log swap ends.
    swapped: Condvar,
}

/// What opening a disk's tracking found.
pub struct OpenedDisk {
    pub disk: Disk,
    /// The previous tracker did not stop cleanly (marks reported as unclean).
    pub recovered: bool,
}

impl Disk {
    /// Starts (or resumes) tracking the disk `name` in `dir`. `sealed` are its sealed logs
    /// found on disk (verified), in sequence order.
    pub fn open(
        dir: &Path,
        name: &str,
        key: BackingKey,
        sealed: Vec<SealedLog>,
        start: Start,
    ) -> Result<OpenedDisk, TrackError> {
        let disk_path = dir.join(name);
        let image = File::open(&disk_path).map_err(io_err(format!("open disk {name}")))?;
        let stat_err = || io_err(format!("stat disk {name}"));
        let size = image.metadata().map_err(stat_err())?.len();
        let (mut bitmap, bitmap_clean) =
            DirtyBitmap::open(&naming::bitmap_path(&disk_path), EXTENT_SIZE, size)?;
        let active = naming::active_log_path(&disk_path);
        let active_existed = active.exists();
        let continuing = matches!(start, Start::Continue { .. });
        let (log, log_clean, torn_at) =
            open_active_log(&active, active_existed, start, size, name)?;
        let recovered = !(bitmap_clean && log_clean) || torn_at.is_some();
        let now = ImageStamp::of(&image.metadata().map_err(stat_err())?);
        let vouch = Vouch {
            bitmap: &bitmap,
            chain_exists: active_existed || continuing,
            log: active_existed.then_some(&log),
            now,
        };
        let distrust = vouch.distrust();
        if let Some(why) = &distrust {
            tracing::warn!(disk = name, "{why}; reporting the whole disk as unclean");
            bitmap.mark(0, size.max(bitmap.disk_size()).max(1))?;
        }
        // From here on the stamp vouches for the image as it is now; every tracked change
        // keeps it current.
        bitmap.set_stamp(now);
        bitmap.flush()?;
        let offline_change = distrust.is_some() || bitmap.report_stands();
        // Marks still set were not cleared by a clean stop (crash) or are bitmap-mode marks
        // not shipped yet: either way they may differ from the replica and stay until `clear`.
        let marked = bitmap.dirty_extents();
        let held = extents_of(&marked, bitmap.extent_size());
        // Seal ids are wall-clock microseconds, so intervals of this process start after it.
        let opened_at = hrl::now_ns() / 1000;
        let unclean = if recovered || offline_change {
            marked
        } else {
            Vec::new()
        };
        if recovered {
            tracing::warn!(
                disk = name,
                extents = unclean.len(),
                "tracker did not stop cleanly; reporting the marked extents as unclean"
            );
        }
        Ok(OpenedDisk {
            disk: Disk {
                key,
                image,
                state: Mutex::new(DiskState {
                    name: name.to_string(),
                    log: Some(log),
                    bitmap: Some(bitmap),
                    mode: DiskMode::Log,
                    size,
                    touched_log: HashSet::new(),
                    prev_touched_log: HashSet::new(),
                    touched_all: HashSet::new(),
                    interval_start: opened_at,
                    // The marks found at open were made before this process: kept through a
                    // `clear` up to a seal older than it (only the point of a later seal
                    // covers them).
                    history: vec![(opened_at.saturating_sub(1), held.clone())],
                    held,
                    unclean,
                    torn_at,
                    pending: sealed,
                    swap_buffer: None,
                    swap_bytes: 0,
                    retired: false,
                    warnings: Vec::new(),
                    lasting_warnings: Vec::new(),
                    changed_outside: None,
                    outside_unsealed: false,
                    allocated: RangeSet::new(),
                }),
                swapped: Condvar::new(),
            },
            recovered,
        })
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock for a change: waits while a seal's swap buffer is full.
    fn lock_for_change(&self) -> MutexGuard<'_, DiskState> {
        let mut st = self.lock();
        while st.swap_buffer.is_some() && st.swap_bytes >= SWAP_BUFFER_LIMIT {
            st = self.swapped.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// Lock once no log swap is in progress (for fsync, renames, removal, clean stop).
    fn lock_settled(&self) -> MutexGuard<'_, DiskState> {
        let mut st = self.lock();
        while st.swap_buffer.is_some() {
            st = self.swapped.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st
    }

    /// Wakes the changes waiting for a swap to end.
    fn notify_swapped(&self) {
        self.swapped.notify_all();
    }

    pub fn name(&self) -> String {
        self.lock().name.clone()
    }

    /// Marks `[off, off+len)` before it changes; the mark is durable before this returns
    /// whenever a bit was newly set.
    fn mark(st: &mut DiskState, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let Some(bm) = st.bitmap.as_mut() else {
            return Ok(());
        };
        if bm.mark(off, len).map_err(bitmap_err)? {
            bm.flush().map_err(bitmap_err)?;
            crate::metrics::mark_set();
        }
        let es = u64::from(bm.extent_size());
        let range = off / es..(off.saturating_add(len)).div_ceil(es);
        for e in range {
            st.touched_all.insert(e);
            match st.mode {
                DiskMode::Log => {
                    st.touched_log.insert(e);
                }
                DiskMode::Bitmap => {
                    st.held.insert(e);
                }
            }
        }
        Ok(())
    }

    /// Reserves the image blocks a write will use before its record is logged: once the
    /// record is in the log, the image write must not fail for lack of space (ENOSPC would
    /// leave a record the image does not have). An extent found to have every block needs no
    /// `fallocate` (one syscall and a journal handle less per overwrite); should that be
    /// wrong (a hole punched from outside, a copy-on-write filesystem), a failed image write
    /// is still compensated in the log.
    fn reserve(st: &mut DiskState, fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
        let es = u64::from(EXTENT_SIZE);
        let end = off.saturating_add(len);
        let known =
            |st: &DiskState, r: std::ops::Range<u64>| st.allocated.gaps(&r).next().is_none();
        if len == 0 || known(st, off..end) {
            return Ok(());
        }
        reserve(fd, off, len)?;
        st.note_allocated(off, end);
        for e in off / es..end.div_ceil(es) {
            if !known(st, e * es..(e + 1) * es) && fully_allocated(fd, e, st.size) {
                st.note_allocated(e * es, (e + 1) * es);
            }
        }
        Ok(())
    }

    /// [`TrackedFile::fallocate`] under the disk's lock.
    fn fallocate_locked(
        &self,
        st: &mut DiskState,
        fd: BorrowedFd<'_>,
        mode: i32,
        off: u64,
        len: u64,
    ) -> io::Result<()> {
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        let cur = sys::fstat(fd)?.st_size as u64;
        let end = off.saturating_add(len);
        let grows = !keep && end > cur;
        if punch || zero || grows {
            Self::mark(st, off, len)?;
        }
        if punch || zero {
            st.forget_allocated(off, len);
        }
        if grows {
            st.record(ChangeRef::Other(Change::Truncate { size: end }))?;
        }
        let within = if grows { end } else { end.min(cur) };
        if within > off {
            if punch {
                st.record(ChangeRef::Other(Change::Punch {
                    offset: off,
                    len: within - off,
                }))?;
            } else if zero {
                st.record(ChangeRef::Other(Change::Zero {
                    offset: off,
                    len: within - off,
                }))?;
            }
        }
        if let Err(e) = sys::fallocate(fd, mode, off, len) {
            self.compensate(st, off, within.max(off));
            return Err(e);
        }
        if grows {
            st.size = end;
        }
        // An allocation, and a zero range too, leaves the range's blocks allocated
        // (fallocate(2): "blocks are preallocated for the regions that span the holes").
        if !punch {
            st.note_allocated(off, end);
        }
        Ok(())
    }

    /// The image refused (or half did) a change whose record is already logged: log what
    /// the image really holds over `[off, end)` and its real size, so that replaying the log
    /// still gives exactly the image. Runs under the disk lock, so nothing else changes the
    /// range meanwhile. If even that cannot be logged, the range is held for resync.
    fn compensate(&self, st: &mut DiskState, off: u64, end: u64) {
        const CHUNK: u64 = 1 << 20;
        let image = self.image.as_fd();
        let result = (|| -> io::Result<u64> {
            let size = sys::fstat(image)?.st_size as u64;
            st.record(ChangeRef::Other(Change::Truncate { size }))?;
            let end = end.min(size);
            let mut pos = off;
            while pos < end {
                let n = (end - pos).min(CHUNK);
                let data = sys::pread_full(image, n as usize, pos)?;
                if data.len() as u64 != n {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                if hrl::chunk::is_zero(&data) {
                    st.record(ChangeRef::Other(Change::Zero {
                        offset: pos,
                        len: n,
                    }))?;
                } else {
                    st.record(ChangeRef::Write {
                        offset: pos,
                        data: &data,
                    })?;
                }
                pos += n;
            }
            Ok(size)
        })();
        match result {
            Ok(size) => st.size = size,
            Err(e) => {
                tracing::error!(disk = %st.name, offset = off, error = %e,
                    "a refused change could not be compensated in the log; its range is held for resync");
                st.hold_range(off, end.saturating_sub(off).max(1));
            }
        }
    }

    /// Compares the image with the stamp the tracker's last own change left in the bitmap
    /// header (persisted, so it vouches across a killed tracker too): a difference is a
    /// change made outside the tracker (a descriptor, mapping or loop device that bypasses
    /// the mount, or an edit while nothing tracked). The whole disk is then marked for a
    /// full compare with the `changed_outside` reason. `full` false compares size and mtime
    /// only (a metadata change through the mount has just moved the ctime; the mtime moves
    /// only with the data, so a write that bypassed the mount before it is still seen).
    /// Renews the stamp.
    fn check_outside_with(&self, st: &mut DiskState, full: bool) {
        let now = match self.stamp_now() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(disk = %st.name, error = %e, "cannot stat the image");
                return;
            }
        };
        let kept = st.bitmap.as_ref().and_then(|b| b.stamp());
        if let Some(k) = kept {
            let same = if full {
                k == now
            } else {
                k.size == now.size && k.mtime_ns == now.mtime_ns
            };
            if !same {
                let why = format!(
                    "{} changed outside the tracker (size {} -> {}, mtime moved): a writer bypasses the mount; resync scheduled",
                    st.name, k.size, now.size
                );
                self.mark_changed_outside(st, why);
            }
        }
        if let Some(bm) = st.bitmap.as_mut() {
            bm.set_stamp(now);
        }
    }

    /// [`Disk::check_outside_with`], comparing size and times (before each own change, after
    /// each seal cut, at a clean stop).
    fn check_outside(&self, st: &mut DiskState) {
        self.check_outside_with(st, true);
    }

    /// Marks the whole disk unclean and held (a full compare at the next cycle), for a change
    /// made outside the tracker. The extents count as touched in the current interval, so a
    /// `clear` up to a seal before this one keeps them.
    fn mark_changed_outside(&self, st: &mut DiskState, why: String) {
        if st.changed_outside.is_none() {
            tracing::warn!(disk = %st.name, "{why}");
        }
        let size = self.image_size().unwrap_or(st.size).max(st.size).max(1);
        if let Some(bm) = st.bitmap.as_mut() {
            let es = u64::from(bm.extent_size());
            let set = bm
                .mark(0, size)
                .and_then(|new| if new { bm.flush() } else { Ok(()) });
            if let Err(e) = set {
                tracing::error!(disk = %st.name, error = %e, "cannot mark the disk in its bitmap; the shipper still sees it unclean");
            }
            for e in 0..size.div_ceil(es) {
                st.held.insert(e);
                st.touched_all.insert(e);
            }
        }
        if !st.unclean.contains(&(0, size)) {
            st.unclean.push((0, size));
        }
        st.changed_outside.get_or_insert(why);
        st.outside_unsealed = true;
        st.allocated.clear();
    }

    /// Marks the whole disk unclean and held (a full compare at the next cycle) for a change
    /// made outside the tracker, `why` saying what (reported as `changed_outside`).
    pub fn report_changed_outside(&self, why: String) {
        let mut st = self.lock();
        self.mark_changed_outside(&mut st, why);
    }

    /// At a seal, after the cut: checks for a change outside the tracker and returns whether
    /// one was found since the last seal (its logs then miss changes of the disk).
    pub fn take_changed_outside(&self) -> bool {
        let mut st = self.lock();
        self.check_outside(&mut st);
        if !std::mem::take(&mut st.outside_unsealed) {
            return false;
        }
        // Again in the interval this seal starts, so that the point's `clear` keeps them.
        let why = st.changed_outside.clone().unwrap_or_default();
        self.mark_changed_outside(&mut st, why);
        st.outside_unsealed = false;
        true
    }

    /// Makes the image durable (used before clearing the marks a seal covers).
    pub fn sync_image(&self) -> io::Result<()> {
        sys::fsync(self.image.as_fd(), true)
    }

    /// Current size of the image.
    pub fn image_size(&self) -> io::Result<u64> {
        Ok(sys::fstat(self.image.as_fd())?.st_size as u64)
    }

    /// Starts a new seal interval. Marks are not cleared at a seal: a sealed log is not in a
    /// committed point yet (the shipper may even have to release it under the 50% rule), so
    /// its ranges stay marked until `clear` after the point that holds it.
    fn begin_interval(st: &mut DiskState, seal_id: u64) {
        let all = std::mem::take(&mut st.touched_all);
        let start = st.interval_start;
        st.history.push((start, all));
        if st.history.len() > HISTORY {
            st.history.remove(0);
        }
        st.interval_start = seal_id;
        let closing = std::mem::take(&mut st.touched_log);
        st.prev_touched_log = closing;
    }

    /// `clear upto_seal`: drops every mark not touched since seal `upto`.
    pub fn clear_upto(&self, upto: u64) -> io::Result<()> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut keep: HashSet<u64> = st.touched_all.clone();
        for (start, set) in &st.history {
            if *start >= upto {
                keep.extend(set.iter().copied());
            }
        }
        // Log-mode marks whose seal has not completed stay too.
        keep.extend(st.touched_log.iter().copied());
        keep.extend(st.prev_touched_log.iter().copied());
        let Some(bm) = st.bitmap.as_mut() else {
            return Ok(());
        };
        let es = u64::from(bm.extent_size());
        for (off, len) in bm.dirty_extents() {
            for e in off / es..(off + len).div_ceil(es) {
                if !keep.contains(&e) {
                    bm.clear(e * es, es);
                }
            }
        }
        bm.flush().map_err(bitmap_err)?;
        st.held.retain(|e| keep.contains(e));
        st.unclean.clear();
        st.warnings.clear();
        st.changed_outside = None;
        st.history.retain(|(start, _)| *start >= upto);
        Ok(())
    }

    /// Before sealed logs that will never ship are deleted (the shipper releases them under
    /// the 50% rule): marks every range they change and makes the marks durable, so that the
    /// bitmap alone still covers those changes. The whole disk is marked when a log resizes
    /// the disk or cannot be read.
    pub fn mark_released(&self, logs: &[std::path::PathBuf]) -> io::Result<()> {
        let ranges = match hrl::log::log_extents(logs) {
            Ok(Some(r)) => Some(r),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read logs being released; marking the whole disk");
                None
            }
        };
        let mut st = self.lock();
        let st = &mut *st;
        let limit = st.size.max(1);
        let Some(bm) = st.bitmap.as_mut() else {
            return Ok(());
        };
        let es = u64::from(bm.extent_size());
        let whole = [(0, limit)];
        let ranges: &[(u64, u64)] = ranges.as_deref().unwrap_or(&whole);
        for &(off, len) in ranges {
            let len = len.min(limit.saturating_sub(off));
            if len == 0 {
                continue;
            }
            bm.mark(off, len).map_err(bitmap_err)?;
            for e in off / es..(off + len).div_ceil(es) {
                st.held.insert(e);
                st.touched_all.insert(e);
            }
        }
        bm.flush().map_err(bitmap_err)
    }

    /// Switches between full logging and bitmap-only tracking.
    pub fn set_mode(&self, mode: DiskMode) {
        let mut st = self.lock();
        if st.mode == DiskMode::Log && mode == DiskMode::Bitmap {
            // What the active log holds may be dropped by the shipper: keep it marked.
            let touched: Vec<u64> = st
                .touched_log
                .iter()
                .chain(st.prev_touched_log.iter())
                .copied()
                .collect();
            st.held.extend(touched);
            Self::empty_active_log(&mut st);
        }
        st.mode = mode;
    }

    /// Bitmap tracking keeps no log: what the active log holds is dropped (its extents are
    /// held marks, already durable), so a disk released under the 50% rule stops taking space
    /// on the host even when no seal follows (the store refusing, replication paused). The
    /// new log has the same header (sequence, chain), so the chain goes on. It is made
    /// beside the old one and renamed over it: a failure keeps the old log, a crash leaves
    /// the old or the new one (and a stray `.hrl-new`, which nothing reads).
    fn empty_active_log(st: &mut DiskState) {
        let Some(log) = st.log.as_ref().filter(|l| l.record_count() > 0) else {
            return;
        };
        let (path, header) = (log.path().to_path_buf(), log.header().clone());
        let mut tmp = path.clone().into_os_string();
        tmp.push("-new");
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let fresh = LogWriter::create(&tmp, &header).and_then(|mut l| match l.rename_to(&path) {
            Ok(()) => Ok(l),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        });
        match fresh {
            Ok(l) => st.log = Some(l),
            Err(e) => {
                tracing::error!(disk = %st.name, error = %e, "cannot empty the active log for bitmap tracking; it keeps its records")
            }
        }
    }

    /// Dirty extents of the bitmap.
    pub fn dirty(&self) -> Vec<(u64, u64)> {
        self.lock()
            .bitmap
            .as_ref()
            .map(|b| b.dirty_extents())
            .unwrap_or_default()
    }

    pub fn status(&self) -> DiskStatus {
        let st = self.lock();
        DiskStatus {
            disk: st.name.clone(),
            mode: st.mode,
            active_log_bytes: st.log.as_ref().map(|l| l.len()).unwrap_or(0),
            active_seq: st.log.as_ref().map(|l| l.header().sequence).unwrap_or(0),
            pending_logs: st.pending.len() as u64,
            pending_sealed_bytes: st.pending.iter().map(|p| p.bytes).sum(),
            disk_size: st.size,
            dirty_extents: st
                .bitmap
                .as_ref()
                .map(|b| b.dirty_extents().len() as u64)
                .unwrap_or(0),
            unclean_extents: st.unclean.clone(),
            torn_log_tail_at: st.torn_at,
            disk_id: st
                .log
                .as_ref()
                .map(|l| hrl::to_hex(&l.header().disk_id))
                .unwrap_or_default(),
            warnings: st
                .lasting_warnings
                .iter()
                .chain(&st.warnings)
                .cloned()
                .collect(),
            changed_outside: st.changed_outside.clone(),
        }
    }

    /// Logs the disk's removal or renaming (in every mode: the shipper must know), once no
    /// seal is swapping its logs.
    pub fn log_lifecycle(&self, change: Change) -> io::Result<()> {
        self.lock_settled().record_lifecycle(change)
    }

    /// Holds the disk still for a seal's cut: its lock, once no log swap is in progress.
    pub fn hold(&self) -> Held<'_> {
        Held {
            st: self.lock_settled(),
        }
    }

    /// Ends the log swap a [`Held::cut`] started: the changes buffered meanwhile go to
    /// `next` in order, and it becomes the active log (the old log again if the seal failed).
    pub fn resume(&self, next: LogWriter) {
        self.lock().finish_swap(next);
        self.notify_swapped();
    }

    /// The disk was renamed to `new` in `root`: its active log and bitmap follow; its pending
    /// logs keep their file names but are the disk's under its new name.
    pub fn rename_files(&self, root: &Path, new: &str) -> Result<(), TrackError> {
        let mut st = self.lock_settled();
        let old_disk = root.join(&st.name);
        let new_disk = root.join(new);
        if let Some(log) = st.log.as_mut() {
            log.rename_to(&naming::active_log_path(&new_disk))?;
        }
        std::fs::rename(
            naming::bitmap_path(&old_disk),
            naming::bitmap_path(&new_disk),
        )
        .map_err(|source| TrackError::Io {
            what: "rename the dirty bitmap".into(),
            source,
        })?;
        st.name = new.to_string();
        for p in &mut st.pending {
            p.disk = new.to_string();
        }
        Ok(())
    }

    /// The disk is gone: seals its last log in `root` (the log records the removal) and
    /// stops tracking. Returns its unacked logs and whether it had a bitmap, which the
    /// caller removes.
    pub fn retire(&self, root: &Path) -> Retired {
        let mut st = self.lock_settled();
        st.retired = true;
        let name = st.name.clone();
        let mut pending = std::mem::take(&mut st.pending);
        if let Some(mut log) = st.log.take() {
            let h = log.header().clone();
            let file =
                naming::sealed_log_path(Path::new(&name), h.sequence, &hrl::to_hex(&h.disk_id));
            let file = file.to_string_lossy().into_owned();
            let path = root.join(&file);
            let res = log
                .rename_to(&path)
                .and_then(|_| log.seal())
                .and_then(|_| verify_sealed(&path, None));
            match res {
                Ok(v) => pending.push(sealed_entry(&v, &name, &file, st.mode)),
                Err(e) => {
                    tracing::error!(disk = %name, error = %e, "cannot seal the log of a removed disk")
                }
            }
        }
        let bitmap = st.bitmap.take().map(|_| {
            naming::bitmap_path(Path::new(&name))
                .to_string_lossy()
                .into_owned()
        });
        Retired { pending, bitmap }
    }

    /// Records a sealed log as waiting for its ack; gives it back if the disk was retired
    /// meanwhile (it then belongs with the retired disks' logs).
    pub fn add_pending(&self, entry: SealedLog) -> Option<SealedLog> {
        let mut st = self.lock();
        if st.retired {
            return Some(entry);
        }
        st.pending.push(entry);
        None
    }

    /// The sealed logs waiting for their ack.
    pub fn pending(&self) -> Vec<SealedLog> {
        self.lock().pending.clone()
    }

    /// `ack`: takes the pending logs with sequence <= `seq` that `of_id` accepts (the
    /// caller deletes their files). In bitmap mode they are released logs, in no committed
    /// point (the 50% rule): their ranges are marked, durably, first. (After a commit the
    /// shipper acks in log mode; those logs' marks go at its `clear`.)
    pub fn ack(
        &self,
        root: &Path,
        seq: u64,
        of_id: impl Fn(&SealedLog) -> bool,
    ) -> Result<Vec<SealedLog>, TrackError> {
        let (mode, logs) = {
            let st = self.lock();
            let logs: Vec<PathBuf> = st
                .pending
                .iter()
                .filter(|p| p.seq <= seq)
                .map(|p| root.join(&p.log))
                .collect();
            (st.mode, logs)
        };
        if mode == DiskMode::Bitmap && !logs.is_empty() {
            self.mark_released(&logs).map_err(|source| TrackError::Io {
                what: "mark the ranges of released logs".into(),
                source,
            })?;
        }
        let mut st = self.lock();
        let (gone, keep): (Vec<_>, Vec<_>) =
            st.pending.drain(..).partition(|p| p.seq <= seq && of_id(p));
        st.pending = keep;
        Ok(gone)
    }

    /// Adds a warning for the operator, shown in `status` while the mount lives.
    pub fn warn(&self, warning: String) {
        self.lock().lasting_warnings.push(warning);
    }

    /// Nothing vouches for this disk's changes any more (one of its logs was unreadable):
    /// the whole disk is marked, held and reported unclean, so the shipper compares every
    /// block, and `warnings` say why until that is done.
    pub fn distrust(&self, warnings: Vec<String>) -> io::Result<()> {
        let mut st = self.lock();
        let size = st.size.max(1);
        if let Some(bm) = st.bitmap.as_mut() {
            bm.mark(0, size).map_err(bitmap_err)?;
            bm.flush().map_err(bitmap_err)?;
        }
        st.hold_range(0, size);
        st.warnings.extend(warnings);
        Ok(())
    }

    /// Clean stop: log closed (state Closed), image durable, bitmap flagged clean with where
    /// the log ended. The marks stay: what the closed log holds is not in a committed point
    /// yet. The image's stamp is renewed only if nothing changed it since the last tracked
    /// change (else the old stamp stays and the next start distrusts the image); an unclean
    /// report not resynced yet stands.
    pub fn close_clean(&self) -> io::Result<()> {
        let mut st = self.lock_settled();
        let st = &mut *st;
        let closed = st.log.as_ref().map(|l| ClosedLog {
            seq: l.header().sequence,
            len: l.len(),
            hash: l.seal_hash(),
        });
        self.check_outside(st);
        if let Some(log) = st.log.take() {
            log.close_clean().map_err(log_err)?;
        }
        sys::fsync(self.image.as_fd(), false)?;
        if st.changed_outside.is_some() {
            // Changed outside the tracker and not resynced yet: the bitmap stays marked and
            // not clean, so the next start reports the whole disk unclean again.
            if let Some(bm) = st.bitmap.take() {
                bm.flush().map_err(bitmap_err)?;
            }
            return Ok(());
        }
        let stamp = Some(self.stamp_now()?);
        if let Some(bm) = st.bitmap.take() {
            bm.close_clean_with(CleanClose {
                stamp,
                log: closed,
                report_stands: !st.unclean.is_empty(),
            })
            .map_err(bitmap_err)?;
        }
        Ok(())
    }

    /// The image's stamp now.
    fn stamp_now(&self) -> io::Result<ImageStamp> {
        Ok(ImageStamp::of(&self.image.metadata()?))
    }

    /// Runs a change to the image under the disk's lock, between two looks at its stamp:
    /// before, it must still be the stamp the last tracked change left (else the change came
    /// from outside: [`Disk::check_outside`]); after, the new stamp is kept in the bitmap
    /// header, where it vouches for the image even if the tracker is killed next.
    fn change<T>(&self, f: impl FnOnce(&mut DiskState) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.lock_for_change();
        self.check_outside(&mut st);
        let r = f(&mut st);
        self.keep_stamp(&mut st);
        r
    }

    fn keep_stamp(&self, st: &mut DiskState) {
        match self.stamp_now() {
            Ok(now) => {
                if let Some(bm) = st.bitmap.as_mut() {
                    bm.set_stamp(now);
                }
            }
            Err(e) => tracing::warn!(disk = %st.name, error = %e, "cannot stat the image"),
        }
    }

    /// After a metadata change made through the mount (mode, owner, times, xattrs, links,
    /// renames): the image's ctime moved legitimately, so the stamp is renewed (its size and
    /// mtime must not have changed meanwhile: a bypass write before the change is caught; a
    /// time set through the mount counts as one too, a needless but safe full compare).
    pub fn after_metadata_change(&self) {
        let mut st = self.lock_settled();
        self.check_outside_with(&mut st, false);
    }
}

/// The write path: every data change of a disk through the mount.
impl TrackedFile for Disk {
    /// A write to the image: marked, logged, then written.
    fn write(&self, fd: BorrowedFd<'_>, off: u64, data: &[u8]) -> io::Result<()> {
        self.change(|st| {
            Self::mark(st, off, data.len() as u64)?;
            Self::reserve(st, fd, off, data.len() as u64)?;
            st.record(ChangeRef::Write { offset: off, data })?;
            if let Err(e) = sys::pwrite_all(fd, data, off) {
                self.compensate(st, off, off + data.len() as u64);
                return Err(e);
            }
            st.size = st.size.max(off + data.len() as u64);
            Ok(())
        })
    }

    /// A size change (truncate, O_TRUNC): marked, logged, done.
    fn truncate(&self, fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
        self.change(|st| {
            let cur = sys::fstat(fd)?.st_size as u64;
            let (lo, hi) = (cur.min(size), cur.max(size));
            Self::mark(st, lo, hi - lo)?;
            st.forget_allocated(lo, u64::MAX - lo);
            st.record(ChangeRef::Other(Change::Truncate { size }))?;
            if let Err(e) = sys::ftruncate(fd, size) {
                self.compensate(st, lo, lo);
                return Err(e);
            }
            st.size = size;
            Ok(())
        })
    }

    /// fallocate: allocation (logged as a size change when it grows the file), punch hole
    /// and zero range (logged as such). Collapse/insert range cannot be described and are
    /// refused.
    fn fallocate(&self, fd: BorrowedFd<'_>, mode: i32, off: u64, len: u64) -> io::Result<()> {
        let known =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        self.change(|st| self.fallocate_locked(st, fd, mode, off, len))
    }

    /// copy_file_range into this disk: read from the source, then a logged write.
    fn copy_in(
        &self,
        src: BorrowedFd<'_>,
        off_in: u64,
        dst: BorrowedFd<'_>,
        off_out: u64,
        len: usize,
    ) -> io::Result<usize> {
        const CHUNK: usize = 1 << 20;
        let mut done = 0usize;
        while done < len {
            let want = (len - done).min(CHUNK);
            let data = sys::pread_full(src, want, off_in + done as u64)?;
            if data.is_empty() {
                break;
            }
            self.write(dst, off_out + done as u64, &data)?;
            done += data.len();
            if data.len() < want {
                break;
            }
        }
        Ok(done)
    }

    /// fsync: a `flush` record under the lock; then, without it (writers go on), the log
    /// and the image are synced at the same time. The log's sync is shared with every other
    /// fsync waiting for it (group commit). Answered once both are durable.
    fn fsync(&self, fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
        let point = {
            // After a swap: the sealed log is durable by then, the new one is synced here.
            let mut st = self.lock_settled();
            let logging = st.mode == DiskMode::Log;
            match st.log.as_mut() {
                Some(log) if logging => {
                    log.append_flush().map_err(log_err)?;
                    Some(log.sync_point())
                }
                _ => None,
            }
        };
        let Some(point) = point else {
            return sys::fsync(fd, datasync);
        };
        std::thread::scope(|s| {
            let (log, image) = match std::thread::Builder::new()
                .spawn_scoped(s, || point.wait().map_err(log_err))
            {
                Ok(log) => {
                    let image = sys::fsync(fd, datasync);
                    let log = log
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("the log sync panicked")));
                    (log, image)
                }
                // No thread to spare: one after the other.
                Err(_) => (point.wait().map_err(log_err), sys::fsync(fd, datasync)),
            };
            log.and(image)
        })
    }
}

/// The extent numbers the byte ranges `ranges` touch.
fn extents_of(ranges: &[(u64, u64)], extent_size: u32) -> HashSet<u64> {
    let es = u64::from(extent_size);
    ranges
        .iter()
        .flat_map(|&(off, len)| off / es..off.saturating_add(len).div_ceil(es))
        .collect()
}

/// Maps an I/O error to a [`TrackError`] saying what was being done.
fn io_err(what: String) -> impl FnOnce(io::Error) -> TrackError {
    move |source| TrackError::Io { what, source }
}

/// Allocates the image blocks of `[off, off+len)` ahead of a write (no size change), so the
/// write itself cannot hit ENOSPC. Filesystems without fallocate are left to the write.
fn reserve(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    match sys::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, off, len) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(e),
    }
}

/// True if the image has every block of extent `e` (FIEMAP over it, else `SEEK_HOLE` from its
/// start, finds no hole before its end, and the file reaches past it).
fn fully_allocated(fd: BorrowedFd<'_>, e: u64, size: u64) -> bool {
    let es = u64::from(EXTENT_SIZE);
    let (start, end) = (e * es, (e + 1) * es);
    end <= size
        && sys::range_allocated(fd, start, end).unwrap_or_else(|| {
            sys::lseek(fd, start as i64, libc::SEEK_HOLE).is_ok_and(|hole| hole as u64 >= end)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hrl::log::{LogReader, Record};
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn open_disk(dir: &Path, name: &str) -> (Disk, File) {
        let path = dir.join(name);
        let md = std::fs::metadata(&path).unwrap();
        let opened = Disk::open(
            dir,
            name,
            (md.dev(), md.ino()),
            Vec::new(),
            Start::Fresh { first_seq: 1 },
        )
        .unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (opened.disk, f)
    }

    fn records(path: &Path) -> Vec<Record> {
        LogReader::open(path)
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|r| !matches!(r, Record::Seal(_)))
            .collect()
    }

    #[test]
    fn changes_during_a_swap_land_in_the_next_log_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("d.img"), vec![7u8; 1 << 20]).unwrap();
        let base = dir.join("base");
        std::fs::copy(dir.join("d.img"), &base).unwrap();
        let (disk, f) = open_disk(dir, "d.img");
        let fd = f.as_fd();
        disk.write(fd, 0, b"before").unwrap();

        // The cut: from here on changes are buffered (and still reach the image).
        let mut old = disk.lock().start_swap().unwrap();
        disk.write(fd, 100, b"during the swap").unwrap();
        disk.truncate(fd, 4096).unwrap();
        assert_eq!(std::fs::read(dir.join("d.img")).unwrap().len(), 4096);

        let sealed = dir.join("d.img.1.hrl");
        old.rename_to(&sealed).unwrap();
        let h = old.header().clone();
        let next_h = LogHeader::new(h.disk_id, h.generation, 2, 4096, old.seal_hash());
        let next =
            LogWriter::create(&naming::active_log_path(&dir.join("d.img")), &next_h).unwrap();
        old.seal().unwrap();
        disk.lock().finish_swap(next);
        disk.notify_swapped();
        disk.write(fd, 200, b"after").unwrap();

        assert_eq!(
            records(&sealed),
            vec![Record::Write {
                offset: 0,
                data: b"before".to_vec()
            }]
        );
        let next = disk.lock().log.take().unwrap();
        let next_path = dir.join("d.img.2.hrl");
        let mut next = next;
        next.rename_to(&next_path).unwrap();
        next.seal().unwrap();
        assert_eq!(
            records(&next_path),
            vec![
                Record::Write {
                    offset: 100,
                    data: b"during the swap".to_vec()
                },
                Record::Truncate { size: 4096 },
                Record::Write {
                    offset: 200,
                    data: b"after".to_vec()
                },
            ]
        );
        hrl::log::apply_logs(&[sealed, next_path], &base).unwrap();
        assert_eq!(
            std::fs::read(&base).unwrap(),
            std::fs::read(dir.join("d.img")).unwrap()
        );
    }

    #[test]
    fn marks_stay_until_clear_through_a_clean_close_and_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let es = u64::from(EXTENT_SIZE);
        std::fs::write(dir.join("d.raw"), vec![0u8; 3 * es as usize]).unwrap();
        let (disk, f) = open_disk(dir, "d.raw");
        disk.write(f.as_fd(), es + 1, b"x").unwrap();
        assert_eq!(disk.dirty(), vec![(es, es)]);
        // A seal does not clear: the sealed log is in no committed point yet.
        Disk::begin_interval(&mut disk.lock(), hrl::now_ns() / 1000);
        assert_eq!(disk.dirty(), vec![(es, es)]);
        // Nor does a clean close: the closed log is not shipped either.
        disk.close_clean().unwrap();
        drop(disk);
        let (disk, f) = open_disk(dir, "d.raw");
        assert_eq!(disk.dirty(), vec![(es, es)]);
        assert!(
            disk.status().unclean_extents.is_empty(),
            "a clean stop reports nothing unclean"
        );
        // A clear up to a seal older than this process keeps what it found at open (made
        // after that seal, maybe); a clear up to a seal of this process drops it.
        disk.clear_upto(1).unwrap();
        assert_eq!(disk.dirty(), vec![(es, es)]);
        disk.write(f.as_fd(), 2 * es, b"y").unwrap();
        let seal = hrl::now_ns() / 1000 + 1;
        Disk::begin_interval(&mut disk.lock(), seal);
        disk.write(f.as_fd(), 5, b"z").unwrap();
        disk.clear_upto(seal).unwrap();
        // The interval the seal closed stays one more (hot), the new one stays.
        assert_eq!(disk.dirty(), vec![(0, es), (2 * es, es)]);
    }

    #[test]
    fn writes_skip_the_reservation_only_over_extents_without_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let es = u64::from(EXTENT_SIZE);
        // Extent 0 written in full, extents 1 and 2 sparse.
        let f = File::create(dir.join("d.raw")).unwrap();
        f.write_all_at(&vec![1u8; es as usize], 0).unwrap();
        f.set_len(3 * es).unwrap();
        let (disk, f) = open_disk(dir, "d.raw");
        let fd = f.as_fd();
        // The extents known whole.
        let allocated = || {
            let st = disk.lock();
            (0..3)
                .filter(|e| st.allocated.gaps(&(e * es..(e + 1) * es)).next().is_none())
                .collect::<Vec<u64>>()
        };
        disk.write(fd, 10, b"over data").unwrap();
        disk.write(fd, es + 10, b"into a hole").unwrap();
        assert_eq!(
            allocated(),
            vec![0],
            "only the extent without holes is known allocated"
        );
        // A punch through the mount forgets it (the next write reserves again).
        disk.fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            4096,
        )
        .unwrap();
        assert!(allocated().is_empty());
        disk.write(fd, 4096, &[2u8; 4096]).unwrap();
        disk.write(fd, 20, b"again").unwrap();
        assert_eq!(
            allocated(),
            vec![0],
            "the reserved write filled the hole again"
        );
        // A truncate forgets everything from the cut on.
        disk.truncate(fd, es / 2).unwrap();
        assert!(allocated().is_empty());
        // The log still replays to the image.
        let log = disk.lock().log.take().unwrap();
        let path = dir.join("d.raw.1.hrl");
        let mut log = log;
        log.rename_to(&path).unwrap();
        log.seal().unwrap();
        let base = dir.join("base");
        std::fs::write(&base, {
            let mut v = vec![1u8; es as usize];
            v.resize(3 * es as usize, 0);
            v
        })
        .unwrap();
        hrl::log::apply_logs(&[path], &base).unwrap();
        assert_eq!(
            std::fs::read(&base).unwrap(),
            std::fs::read(dir.join("d.raw")).unwrap()
        );
    }

    #[test]
    fn a_growing_image_reserves_each_range_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("q.qcow2"), vec![7u8; 4096]).unwrap();
        let (disk, f) = open_disk(dir, "q.qcow2");
        let fd = f.as_fd();
        let reserved = || disk.lock().allocated.iter().cloned().collect::<Vec<_>>();
        // A qcow2 growing cluster by cluster: qemu zeroes a 64 KiB cluster past the end,
        // then writes 4 KiB blocks into it; those need no reservation.
        disk.fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 65536, 65536)
            .unwrap();
        assert_eq!(
            reserved(),
            vec![65536..131072],
            "a zero range reserves its range"
        );
        disk.truncate(fd, 4096).unwrap();
        assert!(reserved().is_empty());
        disk.fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 8192, 4096)
            .unwrap();
        assert_eq!(reserved(), vec![8192..12288], "so does an allocation");
        disk.truncate(fd, 65536).unwrap();
        assert!(reserved().is_empty());
        disk.write(fd, 65536, &[1u8; 4096]).unwrap();
        assert_eq!(reserved(), vec![65536..69632]);
        for i in 1..16u64 {
            disk.write(fd, 65536 + i * 4096, &[i as u8; 4096]).unwrap();
        }
        assert_eq!(
            reserved(),
            vec![65536..131072],
            "the appends merge into one reserved range (a write inside it reserves nothing)"
        );
        disk.write(fd, 70000, b"inside").unwrap();
        assert_eq!(reserved(), vec![65536..131072]);
        // A punch, a cut and a change from outside forget what they touch.
        disk.fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            69632,
            4096,
        )
        .unwrap();
        assert_eq!(reserved(), vec![65536..69632, 73728..131072]);
        disk.truncate(fd, 100_000).unwrap();
        assert_eq!(reserved(), vec![65536..69632, 73728..100_000]);
        disk.report_changed_outside("test".into());
        assert!(reserved().is_empty());
    }

    #[test]
    fn the_reserved_ranges_stay_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let f = File::create(dir.join("s.raw")).unwrap();
        f.set_len(1 << 30).unwrap();
        let (disk, f) = open_disk(dir, "s.raw");
        // Scattered writes into a sparse image: one range each, never more than the bound.
        for i in 0..(ALLOCATED_RANGES as u64 + 10) {
            disk.write(f.as_fd(), i * 65536, b"x").unwrap();
            assert!(disk.lock().allocated.len() <= ALLOCATED_RANGES);
        }
        assert!(!disk.lock().allocated.is_empty());
    }

    #[test]
    fn releasing_logs_marks_every_range_they_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let es = u64::from(EXTENT_SIZE);
        std::fs::write(dir.join("d.raw"), vec![0u8; 4 * es as usize]).unwrap();
        let (disk, _f) = open_disk(dir, "d.raw");
        let log = dir.join("other.hrl");
        let h = LogHeader::new([1; 16], 1, 1, 4 * es, [0; 32]);
        let mut w = LogWriter::create(&log, &h).unwrap();
        w.append_write(3 * es + 7, b"released").unwrap();
        w.append_zero(es, 10).unwrap();
        w.seal().unwrap();
        disk.mark_released(std::slice::from_ref(&log)).unwrap();
        assert_eq!(disk.dirty(), vec![(es, es), (3 * es, es)]);
        // A log that resizes the disk (or cannot be read): the whole disk.
        let mut w = LogWriter::create(&dir.join("t.hrl"), &h).unwrap();
        w.append_truncate(es).unwrap();
        w.seal().unwrap();
        disk.mark_released(&[dir.join("t.hrl")]).unwrap();
        assert_eq!(disk.dirty(), vec![(0, 4 * es)]);
    }
}
