//! Files of a test: sealed logs of a disk, their replay, byte-for-byte comparison, and
//! deterministic data to write.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bins::shipper_bin_if_built;
use crate::mount::scratch;

/// Sealed logs of `disk` in `dir`, in sequence order.
pub fn sealed_logs(dir: &Path, disk: &str) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            match hrl::naming::classify(&name)? {
                hrl::naming::HrlFile::SealedLog { disk: d, seq, .. } if d == disk => {
                    Some((seq, dir.join(name)))
                }
                _ => None,
            }
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// Replays `logs` onto a copy of `base` with the library, and with `hrl-shipper log apply`
/// when that binary exists; returns the replayed image (library result).
pub fn replay(base: &Path, logs: &[PathBuf], out_dir: &Path) -> PathBuf {
    let lib = out_dir.join("replayed-lib.img");
    std::fs::copy(base, &lib).unwrap();
    hrl::log::apply_logs(logs, &lib).expect("apply_logs");
    if let Some(shipper) = shipper_bin_if_built() {
        let cli = out_dir.join("replayed-cli.img");
        std::fs::copy(base, &cli).unwrap();
        let st = Command::new(shipper)
            .args(["log", "apply"])
            .args(logs)
            .arg("--to")
            .arg(&cli)
            .status()
            .unwrap();
        assert!(st.success(), "hrl-shipper log apply failed");
        assert_files_equal(&lib, &cli);
    }
    lib
}

/// Replays the sealed logs of `disk` in `dir` onto a copy of `base` and asserts the result
/// equals `live`, the image as the tracker left it.
pub fn assert_replay_equals(base: &Path, dir: &Path, disk: &str, live: &Path) {
    let out = scratch();
    let replayed = replay(base, &sealed_logs(dir, disk), out.path());
    assert_files_equal(&replayed, live);
}

/// Asserts two files have equal size and bytes, naming the first difference.
pub fn assert_files_equal(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!(
            "{} and {} differ first at byte {i} (0x{i:x})",
            a.display(),
            b.display()
        );
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` pseudo-random bytes that are a function of `seed` (blake3's output stream): no two
/// blocks alike, so deduplication and compression hide nothing.
pub fn random_bytes(seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Allocated bytes of a file (to check sparseness).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}
