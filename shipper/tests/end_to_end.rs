//! End to end with the real tracker: `hrl-tracker mount` over an image directory, a loop
//! device with ext4 on a disk in it, files written and deleted across several intervals,
//! `hrl-shipper sync` after each, then every recovery point restored and compared with a copy
//! of the image taken at seal time (the filesystem frozen meanwhile), checked with
//! `fsck.ext4 -n`, and its files read back with debugfs. For each store: local, moto, Azurite.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::*;

/// How long a status may take to reach what a test waits for.
const WAIT: Duration = Duration::from_secs(90);

fn file_data(seed: u8, len: usize) -> Vec<u8> {
    random_bytes(&[seed, 7], len)
}

fn debugfs_cat(image: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat /{file}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn debugfs_ls(image: &Path) -> String {
    run(Command::new("debugfs").arg("-R").arg("ls -l /").arg(image))
}

/// Files expected in the filesystem after an interval: name and content (None: deleted).
type Expected = Vec<(&'static str, Option<Vec<u8>>)>;
/// One interval's changes to the mounted filesystem.
type Interval = Box<dyn Fn(&Path) -> Expected>;

fn ext4_across_intervals(kind: ServerKind) {
    let s = Site::new(kind);
    let (dir, snaps) = (&s.dir, s.tmp.path().join("snaps"));
    std::fs::create_dir_all(&snaps).unwrap();
    new_disk(&dir.join("disk0.img"), 96 << 20);

    let tracker = s.mount();
    let fs = LoopFs::create(&dir.join("disk0.img"), &s.tmp.path().join("mnt"));
    let sync = || s.sync()["point"].as_u64().unwrap();
    // Each interval: change files, freeze, sync (seal + ship), copy the image as sealed, thaw.
    let mut expected: Vec<Expected> = Vec::new();
    let intervals: Vec<Interval> = vec![
        Box::new(|m: &Path| {
            std::fs::write(m.join("a.bin"), file_data(1, 3 << 20)).unwrap();
            std::fs::write(m.join("b.txt"), b"first interval\n").unwrap();
            vec![
                ("a.bin", Some(file_data(1, 3 << 20))),
                ("b.txt", Some(b"first interval\n".to_vec())),
            ]
        }),
        Box::new(|m: &Path| {
            std::fs::remove_file(m.join("a.bin")).unwrap();
            std::fs::write(m.join("c.bin"), file_data(2, 5 << 20)).unwrap();
            vec![
                ("a.bin", None),
                ("b.txt", Some(b"first interval\n".to_vec())),
                ("c.bin", Some(file_data(2, 5 << 20))),
            ]
        }),
        Box::new(|m: &Path| {
            std::fs::write(m.join("b.txt"), b"third interval rewrote this\n").unwrap();
            std::fs::write(m.join("d.bin"), file_data(3, 1 << 20)).unwrap();
            vec![
                ("b.txt", Some(b"third interval rewrote this\n".to_vec())),
                ("c.bin", Some(file_data(2, 5 << 20))),
                ("d.bin", Some(file_data(3, 1 << 20))),
            ]
        }),
    ];
    for change in &intervals {
        expected.push(change(&fs.mnt));
        fs.freeze();
        let point = sync();
        std::fs::copy(dir.join("disk0.img"), snaps.join(format!("{point}.img"))).unwrap();
        fs.thaw();
        assert_eq!(point as usize, expected.len());
    }
    drop(fs);
    drop(tracker);

    for (i, files) in expected.iter().enumerate() {
        let point = i + 1;
        let restored = s.restore(point as u64).join("disk0.img");
        assert_same_file(&restored, &snaps.join(format!("{point}.img")));
        let fsck = Command::new("fsck.ext4")
            .arg("-n")
            .arg("-f")
            .arg(&restored)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "fsck.ext4 -n on point {point}: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let ls = debugfs_ls(&restored);
        for (name, content) in files {
            match content {
                Some(c) => assert!(
                    debugfs_cat(&restored, name) == *c,
                    "point {point}: {name} has the wrong content"
                ),
                None => assert!(
                    !ls.contains(name),
                    "point {point}: deleted {name} is still there:\n{ls}"
                ),
            }
        }
    }
}

#[test]
fn ext4_on_tracked_disk_restores_every_point_local() {
    ext4_across_intervals(ServerKind::Local);
}

#[test]
fn ext4_on_tracked_disk_restores_every_point_s3_moto() {
    ext4_across_intervals(ServerKind::Moto);
}

#[test]
fn ext4_on_tracked_disk_restores_every_point_azurite() {
    ext4_across_intervals(ServerKind::Azurite);
}

/// A VHDX written by qemu-io through the mount restores to an image `qemu-img compare`
/// finds identical.
#[test]
fn vhdx_written_by_qemu_io_restores_identical() {
    let s = Site::new(ServerKind::Local);
    let tracker = s.mount();
    let disk = s.dir.join("disk.vhdx");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vhdx"])
        .arg(&disk)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args([
            "-f",
            "vhdx",
            "-c",
            "write -P 0xab 0 4M",
            "-c",
            "write -P 0x11 20M 1M",
        ])
        .arg(&disk));
    let sync = || ok(&s.try_sync(&[]));
    sync();
    run(Command::new("qemu-io")
        .args([
            "-f",
            "vhdx",
            "-c",
            "write -P 0xcd 2M 3M",
            "-c",
            "write -z 20M 512k",
            "-c",
            "write -P 0x5a 40M 64k",
        ])
        .arg(&disk));
    sync();
    let snap = s.copy_disk("disk.vhdx", "snap.vhdx");
    drop(tracker);
    let to = s.tmp.path().join("restored");
    ok(&s.try_restore("latest", &to));
    assert_same_file(&to.join("disk.vhdx"), &snap);
    run(Command::new("qemu-img")
        .arg("compare")
        .arg(to.join("disk.vhdx"))
        .arg(&snap));
    let out = run(Command::new("qemu-io")
        .args([
            "-f",
            "vhdx",
            "-c",
            "read -P 0xcd 2M 3M",
            "-c",
            "read -P 0x5a 40M 64k",
        ])
        .arg(to.join("disk.vhdx")));
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

fn same_dirs(restored: &Path, snap: &Path) {
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(restored),
        names(snap),
        "restored disks differ from the source's"
    );
    for n in names(snap) {
        assert_same_file(&restored.join(&n), &snap.join(&n));
    }
}

/// Disks created, renamed and removed in the directory show up so in later points.
#[test]
fn disk_creation_rename_and_removal_are_mirrored() {
    let s = Site::new(ServerKind::Local);
    std::fs::write(s.dir.join("disk0.img"), file_data(1, 1 << 20)).unwrap();
    let tracker = s.mount();
    assert_eq!(s.sync()["point"], 1);
    let snap1 = s.snapshot(1);

    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(s.dir.join("disk1.raw"))
        .unwrap();
    f.set_len(2 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&file_data(2, 300_000), 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(s.sync()["point"], 2);
    let snap2 = s.snapshot(2);

    std::fs::rename(s.dir.join("disk0.img"), s.dir.join("renamed.img")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.dir.join("renamed.img"))
        .unwrap();
    f.write_all_at(&file_data(3, 5000), 100).unwrap();
    drop(f);
    let r3 = s.sync();
    assert_eq!(r3["point"], 3);
    // Whether the tracker keeps the disk's identity across the rename or starts it afresh,
    // blocks the store has are not sent again: at most the one block changed after it.
    let resent: u64 = r3["base_copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["uploaded_chunks"].as_u64().unwrap())
        .sum();
    assert!(resent <= 1, "{r3}");
    let snap3 = s.snapshot(3);

    std::fs::remove_file(s.dir.join("disk1.raw")).unwrap();
    assert_eq!(s.sync()["point"], 4);
    let snap4 = s.snapshot(4);
    drop(tracker);

    for (p, snap) in [(1, &snap1), (2, &snap2), (3, &snap3), (4, &snap4)] {
        same_dirs(&s.restore(p), snap);
    }
}

/// The initial copy is fuzzy (writers keep writing during it); the first point is still
/// exactly the disk at its seal.
#[test]
fn initial_copy_under_concurrent_writes_is_consistent() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("busy.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let tracker = s.mount();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        let disk = disk.clone();
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            let mut i: u64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let off = (i.wrapping_mul(2654435761) % (64 << 20) / 4096) * 4096;
                f.write_all_at(
                    &file_data((i % 251) as u8, 4096 * (1 + (i % 8) as usize)),
                    off.min((64 << 20) - 32768),
                )
                .unwrap();
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let r = s.sync();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 10, "the writer barely ran ({writes} writes)");
    // Writes after the first point's seal go into the second.
    let r2 = s.sync();
    let snap = s.snapshot(2);
    drop(tracker);
    assert_eq!(r["point"], 1);
    // Writes landed during the copy: the first point carries logs on top of its base.
    assert!(r["log_bytes_sealed"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r2["point"], 2);
    same_dirs(&s.restore(2), &snap);
}

/// kill -9 of the tracker: the extents it reports unclean are resynced, and the next point
/// is the disk exactly.
#[test]
fn tracker_crash_leads_to_resync_and_exact_point() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let mut tracker = s.mount();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&file_data(1, 1 << 20), 0).unwrap();
    drop(f);
    assert_eq!(s.sync()["point"], 1);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for i in 0..16u64 {
        f.write_all_at(&file_data(i as u8 + 10, 65536), i * (1 << 20) + 4096)
            .unwrap();
    }
    drop(f);
    tracker.kill9();
    tracker = s.mount();
    let st = s.tracker_status();
    let unclean = st["disks"][0]["unclean_extents"]
        .as_array()
        .map_or(0, Vec::len);
    let r = s.sync();
    assert_eq!(r["point"], 2);
    if unclean > 0 {
        assert_eq!(
            r["base_copies"].as_array().unwrap().len(),
            1,
            "unclean extents must be resynced: {r}"
        );
    }
    let snap = s.snapshot(2);
    drop(tracker);
    same_dirs(&s.restore(2), &snap);
}

/// The store goes away while writes pile up: past 50% of the disk the shipper switches it to
/// bitmap tracking (logs released, resync required, the logs on the host stop growing, the
/// writers never wait for the store); when the store is back, a targeted resync sends no
/// more than 1.1x the bytes of the blocks that really differ, and the replica is exact.
#[test]
fn half_disk_of_unshipped_logs_switches_to_bitmap_then_resyncs() {
    use std::os::unix::fs::FileExt;
    let mut s = Site::new(ServerKind::Azurite);
    let disk = s.dir.join("small.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let tracker = s.mount();
    let child = service(&s, "1s");
    s.wait_status(WAIT, "the first point", |st| {
        st["last_point_id"].as_u64().is_some_and(|p| p >= 1)
    });
    s.server.stop();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for i in 0..40u64 {
        f.write_all_at(&file_data(i as u8, 65536), i * 65536)
            .unwrap();
    }
    f.sync_all().unwrap();
    let st = s.wait_status(WAIT, "resync required", |st| {
        st["disks"][0]["state"] == "resync_required"
    });
    assert_eq!(st["health"], "Warning");
    assert_eq!(st["disks"][0]["health"], "Critical", "{st:#}");
    assert!(
        st["disks"][0]["resync_reason"]
            .as_str()
            .is_some_and(|r| r.contains("50%")),
        "{st:#}"
    );
    let ts = s.tracker_status();
    assert_eq!(ts["disks"][0]["mode"], "bitmap", "{ts:#}");
    let on_host = |ts: &serde_json::Value| {
        ts["disks"][0]["active_log_bytes"].as_u64().unwrap()
            + ts["disks"][0]["pending_sealed_bytes"].as_u64().unwrap()
    };
    let logged_before = on_host(&ts);
    // The release freed the logs on the host, the active log's records included: left there,
    // they counted again once the resync switched the disk back to log mode, and the rule
    // fired again (the resync cancelled, its job dropped).
    assert!(
        logged_before < 64 << 10,
        "the 50% rule left {logged_before} bytes of logs on the host: {ts:#}"
    );
    // Changes while in bitmap mode are only marked, not logged.
    f.write_all_at(&file_data(99, 256 << 10), 3 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let logged_after = on_host(&s.tracker_status());
    assert!(
        logged_after < logged_before + (64 << 10),
        "logs on the host grew in bitmap mode: {logged_before} -> {logged_after}"
    );
    let source = s.tmp.path().join("source-at-resync.img");
    std::fs::copy(&disk, &source).unwrap();
    let before = st["last_point_id"].as_u64().unwrap();
    s.server.spawn();
    let st = s.wait_status(WAIT, "the resync point", |st| {
        st["health"] == "Normal"
            && st["disks"][0]["state"] == "replicating"
            && st["last_point_id"].as_u64().is_some_and(|p| p > before)
    });
    let rs = &st["disks"][0]["last_resync"];
    assert_eq!(rs["kind"], "targeted", "{st:#}");
    let replica_before = s.restore(before);
    let differing = differing_block_bytes(&replica_before.join("small.img"), &source);
    // The outcome, not a byte counter: a resync that finds its chunks already stored sends 0.
    let sent = rs["bytes_sent"].as_u64().unwrap();
    assert!(differing > 0, "{st:#}");
    assert!(rs["blocks_differing"].as_u64().unwrap() > 0, "{st:#}");
    assert!(
        sent * 10 <= differing * 11,
        "the resync sent {sent} bytes for {differing} differing bytes: {st:#}"
    );
    assert_eq!(s.tracker_status()["disks"][0]["mode"], "log");
    s.stop_service(child);
    let p = s.sync()["point"].as_u64().unwrap();
    let snap = s.snapshot(p);
    drop(tracker);
    let to = s.tmp.path().join("restored");
    ok(&s.try_restore("latest", &to));
    same_dirs(&to, &snap);
}

/// kill -9 of the shipper at both dangerous instants, against the real tracker: the next
/// run continues, nothing is missing, nothing is applied twice.
#[test]
fn shipper_kill9_at_upload_and_commit_with_real_tracker() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("k.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let tracker = s.mount();
    let write = |seed: u8, off: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&file_data(seed, 20_000), off).unwrap();
    };
    write(1, 0);
    assert_eq!(s.sync()["point"], 1);
    let mut snaps = Vec::new();
    for (i, at) in ["after-upload", "after-commit"].iter().enumerate() {
        write(i as u8 + 2, 4096);
        let marker = s.state.join(format!("stopped-at-{at}"));
        kill9_at_stop_point(s.cmd("sync", &[]), &marker, at);
        if *at == "after-commit" {
            snaps.push((2, s.snapshot(2)));
        }
        write(i as u8 + 10, 0);
    }
    let p = s.sync()["point"].as_u64().unwrap();
    assert_eq!(p, 3, "one point from the killed commit, one now");
    snaps.push((3, s.snapshot(3)));
    let pending = s.tracker_status()["disks"][0]["pending_logs"]
        .as_u64()
        .unwrap();
    assert_eq!(pending, 0, "every shipped log is acked");
    drop(tracker);
    for (p, snap) in &snaps {
        same_dirs(&s.restore(*p), snap);
    }
}

/// Fills `path` (through whatever is mounted there) with `mib` MiB of incompressible data.
fn fill(path: &Path, mib: u64, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for i in 0..mib {
        f.write_all_at(&file_data(seed.wrapping_add(i as u8), 1 << 20), i << 20)
            .unwrap();
    }
    f.sync_all().unwrap();
}

fn new_disk(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

const CHUNK: u64 = 256 * 1024;

/// Bytes of the `CHUNK`-sized blocks in which two files differ.
fn differing_block_bytes(a: &Path, b: &Path) -> u64 {
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    assert_eq!(a.len(), b.len());
    a.chunks(CHUNK as usize)
        .zip(b.chunks(CHUNK as usize))
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.len() as u64)
        .sum()
}

/// kill -9 of the tracker during writes: after the remount the next cycle resyncs only the
/// extents the tracker reports unclean (it reads nothing else), and the point is exact.
#[test]
fn tracker_kill9_targeted_resync_reads_only_reported_extents() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 64 << 20);
    let mut tracker = s.mount();
    fill(&disk, 64, 1);
    assert_eq!(s.sync()["point"], 1);
    // A point with a log after the base: the replica of these blocks lives only in logs, and
    // the resync's new base must still restore them.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&file_data(200, 8192), 40 << 20).unwrap();
    f.write_all_at(&file_data(201, 8192), 2 << 20).unwrap();
    f.sync_all().unwrap();
    let r = s.sync();
    assert_eq!(r["point"], 2);
    assert!(r["logs_shipped"].as_u64().unwrap() >= 1, "{r}");
    for i in 0..16u64 {
        f.write_all_at(&file_data(i as u8 + 100, 65536), i * (512 << 10) + 4096)
            .unwrap();
    }
    drop(f);
    tracker.kill9();
    tracker = s.mount();
    let st = s.tracker_status();
    let reported: u64 = st["disks"][0]["unclean_extents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[1].as_u64().unwrap())
        .sum();
    assert!(
        reported > 0,
        "a kill -9 mid-writes leaves unclean extents: {st:#}"
    );
    assert!(reported < 64 << 20, "{st:#}");
    let r = s.sync();
    assert_eq!(r["point"], 3);
    let rs = &r["base_copies"][0]["resync"];
    assert_eq!(rs["kind"], "targeted", "{r}");
    // The two blocks the shipped log changed became chunks of the new base.
    assert!(rs["rebuilt_bytes_sent"].as_u64().unwrap() > 0, "{r}");
    let read = rs["bytes_read"].as_u64().unwrap();
    assert!(
        read > 0 && read <= reported,
        "read {read} bytes, reported {reported}: {r}"
    );
    // The 16 writes landed in 16 different 256 KiB blocks.
    assert_eq!(rs["blocks_differing"], 16, "{r}");
    let sent = rs["bytes_sent"].as_u64().unwrap();
    assert!(sent <= 16 * CHUNK * 11 / 10, "sent {sent}: {r}");
    let snap = s.snapshot(3);
    drop(tracker);
    same_dirs(&s.restore(3), &snap);
}

/// An image changed while no tracker was mounted is detected (by the tracker at mount) and
/// resynced by comparing every block; the point is exact.
#[test]
fn offline_edit_is_detected_and_resynced() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 16 << 20);
    let tracker = s.mount();
    fill(&disk, 16, 3);
    assert_eq!(s.sync()["point"], 1);
    drop(tracker);
    assert!(!is_mounted(&s.dir));
    // The edit no tracker sees.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&file_data(77, 4096), 5 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::thread::sleep(Duration::from_millis(50));
    let tracker = s.mount();
    let r = s.sync();
    assert_eq!(r["point"], 2);
    let rs = &r["base_copies"][0]["resync"];
    // The tracker finds the edit at mount (image stamp from its clean stop) and reports the
    // whole disk unclean, so every block is compared.
    assert_eq!(
        rs["blocks_compared"], rs["blocks_total"],
        "the offline edit must be detected: {r}"
    );
    assert_eq!(rs["blocks_differing"], 1, "{r}");
    assert_eq!(rs["bytes_read"], 16 << 20, "{r}");
    let snap = s.snapshot(2);
    drop(tracker);
    same_dirs(&s.restore(2), &snap);
}

/// kill -9 of the shipper in the middle of a resync: the next run continues from the saved
/// cursor (nothing read twice), writes made meanwhile ship after it, and the replica is exact.
#[test]
fn shipper_kill9_mid_resync_resumes_where_it_stopped() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 32 << 20);
    let tracker = s.mount();
    fill(&disk, 32, 5);
    assert_eq!(s.sync()["point"], 1);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for i in 0..8u64 {
        f.write_all_at(&file_data(i as u8 + 50, 8192), i * (4 << 20) + 65536)
            .unwrap();
    }
    f.sync_all().unwrap();
    kill9_at_stop_point_within(
        s.cmd("resync", &["--disk", "d.img", "--now"]),
        &s.state.join("stopped-at-mid-resync"),
        "mid-resync",
        Duration::from_secs(120),
    );
    let st = s.status();
    let half = &st["disks"][0]["resync"];
    assert_eq!(half["blocks_total"], 128, "{st:#}");
    assert_eq!(half["blocks_compared"], 64, "{st:#}");
    // Writes while the resync is interrupted: logged, shipped after it.
    f.write_all_at(&file_data(90, 4096), 1 << 20).unwrap();
    f.write_all_at(&file_data(91, 4096), 30 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let r = s.resync_now("d.img");
    let rs = &r["base_copies"][0]["resync"];
    assert_eq!(rs["resumed"], 1, "{r}");
    assert_eq!(rs["blocks_compared"], 128, "{r}");
    // Each block read once over both runs: the second run did not start over.
    assert_eq!(rs["bytes_read"], 32 << 20, "{r}");
    assert!(rs["blocks_differing"].as_u64().unwrap() >= 8, "{r}");
    assert!(r["logs_shipped"].as_u64().unwrap() >= 1, "{r}");
    let p = r["point"].as_u64().unwrap();
    assert_eq!(p, 2);
    let snap = s.snapshot(p);
    drop(tracker);
    same_dirs(&s.restore(p), &snap);
}

/// Issue 16.7: an interrupted resync must not answer a newer unclean report. kill -9 of the
/// tracker (it reports the first 4 MiB unclean), kill -9 of the shipper half way through the
/// targeted resync of those 16 blocks, a clean unmount, an offline write at 40 MiB, a mount
/// (the tracker reports the whole disk unclean): the next sync replaces the old job with one
/// that compares every block, so the 40 MiB change ships and the point restores exactly.
#[test]
fn a_newer_unclean_report_replaces_an_interrupted_resync() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 64 << 20);
    let mut tracker = s.mount();
    fill(&disk, 64, 7);
    assert_eq!(s.sync()["point"], 1);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    for i in 0..16u64 {
        f.write_all_at(&file_data(i as u8 + 30, 65536), i * CHUNK + 4096)
            .unwrap();
    }
    drop(f);
    tracker.kill9();
    tracker = s.mount();
    let st = s.tracker_status();
    assert_eq!(
        st["disks"][0]["unclean_extents"],
        serde_json::json!([[0, 4 << 20]]),
        "{st:#}"
    );
    // Without --group (the default group), as an operator's first sync would run.
    let dir = s.dir.display().to_string();
    let sync = s.command(&["sync", "--dir", &dir, "--target", &s.server.url], &[]);
    kill9_at_stop_point(sync, &s.state.join("stopped-at-mid-resync"), "mid-resync");
    let half = &s.status()["disks"][0]["resync"];
    assert_eq!(half["blocks_total"], 16, "{half:#}");
    drop(tracker);
    assert!(!is_mounted(&s.dir));
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&file_data(99, 4096), 40 << 20).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let tracker = s.mount();
    let r = s.sync();
    let p = r["point"].as_u64().unwrap();
    assert_eq!(p, 2, "{r}");
    let rs = &r["base_copies"][0]["resync"];
    assert_eq!(rs["resumed"], 0, "the old job must not be resumed: {r}");
    assert_eq!(rs["blocks_compared"], 256, "every block compared: {r}");
    assert!(rs["blocks_differing"].as_u64().unwrap() >= 17, "{r}");
    let snap = s.snapshot(p);
    drop(tracker);
    same_dirs(&s.restore(p), &snap);
}

/// `mv a.img b.img` while both are replicated (their logs have the same sequence numbers):
/// the next syncs commit (before: every seal failed, "b.img.<n>.hrl already exists"), the
/// status keeps one b.img (the renamed disk's id; before, the old b.img stayed as a phantom),
/// no later cycle resyncs it, and every point restores.
#[test]
fn rename_over_a_replicated_disk_keeps_replicating() {
    use std::os::unix::fs::FileExt;
    let s = Site::new(ServerKind::Local);
    std::fs::write(s.dir.join("a.img"), file_data(11, 1 << 20)).unwrap();
    std::fs::write(s.dir.join("b.img"), file_data(12, 1 << 20)).unwrap();
    let tracker = s.mount();
    assert_eq!(s.sync()["point"], 1);
    let id_a = s.status()["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk"] == "a.img")
        .unwrap()["disk_id"]
        .clone();

    std::fs::rename(s.dir.join("a.img"), s.dir.join("b.img")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.dir.join("b.img"))
        .unwrap();
    f.write_all_at(&file_data(13, 5000), 100).unwrap();
    drop(f);
    assert_eq!(s.sync()["point"], 2);
    let snap2 = s.snapshot(2);
    let st = s.status();
    let disks = st["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1, "{st}");
    assert_eq!(disks[0]["disk"], "b.img");
    assert_eq!(disks[0]["disk_id"], id_a);

    let r3 = s.sync();
    assert_eq!(r3["point"], 3);
    assert!(
        r3["base_copies"].as_array().is_none_or(|c| c.is_empty()),
        "no resync after the rename: {r3}"
    );
    let snap3 = s.snapshot(3);
    drop(tracker);
    same_dirs(&s.restore(2), &snap2);
    same_dirs(&s.restore(3), &snap3);
}

/// The bypass issue's reproduction: a process holds the disk open read-write before the
/// mount. The mount is refused naming it; with --force the first point still equals the disk
/// (its initial copy is read after the mount). A write through the old descriptor (1 MiB at
/// 4 MiB, fsynced) is caught by the next seal: that point is committed for the other disk and
/// keeps the held disk's last good state, which goes Warning; the next sync resyncs it by
/// comparing every block, and its restore is byte-identical to the disk.
#[test]
fn writer_bypassing_the_mount_is_refused_then_detected_and_resynced() {
    let s = Site::new(ServerKind::Local);
    let (disk, other) = (s.dir.join("d.img"), s.dir.join("e.img"));
    new_disk(&disk, 16 << 20);
    new_disk(&other, 4 << 20);
    fill(&disk, 16, 1);
    let src = s.tmp.path().join("mib");
    std::fs::write(&src, file_data(99, 1 << 20)).unwrap();
    // A VM already running: its descriptor was opened before the tracker.
    let mut holder = Holder::descriptor(&disk, "<>");
    let err = Mounted::refused(&s.dir, &s.run_dir, &[]);
    assert!(
        err.contains(&format!(
            "pid {} (bash) has d.img open for writing",
            holder.pid()
        )),
        "{err}"
    );

    let tracker = s.mount_with(&["--force"]);
    fill(&other, 4, 7);
    assert_eq!(s.sync()["point"], 1);
    let snap1 = s.snapshot(1);
    same_dirs(&s.restore(1), &snap1);

    // The write the tracker never sees.
    holder.command(&format!("4 {}", src.display()));
    fill(&other, 1, 8);
    let r = s.sync();
    assert_eq!(
        r["point"], 2,
        "the point is committed for the other disk: {r}"
    );
    let st = s.status();
    let d = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["disk"] == "d.img")
        .unwrap()
        .clone();
    assert_eq!(d["health"], "Warning", "{st}");
    assert_eq!(
        d["resync_reason"], "changed outside the tracker; resync scheduled",
        "{st}"
    );
    let restored2 = s.restore(2);
    assert_same_file(&restored2.join("e.img"), &other);
    assert_same_file(&restored2.join("d.img"), &snap1.join("d.img"));
    // The point itself says d.img is point 1's state (a status lost to a killed shipper
    // cannot hide it), and so do `restore` and `points`.
    let carried: Vec<_> = s.manifest(2)["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].clone(), d["carried_from"].clone()))
        .collect();
    assert!(
        carried.contains(&("d.img".into(), 1.into()))
            && carried.contains(&("e.img".into(), serde_json::Value::Null)),
        "{carried:?}"
    );
    let note = "d.img is as of point 1: it changed outside the tracker";
    let out = ok(&s.try_restore("2", &s.tmp.path().join("r2-again")));
    assert!(out.contains(note), "{out}");
    let out = ok(&s.shipper(
        &["points", "--target", &s.server.url, "--group", &s.group],
        &[],
    ));
    assert!(out.contains(note), "{out}");

    let r = s.sync();
    assert_eq!(r["point"], 3);
    let rs = &r["base_copies"][0]["resync"];
    assert_eq!(
        rs["blocks_compared"], rs["blocks_total"],
        "every block compared: {r}"
    );
    assert_eq!(
        rs["blocks_differing"], 4,
        "the 1 MiB the writer changed: {r}"
    );
    let snap3 = s.snapshot(3);
    assert!(
        s.manifest(3)["disks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["carried_from"].is_null()),
        "the resync's point holds d.img itself"
    );
    drop(holder);
    drop(tracker);
    same_dirs(&s.restore(3), &snap3);
}

/// Soak seed 30055 (2026-12-02): a resync killed after it read every block, then a write
/// that bypasses the mount (an old descriptor), then a sync. That sync's seal finds the disk
/// changed outside the tracker; it used to resume the interrupted job (every block already
/// compared, before the write) and commit a point missing the write. The job must be
/// dropped and the disk compared again.
#[test]
fn an_interrupted_resync_is_not_resumed_over_a_change_outside_the_tracker() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 8 << 20);
    fill(&disk, 8, 1);
    let tracker = s.mount();
    assert_eq!(s.sync()["point"], 1);
    drop(tracker);
    // A VM that opened the disk before the next mount: the mount (--force) reports the disk
    // for a full compare, so the next sync resyncs it; that sync dies after its uploads.
    let mut holder = Holder::descriptor(&disk, "<>");
    let tracker = s.mount_with(&["--force"]);
    let marker = s.state.join("stopped-at-after-upload");
    assert!(!kill9_at_stop_point(s.cmd("sync", &[]), &marker, "after-upload").success());
    // The write the tracker never sees, after the killed resync read the disk.
    let src = s.tmp.path().join("mib");
    std::fs::write(&src, file_data(77, 1 << 20)).unwrap();
    holder.command(&format!("2 {}", src.display()));
    let r = s.sync();
    let point = r["point"].as_u64().unwrap();
    drop(holder);
    let restored = s.restore(point);
    let m = s.manifest(point);
    if m["disks"][0]["carried_from"].is_null() {
        assert_same_file(&restored.join("d.img"), &disk);
    } else {
        // Carried at its last good state: the next point must hold the write.
        let r = s.sync();
        assert_same_file(
            &s.restore(r["point"].as_u64().unwrap()).join("d.img"),
            &disk,
        );
    }
    drop(tracker);
}

/// Disks that shrink between two points — `truncate`, `qemu-img resize --shrink`, a smaller
/// file copied over a disk — commit a point that restores to the disk at its seal, at its
/// new size (the seal used to record the larger of the log's opening size and the size
/// after the seal), and `verify` agrees.
#[test]
fn shrunk_disks_restore_at_their_new_size() {
    let s = Site::new(ServerKind::Local);
    let (a, b, c) = (
        s.dir.join("a.img"),
        s.dir.join("b.qcow2"),
        s.dir.join("c.img"),
    );
    let tracker = s.mount();
    new_disk(&a, 32 << 20);
    fill(&a, 32, 1);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&b)
        .arg("64M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x21 0 8M"])
        .arg(&b));
    new_disk(&c, 16 << 20);
    fill(&c, 16, 7);
    assert_eq!(s.sync()["point"], 1);
    run(Command::new("truncate").args(["-s", "8M"]).arg(&a));
    run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2", "--shrink"])
        .arg(&b)
        .arg("16M"));
    let small = s.tmp.path().join("small.img");
    std::fs::write(&small, file_data(9, 3 << 20)).unwrap();
    run(Command::new("cp").arg(&small).arg(&c));
    assert_eq!(s.sync()["point"], 2);
    let snap = s.snapshot(2);
    drop(tracker);
    let restored = s.restore(2);
    same_dirs(&restored, &snap);
    assert_eq!(
        std::fs::metadata(restored.join("a.img")).unwrap().len(),
        8 << 20
    );
    assert_eq!(
        std::fs::metadata(restored.join("c.img")).unwrap().len(),
        3 << 20
    );
    ok(&s.verify("all"));
}

/// Bytes an appending writer puts at `off`: a function of the offset only, so the disk at
/// any instant is the prefix of one stream, of the disk's length at that instant.
fn stream_at(off: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let block = 64 * 1024;
    for (i, chunk) in out.chunks_mut(block).enumerate() {
        let n = off / block as u64 + i as u64;
        blake3::Hasher::new()
            .update(&n.to_le_bytes())
            .finalize_xof()
            .fill(chunk);
    }
    out
}

/// A disk that grows by appending writes while syncs run back to back: every point restores
/// (its recorded size is the disk's size at the seal, not a size read after it, which later
/// writes had grown) and equals the disk at its seal.
///
/// The copy at the seal instant: the writer only appends, each byte a function of its
/// offset ([`stream_at`]), one write at a time; so at any instant the disk is the first L
/// bytes of that stream, where L is its length then. A restored point must therefore be
/// exactly the stream's first `len` bytes for its own length, and lengths never shrink from
/// one point to the next — a check of the content at the seal without pausing the writer
/// (pausing it would close the very window the bug lived in: writes after the cut, during
/// the seal).
#[test]
fn appending_writes_during_syncs_restore_at_every_point() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("grow.img");
    let tracker = s.mount();
    new_disk(&disk, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, disk) = (std::sync::Arc::clone(&stop), disk.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
            let mut off = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && off < (96 << 20) {
                f.write_all_at(&stream_at(off, 64 * 1024), off).unwrap();
                off += 64 * 1024;
            }
            off
        })
    };
    let mut points = Vec::new();
    for _ in 0..10 {
        points.push(s.sync()["point"].as_u64().unwrap());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    let last = s.sync()["point"].as_u64().unwrap();
    let snap = s.snapshot(last);
    drop(tracker);
    assert!(written > 0);
    let mut prev_len = 0;
    for p in points {
        let dir = s.restore(p);
        let img = std::fs::read(dir.join("grow.img")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            img.len() as u64 >= prev_len,
            "point {p} is shorter than the one before"
        );
        assert!(
            img == stream_at(0, img.len()),
            "point {p} ({} bytes) is not the disk at its seal",
            img.len()
        );
        prev_len = img.len() as u64;
    }
    same_dirs(&s.restore(last), &snap);
    ok(&s.verify("all"));
}

/// A qcow2 filled by `qemu-io` (160 writes of 1 MiB) while syncs run back to back: every
/// point restores, `qemu-img check` finds each restored image consistent, each 64 KiB
/// cluster of its guest view is either the pattern its write put there or zero (what a
/// crash-consistent copy of this writer can hold: a write is either in or not yet), and the
/// last point equals the disk.
#[test]
fn growing_qcow2_during_syncs_restores_at_every_point() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("fill.qcow2");
    let tracker = s.mount();
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("1G"));
    let pattern = |i: u64| (i % 250 + 1) as u8;
    let mut io = Command::new("qemu-io");
    io.args(["-f", "qcow2"]);
    for i in 0..160u64 {
        io.arg("-c")
            .arg(format!("write -P {} {}M 1M", pattern(i), i));
    }
    let mut writer = KillOnDrop(
        io.arg(&disk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut points = vec![s.sync()["point"].as_u64().unwrap()];
    while writer.0.try_wait().unwrap().is_none() {
        points.push(s.sync()["point"].as_u64().unwrap());
    }
    assert!(
        points.len() >= 3,
        "qemu-io finished before the syncs overlapped it"
    );
    let last = s.sync()["point"].as_u64().unwrap();
    let snap = s.snapshot(last);
    drop(tracker);
    for p in &points {
        let img = s.restore(*p).join("fill.qcow2");
        let check = Command::new("qemu-img")
            .args(["check", "-q", "-f", "qcow2"])
            .arg(&img)
            .output()
            .unwrap();
        // 0: clean; 3: leaked clusters only (allowed in a crash-consistent qcow2).
        assert!(
            matches!(check.status.code(), Some(0) | Some(3)),
            "point {p}: qemu-img check: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        let raw = img.with_extension("raw");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&img)
            .arg(&raw));
        // Only the first 160 MiB were ever written.
        let mut guest = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(&raw).unwrap(), 160 << 20),
            &mut guest,
        )
        .unwrap();
        for (k, cluster) in guest.chunks(64 * 1024).enumerate() {
            let want = pattern(k as u64 / 16);
            let is_write = cluster.iter().all(|b| *b == want);
            assert!(
                is_write || cluster.iter().all(|b| *b == 0),
                "point {p}: guest cluster {k} is neither its write nor zero"
            );
        }
        std::fs::remove_dir_all(img.parent().unwrap()).unwrap();
    }
    let restored = s.restore(last);
    same_dirs(&restored, &snap);
    run(Command::new("qemu-img")
        .arg("compare")
        .arg(restored.join("fill.qcow2"))
        .arg(snap.join("fill.qcow2")));
    ok(&s.verify("all"));
}

/// `hrl-shipper run` for the directory (any resync window, 1 s retry unit).
fn service(s: &Site, interval: &str) -> KillOnDrop {
    s.service(&[
        "--interval",
        interval,
        "--retry-unit",
        "1s",
        "--resync-window",
        "any",
    ])
}

/// How the tracker is restarted between losing the shipper's state and the next sync.
#[derive(Clone, Copy, Debug)]
enum Restart {
    None,
    Clean,
    Kill9,
}

/// Restarts the tracker as `how` says (a kill -9 leaves its marks as unclean extents).
fn restart_tracker(tracker: Mounted, how: Restart, s: &Site) -> Mounted {
    match how {
        Restart::None => return tracker,
        Restart::Clean => drop(tracker),
        Restart::Kill9 => tracker.kill9(),
    }
    s.mount()
}

/// Overwrites `[off, off + len)` of `path` (through the mount) with incompressible data, in
/// 1 MiB writes.
fn overwrite(path: &Path, off: u64, len: u64, seed: u8) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(1 << 20);
        f.write_all_at(
            &file_data(seed.wrapping_add((pos >> 20) as u8), n as usize),
            off + pos,
        )
        .unwrap();
        pos += n;
    }
    f.sync_all().unwrap();
}

/// Log bytes of the first disk on the host (active + sealed), as the tracker counts them.
fn logs_on_host(s: &Site) -> u64 {
    let ts = s.tracker_status();
    ts["disks"][0]["active_log_bytes"].as_u64().unwrap()
        + ts["disks"][0]["pending_sealed_bytes"].as_u64().unwrap()
}

/// Issue 14's reproduction: the store refuses writes (reads work, so seals go on) while
/// 8 MiB, then 32 MiB are overwritten over several intervals; the 50% rule releases the logs;
/// then the shipper's state directory is lost (and the tracker restarted as `restart` says).
/// The next `sync` must reconcile with the store's latest point and the tracker's marks, and
/// the point must restore to exactly the disk — before, the first 8 MiB written were lost.
fn lost_state_after_the_50_percent_rule(restart: Restart) {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 64 << 20);
    let tracker = s.mount();
    fill(&disk, 64, 1);
    assert_eq!(s.sync()["point"], 1);
    let ro = ReadOnly::over(&s.server.local_path());
    let svc = service(&s, "2s");
    overwrite(&disk, 8 << 20, 8 << 20, 50);
    std::thread::sleep(Duration::from_secs(7));
    overwrite(&disk, 16 << 20, 32 << 20, 90);
    s.wait_status(WAIT, "the 50% rule", |st| {
        // Released logs leave nothing over budget, so a retry may be resyncing already.
        (st["disks"][0]["state"] == "resync_required" || st["disks"][0]["state"] == "resyncing")
            && st["disks"][0]["resync_reason"]
                .as_str()
                .is_some_and(|r| r.contains("50%"))
    });
    std::thread::sleep(Duration::from_secs(5));
    s.stop_service(svc);
    drop(ro);
    let tracker = restart_tracker(tracker, restart, &s);
    std::fs::remove_dir_all(&s.state).unwrap();
    let r = s.sync();
    let p = r["point"].as_u64().unwrap();
    assert_eq!(p, 2, "{r}");
    assert_eq!(r["base_copies"][0]["resync"]["kind"], "targeted", "{r}");
    let snap = s.snapshot(p);
    drop(tracker);
    same_dirs(&s.restore(p), &snap);
}

#[test]
fn lost_state_after_the_50_percent_rule_is_reconciled() {
    lost_state_after_the_50_percent_rule(Restart::None);
}

#[test]
fn lost_state_after_the_50_percent_rule_and_a_clean_tracker_restart() {
    lost_state_after_the_50_percent_rule(Restart::Clean);
}

#[test]
fn lost_state_after_the_50_percent_rule_and_a_tracker_kill9() {
    lost_state_after_the_50_percent_rule(Restart::Kill9);
}

/// The shipper's state directory lost at each step of the cycle (before the seal, after it,
/// after the upload, in the middle of a resync, after the commit before the ack), with the
/// tracker kept, restarted cleanly or killed in between: the next sync reconciles, and its
/// point restores to exactly the disk, every time.
#[test]
fn lost_state_at_every_step_of_the_cycle_restores_the_disk() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 32 << 20);
    let mut tracker = s.mount();
    fill(&disk, 32, 3);
    assert_eq!(s.sync()["point"], 1);
    let steps = [
        "before-seal",
        "after-seal",
        "after-upload",
        "mid-resync",
        "after-commit",
    ];
    let restarts = [Restart::None, Restart::Clean, Restart::Kill9];
    let mut point = 1;
    for (i, step) in steps.iter().enumerate() {
        for k in 0..4u64 {
            overwrite(
                &disk,
                k * (7 << 20) + (i as u64) * 65536,
                65536,
                10 * i as u8 + k as u8,
            );
        }
        match *step {
            "before-seal" => {}
            "mid-resync" => {
                let c = s.cmd("resync", &["--disk", "d.img", "--now"]);
                kill9_at_stop_point(c, &s.state.join("stopped-at-mid-resync"), step);
            }
            _ => {
                let c = s.cmd("sync", &[]);
                kill9_at_stop_point(c, &s.state.join(format!("stopped-at-{step}")), step);
            }
        }
        // Written after the kill: only in the active log and the marks.
        overwrite(&disk, 30 << 20, 4096, 200 + i as u8);
        let how = restarts[i % restarts.len()];
        tracker = restart_tracker(tracker, how, &s);
        std::fs::remove_dir_all(&s.state).unwrap();
        let r = s.sync();
        let p = r["point"].as_u64().unwrap();
        assert!(p > point, "{step} {how:?}: {r}");
        point = p;
        let snap = s.snapshot(p);
        same_dirs(&s.restore(p), &snap);
        std::fs::remove_dir_all(s.tmp.path().join(format!("restore-{p}"))).unwrap();
        std::fs::remove_dir_all(s.tmp.path().join(format!("snap-{p}"))).unwrap();
    }
    drop(tracker);
}

/// A damaged state file (cut short, garbage) is a clear error naming the file and offering
/// `sync --reconcile`, never a silent replacement (the service stops in Critical and leaves
/// the file alone); `sync --reconcile` moves it aside and its point restores exactly.
#[test]
fn damaged_state_file_is_a_clear_error_then_reconcile_restores() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 16 << 20);
    let tracker = s.mount();
    fill(&disk, 16, 4);
    assert_eq!(s.sync()["point"], 1);
    let state_file = std::fs::read_dir(&s.state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .unwrap();
    for (i, damage) in ["truncate", "garbage"].iter().enumerate() {
        overwrite(&disk, (i as u64 + 1) << 20, 65536, 40 + i as u8);
        let good = std::fs::read(&state_file).unwrap();
        let bad = match *damage {
            "truncate" => good[..good.len() / 2].to_vec(),
            _ => b"\x00\xffnot json at all".to_vec(),
        };
        std::fs::write(&state_file, &bad).unwrap();
        let out = s.cmd("sync", &[]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{damage}: {err}");
        assert!(
            err.contains(&state_file.display().to_string()) && err.contains("--reconcile"),
            "{damage}: the error must name the file and the safe path: {err}"
        );
        assert_eq!(std::fs::read(&state_file).unwrap(), bad, "{damage}");
        // The service does not replace it either.
        let svc = service(&s, "1s");
        std::thread::sleep(Duration::from_secs(3));
        s.stop_service(svc);
        assert_eq!(std::fs::read(&state_file).unwrap(), bad, "{damage}");
        let r = s.shipper_ok(
            &[
                "sync",
                "--dir",
                s.dir.to_str().unwrap(),
                "--group",
                &s.group,
                "--target",
                &s.server.url,
                "--reconcile",
                "--json",
            ],
            &[],
        );
        let p = r["point"].as_u64().unwrap();
        assert_eq!(r["base_copies"][0]["resync"]["kind"], "targeted", "{r}");
        let aside = std::fs::read_dir(&s.state)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".damaged-")
            })
            .count();
        assert_eq!(aside, i + 1, "the damaged file is kept aside");
        let snap = s.snapshot(p);
        same_dirs(&s.restore(p), &snap);
    }
    drop(tracker);
}

/// Issue 16 item 12: a store that answers reads but refuses writes (each retry switched the
/// disk back to log mode, and the logs grew unchecked for a whole back-off delay: 431% of the
/// disk). The 50% rule is checked every second, during cycles and delays alike: the logs on
/// the host never pass 75% of the disk while 1 MiB/s is written for 30 s.
#[test]
fn logs_stay_within_budget_while_the_store_refuses_writes() {
    let s = Site::new(ServerKind::Local);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 16 << 20);
    let tracker = s.mount();
    fill(&disk, 16, 6);
    assert_eq!(s.sync()["point"], 1);
    let ro = ReadOnly::over(&s.server.local_path());
    let svc = service(&s, "1s");
    let mut peak = 0;
    for i in 0..30u64 {
        overwrite(&disk, (i % 16) << 20, 1 << 20, i as u8);
        std::thread::sleep(Duration::from_millis(900));
        peak = peak.max(logs_on_host(&s));
    }
    assert!(
        peak <= 12 << 20,
        "unshipped logs reached {peak} bytes on a 16 MiB disk"
    );
    s.stop_service(svc);
    drop(ro);
    let p = s.sync()["point"].as_u64().unwrap();
    let snap = s.snapshot(p);
    drop(tracker);
    same_dirs(&s.restore(p), &snap);
}

/// Writes 3 MiB of an 8 MiB disk (the status must count them), then 2 MiB more: the 50%
/// rule must switch the disk to bitmap tracking.
fn over_half(s: &Site, disk: &Path, what: &str) {
    overwrite(disk, 0, 3 << 20, 20);
    s.wait_status(
        WAIT,
        &format!("unshipped bytes counted while {what}"),
        |st| st["disks"][0]["unshipped_bytes"].as_u64().unwrap_or(0) >= 3 << 20,
    );
    overwrite(disk, 3 << 20, 2 << 20, 30);
    wait_until(
        Duration::from_secs(30),
        &format!("the 50% rule while {what}"),
        || s.tracker_status()["disks"][0]["mode"] == "bitmap",
    );
}

/// Issue 18 item 6: the 50% rule and the unshipped-bytes figure hold while replication is
/// paused and while the directory is Critical (moto restarted: the bucket is gone).
#[test]
fn the_50_percent_rule_runs_while_paused_and_while_critical() {
    let mut s = Site::new(ServerKind::Moto);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 8 << 20);
    let tracker = s.mount();
    fill(&disk, 8, 7);
    let svc = service(&s, "1s");
    let first = s.wait_status(WAIT, "the first point", |st| {
        st["last_point_id"].as_u64().is_some()
    });
    let first = first["last_point_id"].as_u64().unwrap();
    ok(&shipper(
        &["pause", "--dir", s.dir.to_str().unwrap()],
        &[],
        &s.run_dir,
        &s.state,
    ));
    over_half(&s, &disk, "paused");
    ok(&shipper(
        &["resume", "--dir", s.dir.to_str().unwrap()],
        &[],
        &s.run_dir,
        &s.state,
    ));
    s.wait_status(WAIT, "the resync point", |st| {
        st["health"] == "Normal" && st["last_point_id"].as_u64().is_some_and(|p| p > first)
    });
    s.server.stop();
    s.server.spawn();
    s.wait_status(WAIT, "Critical (bucket gone)", |st| {
        st["health"] == "Critical"
    });
    over_half(&s, &disk, "Critical");
    s.server.create_bucket(&s.server.bucket);
    let p = s.sync()["point"].as_u64().unwrap();
    s.stop_service(svc);
    let snap = s.snapshot(p);
    drop(tracker);
    same_dirs(&s.restore(p), &snap);
}

/// Issue 18 item 6: free space on the images' filesystem below 10% is a Warning naming it,
/// before a VM gets ENOSPC.
#[test]
fn low_free_space_is_a_warning() {
    let s = Site::new(ServerKind::Local);
    let fs = Tmpfs::on(&s.dir, 32);
    let disk = s.dir.join("d.img");
    new_disk(&disk, 4 << 20);
    std::fs::write(s.dir.join("other-data.bin"), vec![1u8; 30 << 20]).unwrap();
    let tracker = s.mount();
    let svc = service(&s, "1s");
    let st = s.wait_status(WAIT, "the space warning", |st| {
        st["space_warning"].as_str().is_some() && st["health"] == "Warning"
    });
    assert!(
        st["space_warning"].as_str().unwrap().contains("free"),
        "{st:#}"
    );
    s.stop_service(svc);
    drop(tracker);
    drop(fs);
}
