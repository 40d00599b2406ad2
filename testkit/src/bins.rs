//! Where the binaries under test are. Cargo's `CARGO_BIN_EXE_*` exists only while compiling
//! a crate's own integration tests, so this crate finds them at run time: nextest's
//! `NEXTEST_BIN_EXE_*` when set, else beside the test binary's profile directory
//! (`target/<profile>/deps/<test>` → `target/<profile>/<bin>`), where every build of the
//! workspace puts them.

use std::path::{Path, PathBuf};

/// `target/<profile>/<name>` if it was built.
pub fn built(name: &str) -> Option<PathBuf> {
    for var in [
        format!("NEXTEST_BIN_EXE_{name}"),
        format!("NEXTEST_BIN_EXE_{}", name.replace('-', "_")),
    ] {
        if let Some(p) = std::env::var_os(var) {
            return Some(PathBuf::from(p));
        }
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent().and_then(Path::parent)?.join(name);
    p.exists().then_some(p)
}

/// The path of binary `name`; panics saying how to build it when it is missing.
pub fn required(name: &str, package: &str) -> PathBuf {
    built(name).unwrap_or_else(|| {
        panic!(
            "the {name} binary is missing: build it first (cargo build -p {package}; \
             nextest --workspace does)"
        )
    })
}

/// Example `name` of `package` (`target/<profile>/examples/<name>`); panics saying how to
/// build it when it is missing (`cargo nextest run --workspace` builds examples too).
pub fn example_bin(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join(name));
    p.filter(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "the example {name} is missing: build it first (cargo build -p {package} --examples)"
        )
    })
}

/// The tracker binary.
pub fn tracker_bin() -> PathBuf {
    required("hrl-tracker", "hrl-tracker")
}

/// The shipper binary.
pub fn shipper_bin() -> PathBuf {
    required("hrl-shipper", "hrl-shipper")
}

/// The shipper binary when the build made it (tracker tests use it where it exists).
pub fn shipper_bin_if_built() -> Option<PathBuf> {
    built("hrl-shipper")
}
