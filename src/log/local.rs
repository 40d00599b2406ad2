//! A log held on this host for reading: its file, or (restore keeps small logs so) its bytes
//! in memory, read exactly as the file would be. Restore fetches a chain, verifies it and
//! then reads the payloads a second time; a small log kept in memory costs neither a
//! scratch file nor the two passes over it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LogError, LogReader};

/// A log's bytes, on disk or in memory; `path` names it in every error either way (for a
/// log in memory: where its file would have been).
#[derive(Debug, Clone)]
pub struct LocalLog {
    path: PathBuf,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    File(Arc<File>),
    Memory(Shared),
}

/// Shared bytes a `Cursor` can read.
#[derive(Debug, Clone)]
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl LocalLog {
    /// The log in file `path`, opened.
    pub fn open(path: &Path) -> Result<LocalLog, LogError> {
        let file = File::open(path).map_err(|e| LogError::io(path, "open log", e))?;
        Ok(LocalLog {
            path: path.to_path_buf(),
            data: Data::File(Arc::new(file)),
        })
    }

    /// The log whose bytes are `bytes`, named `path` in errors.
    pub fn in_memory(path: &Path, bytes: Vec<u8>) -> LocalLog {
        LocalLog {
            path: path.to_path_buf(),
            data: Data::Memory(Shared(Arc::new(bytes))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the bytes are held in memory (no file).
    pub fn is_in_memory(&self) -> bool {
        matches!(self.data, Data::Memory(_))
    }

    /// Bytes of the log.
    pub fn len(&self) -> Result<u64, LogError> {
        match &self.data {
            Data::File(f) => f
                .metadata()
                .map(|m| m.len())
                .map_err(|e| LogError::io(&self.path, "stat log", e)),
            Data::Memory(b) => Ok(b.0.len() as u64),
        }
    }

    pub fn is_empty(&self) -> Result<bool, LogError> {
        self.len().map(|n| n == 0)
    }

    /// A verifying reader from the log's start.
    pub fn reader(&self) -> Result<LogReader, LogError> {
        match &self.data {
            Data::File(_) => LogReader::open(&self.path),
            Data::Memory(b) => {
                let len = b.0.len() as u64;
                LogReader::from_input(&self.path, Box::new(std::io::Cursor::new(b.clone())), len)
            }
        }
    }
}

/// Payload reads at an offset, as from the log's file (restore and the mount read a
/// record's payload where the verified model says it is). Read-only: a write is refused.
impl std::os::unix::fs::FileExt for LocalLog {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match &self.data {
            Data::File(f) => f.read_at(buf, offset),
            Data::Memory(b) => {
                let bytes = b.0.as_slice();
                let from = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = buf.len().min(bytes.len() - from);
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                Ok(n)
            }
        }
    }

    fn write_at(&self, _: &[u8], _: u64) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "a local log is read-only",
        ))
    }
}
