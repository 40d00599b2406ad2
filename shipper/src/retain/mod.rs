//! Retention of recovery points (docs/store-layout.md, "Retention"): which points to keep
//! ([`policy`], pure), merging the logs up to the oldest kept point into a new base
//! ([`merge`]), what the kept points need ([`mark`]) and collecting the rest after a grace
//! period ([`sweep`]); [`prune`] runs them in the order that keeps every kept point
//! restorable after a kill at any step.

pub mod mark;
pub mod merge;
pub mod policy;
pub mod prune;
pub mod sweep;
