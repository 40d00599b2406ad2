//! Serving a recovery point over FUSE without downloading it (`hrl-shipper mount`): each
//! disk of the point is a file whose reads fetch only the base chunks they need (verified,
//! decompressed, cached, prefetched ahead of sequential readers), with the point's logs laid
//! over them; writes go to a throwaway copy-on-write overlay. One concern per module:
//!
//! - the model of which source (base, a log record's payload, zeros) holds each byte is
//!   [`hrl::log::DiskModel`], and a disk is loaded at mount (index, log chain verified,
//!   model built) by [`crate::store::logs::load_disk`], both shared with restore;
//! - [`blocks`], [`cache`]: base chunks on demand, one download per chunk, bounded LRU;
//! - [`overlay`]: the copy-on-write overlay (sparse file and granule map);
//! - [`core`]: reads and writes without FUSE (what tests drive);
//! - [`fuse`]: the thin fuser adapter;
//! - [`session`], [`unmount`]: lease, mount, test record, cleanup, also after a kill -9.

pub mod blocks;
pub mod cache;
pub mod core;
pub mod error;
pub mod fuse;
pub mod overlay;
pub mod session;
pub mod unmount;

pub use self::core::{CoreOptions, MountCore};
pub use error::MountError;
pub use session::{MountInfo, MountSpec, Serving};
