//! The tracker tests' fixtures live in the `testkit` crate (`use testkit::*;`). This
//! re-export keeps a file that includes this module by path (the shipper's chaos test)
//! compiling; new tests use testkit directly.
pub use testkit::*;
