//! `hrl-shipper` as a library: the binary (`main.rs`) only calls [`cli::main`], so tests
//! can drive a cycle, a restore or the store in-process. One folder per concern:
//!
//! - [`store`] — the only code that talks to `object_store`: typed errors, chunks, base
//!   indexes, log chains, manifests, targets;
//! - [`replicate`] — the replication cycle: plan, base copies and resyncs, seal, ship,
//!   commit, release; the 50% rule; the tracker's control socket;
//! - [`recover`] — restore and verify recovery points, choose one by id or time;
//! - [`retain`] — retention: keep policy, merging old logs into new bases, collection;
//! - [`service`] — the loop per directory, retry schedule, resync window, config, cycle
//!   lock, the status shown to operators;
//! - [`cli`] — the command line.

pub mod cli;
pub mod mount;
pub mod private;
pub mod recover;
pub mod replicate;
pub mod retain;
pub mod service;
pub mod store;
