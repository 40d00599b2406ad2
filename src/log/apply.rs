//! Replaying sealed logs onto an image. Every log is verified (and the chain checked) before
//! the first byte of the image is touched, so a bad log never half-applies.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::local::LocalLog;
use super::reader::{verify_reader_with, LogReader, VerifiedLog};
use super::{LogError, Record, RecordMeta};
use crate::Digest;

/// What replaying logs did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub logs: usize,
    pub records: u64,
    pub bytes_written: u64,
    /// Size of the image afterwards.
    pub final_size: u64,
    /// The last rename the logs recorded (the caller moves the image if it wants to mirror it).
    pub renamed_to: Option<String>,
    /// The logs end with the disk removed.
    pub deleted: bool,
    /// Chain hash of the last log: what the next log must name.
    pub chain_hash: Option<Digest>,
}

/// Replays `logs` in order onto `image` (created if missing). The logs must be sealed and
/// form an unbroken chain of one disk and generation.
pub fn apply_logs<P: AsRef<Path>>(logs: &[P], image: &Path) -> Result<ApplySummary, LogError> {
    apply_logs_after(logs, image, None)
}

/// Like [`apply_logs`], and the first log must name `prev` as its previous hash (the chain hash
/// of the last log already in the image).
pub fn apply_logs_after<P: AsRef<Path>>(
    logs: &[P],
    image: &Path,
    prev: Option<&Digest>,
) -> Result<ApplySummary, LogError> {
    let verified = verify_chain(logs, prev)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .map_err(|e| LogError::io(image, "open image", e))?;
    let mut summary = ApplySummary {
        logs: logs.len(),
        ..Default::default()
    };
    for log in logs {
        let log = log.as_ref();
        for record in LogReader::open(log)? {
            apply_record(&file, image, &record?, &mut summary)?;
        }
    }
    file.sync_all()
        .map_err(|e| LogError::io(image, "sync image", e))?;
    summary.final_size = file
        .metadata()
        .map_err(|e| LogError::io(image, "stat image", e))?
        .len();
    summary.chain_hash = verified.last().map(VerifiedLog::chain_hash);
    Ok(summary)
}

/// Verifies every log and that each follows the one before it (same disk and generation,
/// next sequence, previous hash).
pub fn verify_chain<P: AsRef<Path>>(
    logs: &[P],
    prev: Option<&Digest>,
) -> Result<Vec<VerifiedLog>, LogError> {
    verify_readers_with(
        logs.len(),
        |i| LogReader::open(logs[i].as_ref()),
        prev,
        |_, _, _| {},
    )
}

/// [`verify_chain`] of logs held locally, in files or in memory ([`LocalLog`]), handing
/// every record of log `i` (in chain order, each checked against its checksum) to
/// `each(i, meta, record)` as it is read: the chain is read once to verify it and fold it
/// (a [`super::DiskModel`]). On an error the caller must discard whatever `each` built.
pub fn verify_local_chain_with(
    logs: &[LocalLog],
    prev: Option<&Digest>,
    each: impl FnMut(usize, &RecordMeta, Record),
) -> Result<Vec<VerifiedLog>, LogError> {
    verify_readers_with(logs.len(), |i| logs[i].reader(), prev, each)
}

/// The chain check of `count` logs, log `i` read from `open(i)`.
fn verify_readers_with(
    count: usize,
    open: impl Fn(usize) -> Result<LogReader, LogError>,
    prev: Option<&Digest>,
    mut each: impl FnMut(usize, &RecordMeta, Record),
) -> Result<Vec<VerifiedLog>, LogError> {
    let mut out: Vec<VerifiedLog> = Vec::with_capacity(count);
    for i in 0..count {
        let reader = open(i)?;
        let path = reader.path().to_path_buf();
        let path = path.as_path();
        let expected_prev = match out.last() {
            Some(before) => Some(before.chain_hash()),
            None => prev.copied(),
        };
        let v = verify_reader_with(reader, expected_prev.as_ref(), |meta, record| {
            each(i, meta, record)
        })?;
        if let Some(before) = out.last() {
            let (b, h) = (&before.header, &v.header);
            if b.disk_id != h.disk_id || b.generation != h.generation {
                return Err(LogError::WrongDisk {
                    path: path.to_path_buf(),
                    expected: crate::to_hex(&b.disk_id),
                    expected_gen: b.generation,
                    found: crate::to_hex(&h.disk_id),
                    found_gen: h.generation,
                });
            }
            if h.first_sequence != b.sequence + 1 {
                return Err(LogError::OutOfOrder {
                    path: path.to_path_buf(),
                    expected_after: b.sequence,
                    found: h.first_sequence,
                });
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// What a log does to the size of the image it is replayed on: the last size it sets
/// (`truncate`), then how far writes after that reach. Replaying is the only way a size
/// changes (`zero` and `punch` keep it), so `verify` can tell the size a restore ends at
/// without writing one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SizeEffect {
    /// The size set by the last `truncate`, if any.
    pub set_to: Option<u64>,
    /// The end of the furthest write after it (0 when none).
    pub writes_reach: u64,
}

impl SizeEffect {
    /// Reads the records of `log` (already verified by the caller) for their size effect.
    pub fn of_log(log: &Path) -> Result<SizeEffect, LogError> {
        let mut e = SizeEffect::default();
        for record in LogReader::open(log)? {
            match record? {
                Record::Write { offset, data } if !data.is_empty() => {
                    e.writes_reach = e.writes_reach.max(offset + data.len() as u64)
                }
                Record::Truncate { size } => {
                    e = SizeEffect {
                        set_to: Some(size),
                        writes_reach: 0,
                    }
                }
                _ => {}
            }
        }
        Ok(e)
    }

    /// The effect of `self` followed by `next`.
    pub fn then(self, next: SizeEffect) -> SizeEffect {
        match next.set_to {
            Some(_) => next,
            None => SizeEffect {
                set_to: self.set_to,
                writes_reach: self.writes_reach.max(next.writes_reach),
            },
        }
    }

    /// The size of an image of `size` bytes once the log is replayed on it.
    pub fn apply(self, size: u64) -> u64 {
        self.set_to.unwrap_or(size).max(self.writes_reach)
    }
}

fn apply_record(
    file: &File,
    image: &Path,
    record: &Record,
    summary: &mut ApplySummary,
) -> Result<(), LogError> {
    let io = |op| move |e| LogError::io(image, op, e);
    match record {
        Record::Write { offset, data } => {
            file.write_all_at(data, *offset)
                .map_err(io("write image"))?;
            summary.bytes_written += data.len() as u64;
        }
        Record::Truncate { size } => file.set_len(*size).map_err(io("truncate image"))?,
        Record::Zero { offset, len } | Record::Punch { offset, len } => {
            zero_range(file, *offset, *len).map_err(io("punch image"))?
        }
        Record::Flush | Record::Seal(_) => {}
        Record::Rename { name } => summary.renamed_to = Some(name.clone()),
        Record::Delete => summary.deleted = true,
    }
    if !matches!(record, Record::Seal(_)) {
        summary.records += 1;
    }
    Ok(())
}

/// Makes `[offset, offset+len)` read as zero without changing the file size, deallocating it
/// where the filesystem can (so restored images stay sparse).
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = file.metadata()?.len();
    if offset >= size || len == 0 {
        return Ok(());
    }
    let len = len.min(size - offset);
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    // The filesystem cannot punch holes: write zeros instead.
    let zeros = vec![0u8; (len.min(1 << 20)) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}
