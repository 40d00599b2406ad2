//! Appending to a log: one positioned vectored write per record (header + payload, no copy),
//! a running seal hash, and in-place header updates for the open/closed/sealed state. Syncs
//! go through [`super::commit`] (group commit, zero-filled tail ahead of the records).

use std::fs::File;
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::commit::{Durability, SyncPoint, PREFILL, PREFILL_LOW};

use super::format::{
    Kind, LogHeader, LogState, RecordHeader, SealHasher, HEADER_LEN, MAX_PAYLOAD, RECORD_HEADER_LEN,
};
use super::reader::{LogEnd, LogReader};
use super::{LogError, SealInfo};
use crate::Digest;

/// Appends records to one log. Not shared between threads by itself: callers wrap it in a
/// lock together with the image write it covers, so the log order is the image order.
pub struct LogWriter {
    file: Arc<File>,
    path: PathBuf,
    header: LogHeader,
    /// End of the records (the log's length as readers see it).
    len: u64,
    /// End of the file: past `len`, zeros written ahead by a sync (see [`LogWriter::sync`]).
    file_end: u64,
    durability: Arc<Durability>,
    records: u64,
    payload_bytes: u64,
    seal_hasher: SealHasher,
}

/// What reopening an active log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Byte offset where a torn tail was cut off (the writer died mid-record), if any.
    pub torn_at: Option<u64>,
    /// Why the tail was cut.
    pub torn_reason: Option<String>,
    /// The log had been closed cleanly (no crash since it was last written).
    pub was_clean: bool,
    /// Verified records kept.
    pub records: u64,
}

impl LogWriter {
    /// Creates a new open log (fails if the file exists). The header and the directory entry
    /// are made durable before this returns.
    pub fn create(path: &Path, header: &LogHeader) -> Result<LogWriter, LogError> {
        let mut header = header.clone();
        header.state = LogState::Open;
        let file =
            crate::sidecar::create_new(path).map_err(|e| LogError::io(path, "create log", e))?;
        let fail = |e| {
            let _ = std::fs::remove_file(path);
            LogError::io(path, "write log header", e)
        };
        file.write_all_at(&header.encode(), 0).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        sync_parent_dir(path)?;
        let hasher = SealHasher::new(&header);
        Ok(LogWriter::new(file, path, header, HEADER_LEN, 0, 0, hasher))
    }

    fn new(
        file: File,
        path: &Path,
        header: LogHeader,
        len: u64,
        records: u64,
        payload_bytes: u64,
        seal_hasher: SealHasher,
    ) -> LogWriter {
        let file = Arc::new(file);
        LogWriter {
            durability: Durability::new(file.clone(), path, len),
            file,
            path: path.to_path_buf(),
            header,
            len,
            file_end: len,
            records,
            payload_bytes,
            seal_hasher,
        }
    }

    /// Reopens an active log after a restart: verifies every record, cuts a torn tail off the
    /// file, and marks the log open again. Refuses a sealed log.
    pub fn open_append(path: &Path) -> Result<(LogWriter, Recovered), LogError> {
        let mut reader = LogReader::open(path)?;
        let header = reader.header().clone();
        if header.state == LogState::Sealed {
            return Err(LogError::AlreadySealed {
                path: path.to_path_buf(),
            });
        }
        let mut seal_hasher = SealHasher::new(&header);
        let mut records = 0u64;
        let mut payload_bytes = 0u64;
        while let Some(entry) = reader.next_entry() {
            let (meta, record) = entry?;
            if let super::Record::Seal(_) = record {
                // A seal record without the sealed state: the sealer died between the two
                // steps. The log is complete; treat it as sealed.
                return Err(LogError::AlreadySealed {
                    path: path.to_path_buf(),
                });
            }
            seal_hasher.add(&meta.checksum);
            records += 1;
            if let super::Record::Write { data, .. } = &record {
                payload_bytes += data.len() as u64;
            }
        }
        let (end, torn_at, torn_reason) = match reader.end() {
            LogEnd::Torn { offset, reason } => (*offset, Some(*offset), Some(reason.clone())),
            LogEnd::Clean { offset } => (*offset, None, None),
            LogEnd::Sealed { .. } => {
                return Err(LogError::AlreadySealed {
                    path: path.to_path_buf(),
                })
            }
        };
        let file = crate::sidecar::open_existing(path)
            .map_err(|e| LogError::io(path, "open log for append", e))?;
        // A tail of zeros is what a sync wrote ahead of the records, not a torn record.
        let torn_at = match torn_at {
            Some(at)
                if zeros_from(&file, at).map_err(|e| LogError::io(path, "read log tail", e))? =>
            {
                None
            }
            t => t,
        };
        let torn_reason = torn_at.and(torn_reason);
        if torn_at.is_some() {
            tracing::warn!(log = %path.display(), offset = end, reason = ?torn_reason, "cutting torn log tail");
        }
        file.set_len(end)
            .map_err(|e| LogError::io(path, "cut torn tail", e))?;
        let was_clean = header.state == LogState::Closed;
        let mut w = LogWriter::new(file, path, header, end, records, payload_bytes, seal_hasher);
        w.set_state(LogState::Open)?;
        Ok((
            w,
            Recovered {
                torn_at,
                torn_reason,
                was_clean,
                records,
            },
        ))
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Bytes in the file, header included.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// True when the log holds no record yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
    pub fn record_count(&self) -> u64 {
        self.records
    }
    /// Bytes of write data logged so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// The hash a seal would record now. Lets a sealer open the next log (which names this
    /// hash) before it writes the seal record, so writers wait only for the swap.
    pub fn seal_hash(&self) -> Digest {
        self.seal_hasher.finish()
    }

    /// Renames the file this writer appends to (the tracker moves `d.hrl` to `d.<seq>.hrl`).
    pub fn rename_to(&mut self, new_path: &Path) -> Result<(), LogError> {
        std::fs::rename(&self.path, new_path)
            .map_err(|e| LogError::io(&self.path, "rename log", e))?;
        self.path = new_path.to_path_buf();
        self.durability.set_path(new_path);
        Ok(())
    }

    pub fn append_write(&mut self, offset: u64, data: &[u8]) -> Result<(), LogError> {
        let mut done = 0usize;
        loop {
            let n = (data.len() - done).min(MAX_PAYLOAD as usize);
            let part = &data[done..done + n];
            self.append(Kind::Write, offset + done as u64, n as u64, part)?;
            self.payload_bytes += n as u64;
            done += n;
            if done >= data.len() {
                return Ok(());
            }
        }
    }
    pub fn append_truncate(&mut self, size: u64) -> Result<(), LogError> {
        self.append(Kind::Truncate, size, 0, &[])
    }
    pub fn append_zero(&mut self, offset: u64, len: u64) -> Result<(), LogError> {
        self.append(Kind::Zero, offset, len, &[])
    }
    pub fn append_punch(&mut self, offset: u64, len: u64) -> Result<(), LogError> {
        self.append(Kind::Punch, offset, len, &[])
    }
    pub fn append_flush(&mut self) -> Result<(), LogError> {
        self.append(Kind::Flush, 0, 0, &[])
    }
    pub fn append_rename(&mut self, new_name: &str) -> Result<(), LogError> {
        self.append(Kind::Rename, 0, 0, new_name.as_bytes())
    }
    pub fn append_delete(&mut self) -> Result<(), LogError> {
        self.append(Kind::Delete, 0, 0, &[])
    }

    /// Appends one record. On failure the file is cut back to its previous length, so a
    /// refused write leaves no partial record behind.
    fn append(&mut self, kind: Kind, a: u64, b: u64, payload: &[u8]) -> Result<(), LogError> {
        let rh = RecordHeader::seal_over(kind, a, b, crate::now_ns(), payload);
        let head = rh.encode();
        if let Err(e) = write_all_vectored_at(&self.file, &head, payload, self.len) {
            let _ = self.file.set_len(self.len);
            self.file_end = self.len;
            return Err(LogError::io(&self.path, "append record", e));
        }
        self.len += RECORD_HEADER_LEN + payload.len() as u64;
        self.file_end = self.file_end.max(self.len);
        self.records += 1;
        self.seal_hasher.add(&rh.checksum);
        self.durability.appended(self.len);
        Ok(())
    }

    /// Makes every appended record durable (fdatasync), and keeps zeros written ahead of the
    /// records so that the next syncs are data-only (see [`LogWriter::sync_point`]).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.sync_point().wait()
    }

    /// The point up to which the records appended so far must be made durable, to be waited
    /// for outside the lock that orders the appends: concurrent fsyncs then share one
    /// `fdatasync`. Before that, when little is left of the zeros written ahead of the
    /// records, writes a new stretch: the sync that follows commits the file's new size and
    /// blocks once, and the following ones only write data into blocks the file already has
    /// (no filesystem journal commit per fsync). A failure to write the zeros (ENOSPC) only
    /// costs that: they are cut off again.
    pub fn sync_point(&mut self) -> SyncPoint {
        if self.file_end < self.len + PREFILL_LOW {
            let to = self.len + PREFILL;
            match self.durability.write_zeros(self.file_end, to) {
                Ok(()) => self.file_end = to,
                Err(e) => {
                    tracing::debug!(log = %self.path.display(), error = %e, "cannot write zeros ahead of the log; syncing without");
                    let _ = self.file.set_len(self.file_end);
                }
            }
        }
        SyncPoint {
            durability: self.durability.clone(),
            upto: self.len,
        }
    }

    /// fdatasync of everything written, with no zeros ahead (sealing, closing).
    fn sync_exact(&mut self) -> Result<(), LogError> {
        self.cut_zeros()?;
        SyncPoint {
            durability: self.durability.clone(),
            upto: self.len,
        }
        .wait()
    }

    /// Cuts off the zeros a sync wrote ahead of the records.
    fn cut_zeros(&mut self) -> Result<(), LogError> {
        if self.file_end > self.len {
            self.file
                .set_len(self.len)
                .map_err(|e| LogError::io(&self.path, "cut the zeros after the log", e))?;
            self.file_end = self.len;
        }
        Ok(())
    }

    /// Appends the seal record, then marks the header sealed; each step is made durable before
    /// the next, so a crash leaves either an unsealed log or a fully sealed one.
    pub fn seal(mut self) -> Result<SealInfo, LogError> {
        let info = SealInfo {
            records: self.records,
            payload_bytes: self.payload_bytes,
            hash: self.seal_hash(),
        };
        self.cut_zeros()?;
        self.append(Kind::Seal, info.records, info.payload_bytes, &info.hash)?;
        self.sync_exact()?;
        self.set_state(LogState::Sealed)?;
        Ok(info)
    }

    /// Marks the log closed cleanly (a clean unmount); it can be reopened and appended to.
    pub fn close_clean(mut self) -> Result<(), LogError> {
        self.sync_exact()?;
        self.set_state(LogState::Closed)
    }

    fn set_state(&mut self, state: LogState) -> Result<(), LogError> {
        self.header.state = state;
        self.file
            .write_all_at(&self.header.encode(), 0)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| LogError::io(&self.path, "update log header", e))
    }
}

/// pwritev of `head` + `payload` at `pos`, continuing after short writes.
fn write_all_vectored_at(
    file: &File,
    head: &[u8],
    payload: &[u8],
    pos: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let total = head.len() + payload.len();
    let mut done = 0usize;
    while done < total {
        let (a, b): (&[u8], &[u8]) = if done < head.len() {
            (&head[done..], payload)
        } else {
            (&payload[done - head.len()..], &[])
        };
        let iov = [IoSlice::new(a), IoSlice::new(b)];
        // SAFETY: iov points at two live slices for the duration of the call; fd is open.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr().cast(),
                2,
                (pos + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "pwritev wrote nothing",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// True if every byte of `file` from `from` to its end is zero (a tail written ahead by a
/// sync, not a torn record).
fn zeros_from(file: &File, from: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = from;
    loop {
        let n = file.read_at(&mut buf, pos)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
}

/// fsync of the directory holding `path`, so a newly created or renamed entry survives a crash.
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), LogError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, "sync directory", e))
}
