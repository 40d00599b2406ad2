//! `hrl-tracker`: a FUSE layer over an image directory that records every change of its disk
//! images into `.hrl` logs. See docs/tracker.md; the binary (`main.rs`) only calls
//! [`cli::main`].
//!
//! Layers, each using only those below it:
//! - `cli`, `mount`: the command line; mounting, daemonizing, signals.
//! - `fuse_adapter`: fuser requests to [`core`] calls; `control_server`: the shipper's socket
//!   (with [`descriptors`]: read-only descriptors of the backing files for the shipper).
//! - [`seal`]: the one-instant cut of every disk's log.
//! - [`tracking`]: which files are disks, their lifecycle; implements the core's
//!   [`core::ChangeSink`].
//! - [`disk`]: one disk's log, bitmap and write path (mark, log, change the image).
//! - [`core`]: the passthrough filesystem, knowing nothing of disks.
//! - [`sys`]: the system calls (over `rustix`); [`glob`], [`error`].

pub mod bypass;
pub mod cli;
pub mod control_server;
pub mod core;
pub mod descriptors;
pub mod disk;
pub mod error;
pub mod fuse_adapter;
pub mod glob;
pub mod metrics;
pub mod mount;
pub mod seal;
pub mod sys;
pub mod systemd;
pub mod tracking;
