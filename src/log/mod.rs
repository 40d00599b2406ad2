//! The `.hrl` change log: a 4 KiB header, then checksummed records (write, truncate, zero,
//! punch, flush, rename, delete) and, once sealed, a seal record whose hash the next log of the
//! same disk names (a chain). Layout in docs/hrl-format.md.
//!
//! - [`LogWriter`] appends (the tracker), seals and closes; [`SyncPoint`] makes its records
//!   durable outside the tracker's lock (group commit);
//! - [`LogReader`] yields only records it verified and stops at a torn tail;
//! - [`verify_sealed`], [`apply_logs`] replay logs onto an image, refusing a broken chain;
//!   [`verify_local_chain_with`] verifies a chain of [`LocalLog`]s (files or bytes in
//!   memory) and hands each record to a fold in the same pass;
//! - [`DiskModel`]: a chain folded onto a range map (which source holds each byte);
//! - [`coalesce`] rewrites logs into the smallest equivalent log.

mod apply;
mod coalesce;
mod commit;
mod error;
mod extents;
pub mod format;
mod local;
pub mod model;
mod reader;
mod writer;

pub use apply::{
    apply_logs, apply_logs_after, verify_chain, verify_local_chain_with, ApplySummary, SizeEffect,
};
pub use coalesce::coalesce;
pub use commit::SyncPoint;
pub use error::LogError;
pub use extents::log_extents;
pub use format::{LogHeader, LogState, HEADER_LEN, RECORD_HEADER_LEN};
pub use local::LocalLog;
pub use model::{DiskModel, Piece, Source};
pub use reader::{verify_sealed, verify_sealed_with, LogEnd, LogReader, RecordMeta, VerifiedLog};
pub use writer::{LogWriter, Recovered};

use crate::Digest;

/// One change (or marker) in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `data` was written at `offset` (the file grows if it ends past the end).
    Write { offset: u64, data: Vec<u8> },
    /// The file was truncated or extended to `size` (new bytes read as zero).
    Truncate { size: u64 },
    /// The range reads as zero, allocation kept (fallocate zero-range). Never changes the size.
    Zero { offset: u64, len: u64 },
    /// The range was deallocated and reads as zero (punch hole). Never changes the size.
    Punch { offset: u64, len: u64 },
    /// The writer asked for durability here (fsync/fdatasync).
    Flush,
    /// The disk was renamed to `name` (a file name in the same directory).
    Rename { name: String },
    /// The disk was removed.
    Delete,
    /// The log is complete: what it holds and the hash over all of it.
    Seal(SealInfo),
}

/// What a seal record commits to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    /// Records before the seal.
    pub records: u64,
    /// Bytes of write data before the seal.
    pub payload_bytes: u64,
    /// blake3 over the immutable header and every record checksum (see format::SealHasher).
    pub hash: Digest,
}

/// The hash by which the next log of a disk names this one: the seal hash of an original log,
/// or, for a coalesced log, the hash of the last original log it replaces.
pub fn chain_hash(header: &LogHeader, seal: &SealInfo) -> Digest {
    if header.is_coalesced() {
        header.coalesced_from
    } else {
        seal.hash
    }
}

#[cfg(test)]
mod tests;
