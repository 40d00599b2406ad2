//! Replication: the cycle (`cycle`) that seals, ships and commits a recovery point — its
//! `plan` (pure), `bases`, `ship`, `commit` — with what it needs: base copies (`copy`) and resyncs (`resync`), the store checks before a
//! commit (`presence`), the fence of a group's owner (`owner`), changes made outside the
//! tracker (`bypass`), a state out of step with the store (`reconcile`), the 50% rule
//! (`budget`), the tracker's control socket (`tracker`), reading the backing files through
//! the tracker's read-only descriptors instead of the mount (`local`), the cycle's scratch directory
//! (`workdir`) and the crash stop points of tests (`stop`).

pub mod app;
pub mod bases;
pub mod budget;
pub mod bypass;
pub mod commit;
pub mod context;
pub mod copy;
pub mod cycle;
pub mod local;
pub mod owner;
pub mod plan;
pub mod presence;
pub mod progress;
pub mod reconcile;
pub mod resync;
pub mod ship;
pub mod stop;
pub mod tracker;
pub mod workdir;
