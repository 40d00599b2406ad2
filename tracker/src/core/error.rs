//! The error of a core operation: the errno the caller gets, and what caused it.

use std::io;

/// A failed core operation: the errno for the kernel and the error behind it (logged once,
/// by the FUSE adapter).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Error {
    errno: i32,
    source: io::Error,
}

impl Error {
    /// An error that is only an errno (a refusal of the core's own).
    pub fn errno(errno: i32) -> Error {
        Error {
            errno,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The errno to answer with.
    pub fn code(&self) -> i32 {
        self.errno
    }

    /// What caused it.
    pub fn source_error(&self) -> &io::Error {
        &self.source
    }
}

impl From<io::Error> for Error {
    /// The error's own errno, EIO when it has none.
    fn from(source: io::Error) -> Error {
        Error {
            errno: source.raw_os_error().unwrap_or(libc::EIO),
            source,
        }
    }
}

/// Result of a core operation.
pub type OpResult<T> = Result<T, Error>;
