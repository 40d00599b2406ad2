//! Errors of tracking setup and of the control operations.

use std::io;

use hrl::log::LogError;

/// Errors of tracking setup and control operations.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Bitmap(#[from] hrl::bitmap::BitmapError),
    #[error("no tracked disk named {0:?} in this mount (see `hrl-tracker status`)")]
    NoSuchDisk(String),
    #[error(
        "seal failed for {disk}: {reason}; its active log keeps receiving changes, retry the seal"
    )]
    SealFailed { disk: String, reason: String },
}

impl TrackError {
    /// The error a writer gets when tracking refuses its change (ENOSPC reserving a new
    /// disk's bitmap reaches the creator as ENOSPC).
    pub fn into_io(self) -> io::Error {
        match self {
            TrackError::Io { source, .. } => source,
            TrackError::Log(l) => {
                io::Error::from_raw_os_error(l.raw_os_error().unwrap_or(libc::EIO))
            }
            TrackError::Bitmap(hrl::bitmap::BitmapError::Io { source, .. }) => {
                io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(libc::EIO))
            }
            _ => io::Error::from_raw_os_error(libc::EIO),
        }
    }
}
