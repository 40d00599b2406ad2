//! What a read or write of a mounted point can fail with, and the errno FUSE answers.

/// A failed request on a mounted point. Every variant that means "the bytes cannot be
/// given" names the object or disk, so the log line tells the operator what is damaged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MountError {
    /// A store object the read needs could not be fetched or did not verify.
    #[error("{object}: {why}")]
    Unreadable { object: String, why: String },
    /// The disk's index or log chain did not load or verify at mount: no byte of it is
    /// trustworthy.
    #[error("disk {disk} cannot be served: {why}")]
    Broken { disk: String, why: String },
    /// A write or read beyond the disk's recorded size.
    #[error("offset {offset} is past the end of disk {disk} ({size} bytes)")]
    PastEnd {
        disk: String,
        offset: u64,
        size: u64,
    },
    /// `--read-only`.
    #[error("the mount is read-only")]
    ReadOnly,
    /// The local overlay or a local log copy failed.
    #[error("local {what}: {why}")]
    Local { what: String, why: String },
    /// No such disk.
    #[error("no such disk")]
    NoDisk,
}

impl MountError {
    /// The errno answering a request that failed with this.
    pub fn errno(&self) -> i32 {
        match self {
            MountError::Unreadable { .. } | MountError::Broken { .. } => libc::EIO,
            MountError::Local { .. } => libc::EIO,
            MountError::PastEnd { .. } => libc::ENOSPC,
            MountError::ReadOnly => libc::EROFS,
            MountError::NoDisk => libc::ENOENT,
        }
    }

    pub(crate) fn local(what: impl Into<String>, e: impl std::fmt::Display) -> MountError {
        MountError::Local {
            what: what.into(),
            why: e.to_string(),
        }
    }
}

pub type MountResult<T> = Result<T, MountError>;
