//! Test support for hrl's integration tests (a dev-dependency of hrl-tracker and
//! hrl-shipper, never published). Everything here is real: FUSE mounts of the tracker
//! binary, loop devices, moto and Azurite servers, child processes; every guard undoes what
//! it made on drop, so a failing test leaves no mount, loop device, server or user behind.
//!
//! Which fixture to use:
//! - a shipper test: [`Site`] (a protected directory, a store, a state directory, the
//!   shipper's commands); `site.mount()` for the real tracker, [`Site::with_stand_in`]
//!   where no FUSE is needed;
//! - a tracker test: [`scratch`] and [`Mounted`];
//! - waiting for anything: [`wait_until`] / [`wait_for`], never a hand-written loop.
//!
//! Failing loudly is this crate's job: its helpers panic with what went wrong.
#![allow(clippy::unwrap_used)]

pub mod bins;
pub mod block;
pub mod files;
pub mod holder;
pub mod mount;
pub mod process;
pub mod proxy;
pub mod site;
pub mod stand_in;
pub mod store;
pub mod user;
pub mod wait;

pub use bins::{example_bin, shipper_bin, shipper_bin_if_built, tracker_bin};
pub use block::{LoopFs, ReadOnly, Tmpfs, Undo};
pub use files::{
    allocated, assert_files_equal, assert_files_equal as assert_same_file, assert_replay_equals,
    pattern, random_bytes, replay, sealed_logs,
};
pub use holder::Holder;
pub use mount::{force_unmount, is_mounted, request_at, scratch, Mounted};
pub use process::{
    kill9_at_stop_point, kill9_at_stop_point_within, kill9_if_it_reaches, run, signal,
    spawn_paused_at, wait_exit, KillOnDrop, FAILOVER_FINAL_PASS_STOPS,
};
pub use site::{ok, shipper, shipper_command, stderr, Site};
pub use stand_in::FakeTracker;
pub use store::{free_port, Server, ServerKind, AZURITE_KEY};
pub use user::TestUser;
pub use wait::{poll, wait_for, wait_until};
