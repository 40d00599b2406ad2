//! Recovery: build a point into a directory (`restore`), check points without writing a
//! disk (`verify`), choose a point by id or time (`points`). Next: failover and failback.

pub mod points;
pub mod restore;
pub mod verify;
