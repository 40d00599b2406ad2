//! Errors of the log layer. Each message names the file, the byte offset where it matters,
//! and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },

    #[error("{path}: not a valid .hrl log header: {reason}")]
    BadHeader { path: PathBuf, reason: String },

    #[error(
        "{path}: log is not sealed: {reason} at byte {offset}; only sealed logs can be verified, \
         shipped or applied (seal it through the tracker first, or it was cut short in transit)"
    )]
    NotSealed {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{path}: seal record at byte {offset} does not match the log ({reason}); the log is corrupt")]
    SealMismatch {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{path}: {extra} unexpected bytes after the seal record at byte {offset}; the log is corrupt")]
    TrailingData {
        path: PathBuf,
        offset: u64,
        extra: u64,
    },

    #[error(
        "{path}: broken chain: the log names previous hash {expected_prev} but the log before it \
         hashes to {actual_prev}; apply logs in sequence order with none missing"
    )]
    ChainBroken {
        path: PathBuf,
        expected_prev: String,
        actual_prev: String,
    },

    #[error("{path}: belongs to disk {found} generation {found_gen}, but the logs before it are of disk {expected} generation {expected_gen}")]
    WrongDisk {
        path: PathBuf,
        expected: String,
        expected_gen: u64,
        found: String,
        found_gen: u64,
    },

    #[error("{path}: sequence {found} does not follow sequence {expected_after}; a log is missing or out of order")]
    OutOfOrder {
        path: PathBuf,
        expected_after: u64,
        found: u64,
    },

    #[error("{path}: the log is sealed and cannot be appended to")]
    AlreadySealed { path: PathBuf },

    #[error("{path}: record at byte {offset}: {reason}")]
    BadRecord {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

impl LogError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: std::io::Error) -> Self {
        LogError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            LogError::Io { path, .. }
            | LogError::BadHeader { path, .. }
            | LogError::NotSealed { path, .. }
            | LogError::SealMismatch { path, .. }
            | LogError::TrailingData { path, .. }
            | LogError::ChainBroken { path, .. }
            | LogError::WrongDisk { path, .. }
            | LogError::OutOfOrder { path, .. }
            | LogError::AlreadySealed { path }
            | LogError::BadRecord { path, .. } => path,
        }
    }

    /// The errno of an underlying I/O error (ENOSPC, EIO, …), for refusing a writer with it.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            LogError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
