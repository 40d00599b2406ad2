//! The FUSE transport probe (`examples/fuse_transport.rs`) kept from rotting: mounted over
//! /dev/fuse and over io_uring, a pattern written through the mount (pwrite at unaligned
//! offsets, a write larger than one request, an O_DIRECT `dd`) reads back the same through
//! the mount and lands byte for byte in the backing file. Over io_uring the probe's own
//! counters must show the requests came over the ring. Root only; the io_uring half is
//! skipped, with the reason printed, when `enable_uring` cannot be set.
#![allow(clippy::unwrap_used)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::*;

const MIB: usize = 1 << 20;
const DISK_LEN: usize = 8 * MIB;
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets enable_uring to Y and puts the old value back on drop.
struct UringSwitch(String);

impl UringSwitch {
    fn on() -> Result<UringSwitch, String> {
        let old =
            std::fs::read_to_string(ENABLE_URING).map_err(|e| format!("{ENABLE_URING}: {e}"))?;
        std::fs::write(ENABLE_URING, "Y").map_err(|e| format!("write {ENABLE_URING}: {e}"))?;
        Ok(UringSwitch(old.trim().to_string()))
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = std::fs::write(ENABLE_URING, &self.0);
    }
}

/// A running probe; unmounts and kills it on drop (a failing test included).
struct Probe {
    child: Option<Child>,
    mnt: PathBuf,
}

impl Probe {
    fn start(bin: &Path, backing: &Path, mnt: &Path, transport: &[&str]) -> Probe {
        let child = Command::new(bin)
            .arg("--backing")
            .arg(backing)
            .args(transport)
            .arg(mnt)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut p = Probe {
            child: Some(child),
            mnt: mnt.to_path_buf(),
        };
        let disk = mnt.join("disk");
        wait_until(Duration::from_secs(10), "the probe's mount", || {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("the probe exited before mounting: {st}");
                }
            }
            is_mounted(mnt) && std::fs::metadata(&disk).is_ok_and(|m| m.len() == DISK_LEN as u64)
        });
        p
    }

    /// Unmounts, waits for the probe to exit and returns its stderr.
    fn stop(mut self) -> String {
        let st = Command::new("umount").arg(&self.mnt).status().unwrap();
        assert!(st.success(), "umount {}", self.mnt.display());
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        assert!(out.status.success(), "probe exit {}", out.status);
        assert!(!is_mounted(&self.mnt), "mount left behind");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            force_unmount(&self.mnt);
            let _ = c.kill();
            let _ = c.wait();
        }
        force_unmount(&self.mnt);
    }
}

/// The counter `name=N` of the probe's last stats line.
fn stat(stderr: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("hrlprobe-stats"))
        .unwrap_or_else(|| panic!("no stats line in:\n{stderr}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// Writes a pattern through the mount in several shapes; returns the expected content.
fn write_through(mnt: &Path, tmp: &Path) -> Vec<u8> {
    let disk = mnt.join("disk");
    let mut expect = vec![0u8; DISK_LEN];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    // Unaligned small writes and one larger than a request (1 MiB max_write: two requests).
    for (i, (off, len)) in [
        (1usize, 4095usize),
        (4096 * 3 + 17, 100),
        (MIB - 5, MIB + 4096 + 9),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(10 + i as u64, len);
        f.write_all_at(&data, off as u64).unwrap();
        expect[off..off + len].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    // O_DIRECT writes, 64 KiB blocks, through dd (its own process, as a VM would).
    let src = tmp.join("dd-src");
    let block = pattern(99, 256 * 1024);
    std::fs::write(&src, &block).unwrap();
    let st = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=64k",
            "seek=64",
            "oflag=direct",
            "conv=notrunc,fsync",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success(), "dd through the mount");
    expect[64 * 65536..64 * 65536 + block.len()].copy_from_slice(&block);
    expect
}

fn round_trip(bin: &Path, transport: &[&str]) -> String {
    let tmp = scratch();
    let backing = tmp.path().join("backing.img");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::write(&backing, vec![0u8; DISK_LEN]).unwrap();
    let probe = Probe::start(bin, &backing, &mnt, transport);
    let expect = write_through(&mnt, tmp.path());
    let through = std::fs::read(mnt.join("disk")).unwrap();
    assert!(
        through == expect,
        "{transport:?}: the mount reads back other bytes than written"
    );
    let stderr = probe.stop();
    let on_disk = std::fs::read(&backing).unwrap();
    assert!(
        on_disk == expect,
        "{transport:?}: the backing file differs from what was written"
    );
    stderr
}

#[test]
fn probe_carries_payloads_over_dev_and_uring() {
    if !is_root() {
        println!("skipped: needs root (mount(2), /dev/fuse)");
        return;
    }
    let bin = example_bin("fuse_transport", "hrl-tracker");
    let stderr = round_trip(&bin, &["--transport", "dev", "--threads", "2"]);
    assert_eq!(stat(&stderr, "uring"), 0, "{stderr}");
    assert!(stat(&stderr, "dev") > 0, "{stderr}");

    let switch = match UringSwitch::on() {
        Ok(s) => s,
        Err(why) => {
            println!("io_uring half skipped: enable_uring cannot be set ({why})");
            return;
        }
    };
    let stderr = round_trip(&bin, &["--transport", "uring", "--depth", "2"]);
    drop(switch);
    // Every request after registration comes over the ring: the writes, reads and
    // fsyncs of the round trip are far more than the few before it.
    let (dev, uring) = (stat(&stderr, "dev"), stat(&stderr, "uring"));
    assert!(
        uring > 20 && uring > 4 * dev,
        "requests dev={dev} uring={uring}:\n{stderr}"
    );
}
