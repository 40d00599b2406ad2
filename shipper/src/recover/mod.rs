//! Recovery: build a point into a directory (`restore`), check points without writing a
//! disk (`verify`), choose a point by id or time (`points`), fail over to a point and take
//! the group (`failover`, whole or by `delta`), leaving what reverse replication needs
//! (`reverse`); hand a group over at a final point (`planned`); a first pass under hidden
//! names while the other side is live (`prepare`, its trust record `marker`).

pub mod delta;
pub mod failover;
pub mod marker;
pub mod planned;
pub mod points;
pub mod prepare;
pub mod restore;
pub mod reverse;
pub mod verify;
