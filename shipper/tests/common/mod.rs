//! The shipper tests' fixtures live in the `testkit` crate (`use testkit::*;`, the fixture
//! is `testkit::Site`). This re-export keeps files that include `mod common;` (the chaos
//! test) compiling; new tests use testkit directly.
pub use testkit::*;
