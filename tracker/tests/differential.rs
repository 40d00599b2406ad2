//! Differential test (like mountpoint-s3's reftests): the same random file operations on a
//! tracker mount and on a plain directory give the same results, trees and contents.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;
use testkit::*;

/// Names the operations pick from: disks (tracked in the root), plain files, a subdirectory.
const NAMES: &[&str] = &["a.img", "b.raw", "c.txt", "d", "sub/e.img", "sub/f"];
const DIRS: &[&str] = &["sub", "sub2"];

#[derive(Debug, Clone)]
enum Op {
    Write {
        f: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    Create {
        f: usize,
    },
    Unlink {
        f: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    Symlink {
        target: usize,
        name: usize,
    },
    Mkdir {
        d: usize,
    },
    Rmdir {
        d: usize,
    },
    Chmod {
        f: usize,
        mode: u32,
    },
    Punch {
        f: usize,
        off: u64,
        len: u64,
    },
    ReadBack {
        f: usize,
        off: u64,
        len: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let n = NAMES.len();
    prop_oneof![
        4 => (0..n, 0..300_000u64, 0..70_000usize, any::<u64>())
            .prop_map(|(f, off, len, seed)| Op::Write { f, off, len, seed }),
        1 => (0..n, 0..400_000u64).prop_map(|(f, size)| Op::Truncate { f, size }),
        2 => (0..n).prop_map(|f| Op::Create { f }),
        1 => (0..n).prop_map(|f| Op::Unlink { f }),
        1 => (0..n, 0..n).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (0..n, 0..n).prop_map(|(from, to)| Op::Link { from, to }),
        1 => (0..n, 0..n).prop_map(|(target, name)| Op::Symlink { target, name }),
        1 => (0..DIRS.len()).prop_map(|d| Op::Mkdir { d }),
        1 => (0..DIRS.len()).prop_map(|d| Op::Rmdir { d }),
        1 => (0..n, prop::sample::select(vec![0o600u32, 0o644, 0o400, 0o755]))
            .prop_map(|(f, mode)| Op::Chmod { f, mode }),
        1 => (0..n, 0..300_000u64, 0..100_000u64).prop_map(|(f, off, len)| Op::Punch { f, off, len }),
        1 => (0..n, 0..300_000u64, 0..70_000usize).prop_map(|(f, off, len)| Op::ReadBack { f, off, len }),
    ]
}

/// The tracker refuses a second name for a disk (docs/tracker.md, hard links): a link whose
/// source is a disk's inode, or whose new name is a disk name in the root, fails with EMLINK
/// where a plain directory would succeed. `None` when the plain directory's answer stands.
fn refused_link(root: &Path, op: &Op) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let Op::Link { from, to } = op else {
        return None;
    };
    let from_md = fs::symlink_metadata(root.join(NAMES[*from])).ok()?;
    let to_path = root.join(NAMES[*to]);
    let parent_missing = to_path.parent().is_some_and(|d| !d.is_dir());
    if !from_md.is_file() || parent_missing || fs::symlink_metadata(&to_path).is_ok() {
        return None;
    }
    let root_disks = ["a.img", "b.raw"];
    let is_disk_inode = root_disks.iter().any(|d| {
        fs::symlink_metadata(root.join(d)).is_ok_and(|md| md.is_file() && md.ino() == from_md.ino())
    });
    (is_disk_inode || root_disks.contains(&NAMES[*to])).then_some(libc::EMLINK)
}

/// Applies one op under `root`; the outcome is what must agree between the two trees.
fn apply(root: &Path, op: &Op) -> Result<Vec<u8>, i32> {
    let p = |i: usize| root.join(NAMES[i]);
    let code = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    match op {
        Op::Write { f, off, len, seed } => {
            let file = OpenOptions::new().write(true).open(p(*f)).map_err(code)?;
            file.write_all_at(&pattern(*seed, *len), *off)
                .map_err(code)?;
            Ok(vec![])
        }
        Op::Truncate { f, size } => {
            let file = OpenOptions::new().write(true).open(p(*f)).map_err(code)?;
            file.set_len(*size).map_err(code)?;
            Ok(vec![])
        }
        Op::Create { f } => OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(p(*f))
            .map(|_| vec![])
            .map_err(code),
        Op::Unlink { f } => fs::remove_file(p(*f)).map(|_| vec![]).map_err(code),
        Op::Rename { from, to } => fs::rename(p(*from), p(*to)).map(|_| vec![]).map_err(code),
        Op::Link { from, to } => fs::hard_link(p(*from), p(*to))
            .map(|_| vec![])
            .map_err(code),
        Op::Symlink { target, name } => std::os::unix::fs::symlink(NAMES[*target], p(*name))
            .map(|_| vec![])
            .map_err(code),
        Op::Mkdir { d } => fs::create_dir(root.join(DIRS[*d]))
            .map(|_| vec![])
            .map_err(code),
        Op::Rmdir { d } => fs::remove_dir(root.join(DIRS[*d]))
            .map(|_| vec![])
            .map_err(code),
        Op::Chmod { f, mode } => fs::set_permissions(p(*f), fs::Permissions::from_mode(*mode))
            .map(|_| vec![])
            .map_err(code),
        Op::Punch { f, off, len } => {
            let file = OpenOptions::new().write(true).open(p(*f)).map_err(code)?;
            // SAFETY: plain syscall.
            let r = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    *off as i64,
                    (*len).max(1) as i64,
                )
            };
            if r != 0 {
                return Err(code(std::io::Error::last_os_error()));
            }
            Ok(vec![])
        }
        Op::ReadBack { f, off, len } => {
            let file = OpenOptions::new().read(true).open(p(*f)).map_err(code)?;
            let mut buf = vec![0u8; *len];
            let n = file.read_at(&mut buf, *off).map_err(code)?;
            buf.truncate(n);
            Ok(buf)
        }
    }
}

/// Everything observable about a tree: per path, kind, mode, link count, size, content.
fn snapshot(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
    for e in fs::read_dir(root.join(rel)).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if hrl::naming::classify(&name).is_some() {
            continue; // the tracker's own files exist only on the mount
        }
        let r = rel.join(&name);
        let md = fs::symlink_metadata(root.join(&r)).unwrap();
        let key = r.display().to_string();
        if md.file_type().is_symlink() {
            let t = fs::read_link(root.join(&r)).unwrap();
            out.insert(key, format!("link -> {}", t.display()));
        } else if md.is_dir() {
            out.insert(key, format!("dir {:o}", md.mode() & 0o7777));
            snapshot(root, &r, out);
        } else {
            let data = fs::read(root.join(&r)).unwrap();
            out.insert(
                key,
                format!(
                    "file {:o} nlink {} size {} blake3 {}",
                    md.mode() & 0o7777,
                    md.nlink(),
                    md.len(),
                    hrl::to_hex(&hrl::chunk::block_digest(&data))
                ),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn mount_behaves_like_a_plain_directory(ops in prop::collection::vec(op(), 1..40)) {
        let tmp = scratch();
        let reference = tmp.path().join("ref");
        let backing = tmp.path().join("vms");
        for d in [&reference, &backing] {
            fs::create_dir_all(d.join("sub")).unwrap();
        }
        let m = Mounted::in_place(&backing, &tmp.path().join("run"));
        for (i, op) in ops.iter().enumerate() {
            let want = match refused_link(&reference, op) {
                Some(e) => Err(e),
                None => apply(&reference, op),
            };
            let got = apply(&m.mountpoint, op);
            prop_assert_eq!(&got, &want, "op #{} {:?} differs", i, op);
        }
        let mut a = BTreeMap::new();
        let mut b = BTreeMap::new();
        snapshot(&reference, Path::new(""), &mut a);
        snapshot(&m.mountpoint, Path::new(""), &mut b);
        prop_assert_eq!(&b, &a);
        // Sealing whatever disks the ops left behind works and every log verifies.
        let r = m.request(&hrl::control::Request::Seal);
        if r.ok {
            for s in r.disks.unwrap() {
                hrl::log::verify_sealed(&m.mountpoint.join(&s.log), None).unwrap();
            }
        } else {
            // The one seal refusal that can happen: a disk renamed over another disk whose
            // sealed logs hold the same sequence numbers.
            prop_assert!(r.error.as_deref().unwrap_or("").contains("already exists"), "{:?}", r.error);
        }
        m.unmount();
        // The backing directory after unmount is the same tree.
        let mut c = BTreeMap::new();
        snapshot(&backing, Path::new(""), &mut c);
        prop_assert_eq!(&c, &a);
    }
}
