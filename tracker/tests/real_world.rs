//! Real writers through the mount: a loop device with ext4, qemu-img/qemu-io on VHDX and
//! VPC images, and fsx. Each replays the sealed logs and compares with the live image.

#![allow(clippy::unwrap_used)] // tests may unwrap

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hrl::control::Request;
use testkit::*;

/// Detaches a loop device on drop.
struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// Unmounts a filesystem on drop.
struct Mnt(PathBuf);
impl Drop for Mnt {
    fn drop(&mut self) {
        force_unmount(&self.0);
    }
}

fn empty_file(p: &Path) {
    std::fs::File::create(p).unwrap();
}

#[test]
fn loop_device_with_ext4_replays_to_a_clean_filesystem() {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let img = m.path("fs.raw");
    run(Command::new("truncate").args(["-s", "128M"]).arg(&img));
    let pre_mkfs = tmp.path().join("pre-mkfs.raw");
    run(Command::new("truncate").args(["-s", "128M"]).arg(&pre_mkfs));

    let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img))
        .trim()
        .to_string();
    let lo = Loop(dev.clone());
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev));
    let ext = tmp.path().join("ext");
    std::fs::create_dir_all(&ext).unwrap();
    run(Command::new("mount").arg(&dev).arg(&ext));
    let ext_guard = Mnt(ext.clone());
    for i in 0..40u64 {
        std::fs::write(
            ext.join(format!("f{i}")),
            pattern(i, 10_000 + (i as usize) * 7_919),
        )
        .unwrap();
    }
    std::fs::create_dir_all(ext.join("d/e")).unwrap();
    std::fs::write(ext.join("d/e/big"), pattern(99, 5 << 20)).unwrap();
    for i in (0..40).step_by(3) {
        std::fs::remove_file(ext.join(format!("f{i}"))).unwrap();
    }
    run(&mut Command::new("sync"));
    run(Command::new("umount").arg(&ext));
    drop(ext_guard);
    run(Command::new("losetup").arg("-d").arg(&dev));
    std::mem::forget(lo);

    m.seal();
    let out = scratch();
    let replayed = replay(&pre_mkfs, &sealed_logs(&m.mountpoint, "fs.raw"), out.path());
    assert_files_equal(&replayed, &img);
    run(Command::new("fsck.ext4").args(["-n", "-f"]).arg(&replayed));
    m.unmount();
}

fn qemu_case(format: &str, name: &str) {
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let m = Mounted::in_place(&dir, &tmp.path().join("run"));
    let img = m.path(name);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(&img)
        .arg("64M"));
    let mut seed = 12345u64;
    for i in 0..60 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (seed >> 33) % (60 << 20);
        let len = 512 + (seed >> 20) % (256 << 10);
        let cmd = format!("write -P {} {} {}", i % 250 + 1, off, len);
        run(Command::new("qemu-io")
            .args(["-f", format, "-c", &cmd])
            .arg(&img));
        if i == 30 {
            m.seal();
        }
    }
    m.seal();
    let base = tmp.path().join("empty");
    empty_file(&base);
    let out = scratch();
    let replayed = replay(&base, &sealed_logs(&m.mountpoint, name), out.path());
    run(Command::new("qemu-img")
        .args(["compare", "-f", format, "-F", format])
        .arg(&replayed)
        .arg(&img));
    if format != "vpc" {
        // qemu-img has no consistency check for vpc.
        run(Command::new("qemu-img")
            .args(["check", "-f", format])
            .arg(&replayed));
    }
    assert_files_equal(&replayed, &img);
    m.unmount();
}

#[test]
fn qemu_vhdx_replays_to_an_equal_image() {
    qemu_case("vhdx", "disk.vhdx");
}

#[test]
fn qemu_vpc_replays_to_an_equal_image() {
    qemu_case("vpc", "disk.vhd");
}

/// `fsx` on PATH or in ~/.cargo/bin.
fn fsx_bin() -> PathBuf {
    if let Ok(p) = which("fsx") {
        return p;
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cargo/bin/fsx");
    assert!(
        p.exists(),
        "fsx is not installed: run `cargo install fsx --locked` (scripts/install-deps does it)"
    );
    p
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}

/// fsx through the mount on a tracked disk, while another thread seals all along, applies
/// each sealed log to a replica and acks it (as the shipper does); at the end the replica
/// equals the image. The backing directory is a tmpfs so that the run measures the tracker,
/// not the shared disk's latency. `HRL_FSX_OPS` sets the operation count.
#[test]
fn fsx_on_a_tracked_disk_with_concurrent_seals() {
    let ops: u64 = std::env::var("HRL_FSX_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = scratch();
    let fs = tmp.path().join("tmpfs");
    std::fs::create_dir_all(&fs).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4g", "tmpfs"])
        .arg(&fs));
    let _tmpfs = Mnt(fs.clone());
    let dir = fs.join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let m = Arc::new(Mounted::in_place(&dir, &tmp.path().join("run")));
    let img = m.path("fsx.img");
    empty_file(&img);
    // On the tmpfs too: applying (and syncing) must keep up with fsx.
    let replica = fs.join("replica.img");
    empty_file(&replica);
    let stop = Arc::new(AtomicBool::new(false));
    fn ship(m: &Mounted, replica: &Path, prev: &mut Option<hrl::Digest>) {
        let r = m.request(&Request::Seal);
        assert!(r.ok, "seal under load failed: {:?}", r.error);
        for s in r.disks.unwrap() {
            let log = m.mountpoint.join(&s.log);
            let sum = hrl::log::apply_logs_after(&[&log], replica, prev.as_ref())
                .expect("apply the sealed log to the replica");
            *prev = sum.chain_hash;
            let a = m.request(&Request::Ack {
                disk: s.disk.clone(),
                seq: s.seq,
                disk_id: None,
            });
            assert!(a.ok, "ack failed: {:?}", a.error);
        }
    }
    let sealer = {
        let m = m.clone();
        let stop = stop.clone();
        let replica = replica.clone();
        std::thread::spawn(move || {
            let mut prev = None;
            let mut seals = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                ship(&m, &replica, &mut prev);
                seals += 1;
            }
            (seals, prev)
        })
    };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fsx.toml");
    let artifacts = tmp.path().join("fsx-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new(fsx_bin())
        .args(["-N", &ops.to_string(), "-S", "7", "-f"])
        .arg(&config)
        .arg("-P")
        .arg(&artifacts)
        .arg(&img)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let (seals, mut prev) = sealer.join().unwrap();
    assert!(
        out.status.success(),
        "fsx failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ship(&m, &replica, &mut prev);
    assert_files_equal(&replica, &img);
    assert!(
        sealed_logs(&m.mountpoint, "fsx.img").is_empty(),
        "acked logs were deleted"
    );
    eprintln!("fsx: {ops} operations, {seals} concurrent seals and acks, replica equal");
    let m = Arc::try_unwrap(m).ok().unwrap();
    m.unmount();
}
