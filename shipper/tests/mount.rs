//! `hrl-shipper mount` on real FUSE mounts: every byte read equals a full restore of the
//! same point (local store, moto, Azurite), damaged store objects give EIO and a log line
//! naming them, ext4 through a loop device replays its journal into the overlay and checks
//! clean, the store never changes, one small read fetches one chunk, a killed mount
//! process is cleaned up by `unmount`, and an encrypted point mounts with its key (a wrong
//! one is refused before anything is mounted).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::*;

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 256 << 10;

/// A point mounted by `hrl-shipper mount`; unmounted on drop (lazily if it must).
struct PointMount {
    dir: PathBuf,
    env: Vec<(String, String)>,
    run_dir: PathBuf,
    state: PathBuf,
}

impl PointMount {
    fn start(
        site: &Site,
        point: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> PointMount {
        let out = mount_output(site, point, dir, extra, env);
        ok(&out);
        PointMount {
            dir: dir.to_path_buf(),
            env: merged_env(site, env),
            run_dir: site.run_dir.clone(),
            state: site.state.clone(),
        }
    }

    fn disk(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `hrl-shipper unmount`, which must succeed: its output.
    fn unmount(self) -> String {
        let out = shipper(
            &["unmount", &self.dir.display().to_string()],
            &self.env,
            &self.run_dir,
            &self.state,
        );
        ok(&out)
    }

    /// The mount process's log.
    fn log(&self) -> String {
        log_of(&self.state, &self.dir)
    }
}

impl Drop for PointMount {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = shipper(
                &["unmount", &self.dir.display().to_string()],
                &self.env,
                &self.run_dir,
                &self.state,
            );
            force_unmount(&self.dir);
        }
    }
}

fn merged_env(site: &Site, env: &[(String, String)]) -> Vec<(String, String)> {
    let mut e = site.server.env.clone();
    e.extend_from_slice(env);
    e
}

fn mount_args(site: &Site, point: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut a: Vec<String> = [
        "mount",
        "--target",
        &site.server.url,
        "--group",
        &site.group,
        "--point",
        point,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a.push(dir.display().to_string());
    a
}

fn mount_output(
    site: &Site,
    point: &str,
    dir: &Path,
    extra: &[&str],
    env: &[(String, String)],
) -> std::process::Output {
    let a = mount_args(site, point, dir, extra);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    shipper(&a, &merged_env(site, env), &site.run_dir, &site.state)
}

fn log_of(state: &Path, dir: &Path) -> String {
    let mp = hrl_shipper::mount::session::mount_path(dir).unwrap();
    let p = hrl_shipper::mount::session::scratch_dir(state, &mp).with_extension("log");
    std::fs::read_to_string(p).unwrap_or_default()
}

/// A stand-in site with three points of `d.img` (24 MiB): a base with holes, then two
/// rounds of writes over it (small, straddling chunks, overwriting earlier data); each
/// point restored in full. Returns the site and the restored images by point (1, 2, 3).
fn three_points(kind: ServerKind) -> (Site, Vec<PathBuf>) {
    let site = Site::with_stand_in(kind);
    let t = site.tracker();
    t.add_disk("d.img", 24 * MIB);
    t.write("d.img", 0, &pattern(1, 300_000));
    t.write("d.img", 5 * MIB, &pattern(2, MIB as usize));
    t.write("d.img", 20 * MIB, &pattern(3, 10_000));
    site.sync();
    t.write("d.img", 100, &pattern(4, 10));
    t.write("d.img", 5 * MIB + CHUNK - 1000, &pattern(5, 3000));
    t.write("d.img", 12 * MIB, &pattern(6, 700_000));
    site.sync();
    t.write("d.img", 12 * MIB + 5, &pattern(7, 4096));
    t.write("d.img", 24 * MIB - 9, &pattern(8, 9));
    site.sync();
    let restored = (1..=3).map(|p| site.restore(p).join("d.img")).collect();
    (site, restored)
}

/// Random reads (seeded) of `disk` compared with `want`.
fn random_reads_match(disk: &Path, want: &[u8], seed: u64) {
    let f = std::fs::File::open(disk).unwrap();
    let r = pattern(seed, 2000);
    for i in 0..250 {
        let off = u64::from_le_bytes(r[i * 8..i * 8 + 8].try_into().unwrap()) % want.len() as u64;
        let len = (u64::from(r[i] as u32 * 977) % (600_000)) as usize + 1;
        let end = (off as usize + len).min(want.len());
        let mut buf = vec![0u8; end - off as usize];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == want[off as usize..end],
            "read {off}+{len} differs from the restore"
        );
    }
}

fn reads_equal_a_full_restore(kind: ServerKind) {
    let (site, restored) = three_points(kind);
    for (p, image) in [(2usize, &restored[1]), (3, &restored[2])] {
        let want = std::fs::read(image).unwrap();
        let m = PointMount::start(
            &site,
            &p.to_string(),
            &site.tmp.path().join(format!("m{p}")),
            &[],
            &[],
        );
        assert_eq!(
            std::fs::metadata(m.disk("d.img")).unwrap().len(),
            want.len() as u64
        );
        random_reads_match(&m.disk("d.img"), &want, p as u64);
        let whole = std::fs::read(m.disk("d.img")).unwrap();
        assert!(
            whole == want,
            "a sequential read of point {p} differs from its restore"
        );
        let out = m.unmount();
        assert!(out.contains(&format!("point {p} tested: ok")), "{out}");
    }
    let points = ok(&site.shipper(
        &[
            "points",
            "--target",
            &site.server.url,
            "--group",
            &site.group,
        ],
        &[],
    ));
    assert_eq!(points.matches("tested").count(), 2, "{points}");
}

/// The command lines of the `hrl-shipper mount` processes serving `to`.
fn mount_command_lines(to: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(raw) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount") && args.iter().any(|a| a == to) {
            out.push(args);
        }
    }
    out
}

/// `failover test` is a mount plus its record: the point's disk is served at once and
/// equals its restore (its `--bandwidth` passed on to the mount); `--cleanup` ends it and
/// `points` shows the point as tested.
#[test]
fn failover_test_serves_the_point_and_cleanup_records_it() {
    let (site, restored) = three_points(ServerKind::Local);
    let to = site.tmp.path().join("test-failover");
    let to_s = to.display().to_string();
    let args = [
        "failover",
        "test",
        "--target",
        &site.server.url,
        "--group",
        &site.group,
        "--point",
        "2",
        "--to",
        &to_s,
        "--bandwidth",
        "200MiB/s",
    ];
    let out = ok(&site.shipper(&args, &[]));
    assert!(out.contains("point 2"), "{out}");
    // The limit reaches the mount it started.
    let mounts = mount_command_lines(&to_s);
    assert!(
        mounts.iter().any(|c| c
            .windows(2)
            .any(|w| w[0] == "--bandwidth" && w[1] == "200MiB/s")),
        "the test failover's mount did not get --bandwidth: {mounts:?}"
    );
    let served = std::fs::read(to.join("d.img"));
    let cleanup = ok(&site.shipper(&["failover", "test", "--cleanup", "--to", &to_s], &[]));
    assert!(
        served.unwrap() == std::fs::read(&restored[1]).unwrap(),
        "the test failover serves point 2 as its restore"
    );
    assert!(
        cleanup.contains("point 2") && cleanup.contains("ok"),
        "{cleanup}"
    );
    let points = ok(&site.shipper(
        &[
            "points",
            "--target",
            &site.server.url,
            "--group",
            &site.group,
        ],
        &[],
    ));
    assert_eq!(points.matches("tested").count(), 1, "{points}");
}

#[test]
fn reads_equal_a_full_restore_local() {
    reads_equal_a_full_restore(ServerKind::Local);
}

#[test]
fn reads_equal_a_full_restore_moto() {
    reads_equal_a_full_restore(ServerKind::Moto);
}

#[test]
fn reads_equal_a_full_restore_azurite() {
    reads_equal_a_full_restore(ServerKind::Azurite);
}

/// Every file under `dir` with its bytes, `tests/` (the test records) left out.
fn store_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p != dir.join("tests") {
                    todo.push(p);
                }
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn damaged_chunk_or_log_gives_eio_never_wrong_bytes() {
    let (site, restored) = three_points(ServerKind::Local);
    let group = site.store_group();
    // The chunk of block 80 (the 10 000 bytes at 20 MiB), which no log overwrites.
    let img1 = std::fs::read(&restored[0]).unwrap();
    let block = &img1[(20 * MIB) as usize..(20 * MIB + CHUNK) as usize];
    let digest = hrl::chunk::block_digest(block);
    let chunk = group.join(hrl::store::chunk_key(&digest));
    assert!(chunk.is_file(), "{}", chunk.display());
    std::fs::write(
        &chunk,
        zstd::bulk::compress(&vec![7u8; CHUNK as usize], 3).unwrap(),
    )
    .unwrap();
    // The last log (only point 3 needs it).
    let m3 = site.manifest(3);
    let d = &m3["disks"][0];
    let logs = group.join(format!(
        "disks/{}/g{}/logs",
        d["disk_id"].as_str().unwrap(),
        d["generation"]
    ));
    let mut names: Vec<_> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let last = names.last().unwrap().clone();
    std::fs::write(&last, b"not zstd at all").unwrap();

    let m2 = PointMount::start(&site, "2", &site.tmp.path().join("m2"), &[], &[]);
    let f = std::fs::File::open(m2.disk("d.img")).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = f.read_exact_at(&mut buf, 20 * MIB).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let want = std::fs::read(&restored[1]).unwrap();
    f.read_exact_at(&mut buf, 5 * MIB).unwrap();
    assert!(
        buf == want[(5 * MIB) as usize..(5 * MIB + 4096) as usize],
        "undamaged chunks still read right"
    );
    let hex = hrl::to_hex(&digest);
    wait_until(
        Duration::from_secs(10),
        "the mount log to name the damaged chunk",
        || m2.log().contains(&hex),
    );
    drop(f);

    let out = mount_output(&site, "3", &site.tmp.path().join("m3"), &[], &[]);
    let m3 = PointMount {
        dir: site.tmp.path().join("m3"),
        env: merged_env(&site, &[]),
        run_dir: site.run_dir.clone(),
        state: site.state.clone(),
    };
    let said = format!("{}{}", ok(&out), stderr(&out));
    let name = last.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        said.contains(&name),
        "the mount names the damaged log: {said}"
    );
    let err = std::fs::read(m3.disk("d.img")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m3.log().contains(&name), "{}", m3.log());
}

#[test]
fn ext4_replays_its_journal_into_the_overlay_and_the_store_never_changes() {
    let site = Site::with_stand_in(ServerKind::Local);
    // An ext4 image caught while mounted (journal to replay), holding a known file.
    let img = site.tmp.path().join("src.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let content = pattern(9, 3 * MIB as usize + 123);
    let snap = {
        let fs = LoopFs::create(&img, &site.tmp.path().join("src"));
        std::fs::write(fs.mnt.join("file.bin"), &content).unwrap();
        run(&mut Command::new("sync"));
        std::fs::read(&img).unwrap()
    };
    let t = site.tracker();
    t.add_disk("d.img", 64 * MIB);
    let half = snap.len() / 2;
    for (start, end) in [(0, half), (half, snap.len())] {
        for off in (start..end).step_by(MIB as usize) {
            let piece = &snap[off..(off + MIB as usize).min(end)];
            if piece.iter().any(|&b| b != 0) {
                t.write("d.img", off as u64, piece);
            }
        }
        site.sync();
    }
    let before = store_files(&site.store_group());
    let m = PointMount::start(&site, "latest", &site.tmp.path().join("m"), &[], &[]);
    let dev = run(Command::new("losetup")
        .args(["-f", "--show"])
        .arg(m.disk("d.img")))
    .trim()
    .to_string();
    let lm = site.tmp.path().join("lm");
    std::fs::create_dir_all(&lm).unwrap();
    let _undo = Undo(vec![
        vec!["umount".into(), lm.display().to_string()],
        vec!["losetup".into(), "-d".into(), dev.clone()],
    ]);
    run(Command::new("mount").arg(&dev).arg(&lm));
    assert!(
        std::fs::read(lm.join("file.bin")).unwrap() == content,
        "the file reads back through the mount"
    );
    std::fs::write(lm.join("new.bin"), pattern(10, 100_000)).unwrap();
    run(Command::new("umount").arg(&lm));
    let fsck = Command::new("fsck.ext4")
        .args(["-n", "-f"])
        .arg(&dev)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "fsck -n: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    run(Command::new("losetup").args(["-d", &dev]));
    let out = m.unmount();
    assert!(out.contains("tested: ok"), "{out}");
    assert!(
        store_files(&site.store_group()) == before,
        "the store changed (beyond tests/)"
    );
    let tests: Vec<_> = std::fs::read_dir(site.store_group().join("tests"))
        .unwrap()
        .collect();
    assert_eq!(tests.len(), 1);
    // The overlay went with the mount: a new mount reads the point again.
    let m = PointMount::start(
        &site,
        "latest",
        &site.tmp.path().join("m"),
        &["--read-only"],
        &[],
    );
    let whole = std::fs::read(m.disk("d.img")).unwrap();
    assert!(
        whole == snap,
        "a new mount serves the point, not the last overlay"
    );
    assert!(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.disk("d.img"))
            .is_err(),
        "--read-only refuses writes"
    );
}

#[test]
fn one_small_read_of_a_large_sparse_disk_fetches_one_chunk() {
    let site = Site::with_stand_in(ServerKind::Moto);
    let t = site.tracker();
    t.add_disk("big.img", 16 << 30);
    for i in 0..16u64 {
        t.write("big.img", i << 30, &pattern(20 + i, MIB as usize));
    }
    site.sync();
    let want = pattern(27, 4096);
    let proxy = proxy::FaultyProxy::start(site.server.port);
    let env = vec![(
        "AWS_ENDPOINT".to_string(),
        format!("http://127.0.0.1:{}", proxy.port),
    )];
    let started = Instant::now();
    let m = PointMount::start(&site, "latest", &site.tmp.path().join("m"), &[], &env);
    let chunk_gets = || {
        let seen = proxy.seen.lock().unwrap();
        seen.iter()
            .filter(|(meth, target, _)| meth == "GET" && target.contains("/chunks/"))
            .count()
    };
    assert_eq!(chunk_gets(), 0, "mounting fetches no chunk");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.disk("big.img"))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 7 << 30).unwrap();
    eprintln!("mount to first byte: {:?}", started.elapsed());
    assert!(buf == want);
    assert_eq!(chunk_gets(), 1, "one 4 KiB read fetched one chunk");
    drop(f);
    m.unmount();
}

#[test]
fn a_killed_mount_process_unmounts_cleanly_and_mounts_again() {
    let (site, restored) = three_points(ServerKind::Local);
    let dir = site.tmp.path().join("m");
    let before = store_files(&site.store_group());
    let a = mount_args(&site, "2", &dir, &["--foreground"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut child = KillOnDrop::spawn(&mut site.command(&a, &[]));
    let disk = dir.join("d.img");
    wait_until(
        Duration::from_secs(60),
        "the mount to serve the disk",
        || is_mounted(&dir) && std::fs::metadata(&disk).is_ok(),
    );
    assert!(
        site.store_group()
            .join("leases")
            .read_dir()
            .unwrap()
            .count()
            == 1,
        "a lease while mounted"
    );
    signal(child.id(), "KILL");
    wait_exit(&mut child.0, Duration::from_secs(30), "the killed mount");
    assert!(is_mounted(&dir), "the dead mount stays until unmount");
    let out = ok(&shipper(
        &["unmount", &dir.display().to_string()],
        &site.server.env,
        &site.run_dir,
        &site.state,
    ));
    assert!(out.contains("died"), "{out}");
    assert!(!is_mounted(&dir), "the kernel mount went away");
    let leases = site
        .store_group()
        .join("leases")
        .read_dir()
        .map_or(0, |d| d.count());
    assert_eq!(leases, 0, "the lease is gone");
    assert!(
        store_files(&site.store_group()) == before,
        "the store changed (beyond tests/)"
    );
    let m = PointMount::start(&site, "2", &dir, &[], &[]);
    assert!(std::fs::read(m.disk("d.img")).unwrap() == std::fs::read(&restored[1]).unwrap());
    // Killed again, and mounted again without an unmount between: the new mount takes the
    // dead one away.
    let pid = hrl_shipper::mount::session::read_info(&hrl_shipper::mount::session::scratch_dir(
        &site.state,
        &dir,
    ))
    .unwrap()
    .pid;
    signal(pid, "KILL");
    wait_until(Duration::from_secs(30), "the mount process to die", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let m2 = PointMount::start(&site, "3", &dir, &[], &[]);
    assert!(std::fs::read(m2.disk("d.img")).unwrap() == std::fs::read(&restored[2]).unwrap());
    m2.unmount();
    drop(m);
    let leases = site
        .store_group()
        .join("leases")
        .read_dir()
        .map_or(0, |d| d.count());
    assert_eq!(leases, 0, "no lease left behind");
}

/// The store's leases (a mount holds one while it serves).
fn leases(site: &Site) -> usize {
    site.store_group()
        .join("leases")
        .read_dir()
        .map_or(0, |d| d.count())
}

/// An encrypted point mounts with its `--key` (and `--bandwidth`) and reads byte-identical
/// to the disk it was replicated from, its log included; no key, a wrong key or a bad rate
/// is refused with an error that says why before anything is mounted: no FUSE mount, no
/// lease, no overlay, nothing in the mount directory.
#[test]
fn encrypted_point_mounts_with_its_key_and_a_wrong_key_is_refused() {
    let site = Site::with_stand_in(ServerKind::Local);
    let key = site.tmp.path().join("group.key");
    let other = site.tmp.path().join("other.key");
    for k in [&key, &other] {
        ok(&site.shipper(&["key", "create", "--out", &k.display().to_string()], &[]));
    }
    let keyed = vec![("HRL_KEY".to_string(), key.display().to_string())];
    let t = site.tracker();
    t.add_disk("d.img", 8 * MIB);
    t.write("d.img", 0, &pattern(31, 600_000));
    t.write("d.img", 6 * MIB, &pattern(32, 100_000));
    ok(&site.output("sync", &["--json"], &keyed));
    t.write("d.img", CHUNK - 100, &pattern(33, 5000));
    ok(&site.output("sync", &["--json"], &keyed));
    assert!(
        site.store_group().join("encryption.json").is_file(),
        "the group is encrypted"
    );
    let want = std::fs::read(site.dir.join("d.img")).unwrap();

    let dir = site.tmp.path().join("m");
    let key_s = key.display().to_string();
    let other_s = other.display().to_string();
    let refused = [
        (vec![], "is encrypted"),
        (vec!["--key", other_s.as_str()], "does not match group"),
        (
            vec!["--key", key_s.as_str(), "--bandwidth", "fast"],
            "--bandwidth: \"fast\" is not a rate",
        ),
    ];
    for (extra, why) in &refused {
        let out = mount_output(&site, "latest", &dir, extra, &[]);
        let e = stderr(&out);
        assert!(!out.status.success(), "mount {extra:?} succeeded");
        assert!(e.contains(why), "mount {extra:?}: {e}");
        assert!(!is_mounted(&dir), "mount {extra:?} left a FUSE mount");
        assert_eq!(leases(&site), 0, "mount {extra:?} left a lease");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "mount {extra:?} put something in the mount directory"
        );
        let scratch = hrl_shipper::mount::session::scratch_dir(
            &site.state,
            &hrl_shipper::mount::session::mount_path(&dir).unwrap(),
        );
        assert!(!scratch.exists(), "mount {extra:?} left an overlay");
    }

    let m = PointMount::start(
        &site,
        "latest",
        &dir,
        &["--key", &key_s, "--bandwidth", "64MiB/s", "--read-only"],
        &[],
    );
    assert_eq!(leases(&site), 1, "a lease while mounted");
    random_reads_match(&m.disk("d.img"), &want, 7);
    assert!(
        std::fs::read(m.disk("d.img")).unwrap() == want,
        "the encrypted point reads as the disk it was replicated from"
    );
    let out = m.unmount();
    assert!(out.contains("point 2 tested: ok"), "{out}");
    assert_eq!(leases(&site), 0, "the lease went with the mount");

    // A killed encrypted mount: `unmount` (given no key, run from another directory) still
    // releases its lease and records the test, with the key file the mount recorded, given
    // to the mount relative to its working directory.
    let a = mount_args(&site, "1", &dir, &["--key", "group.key"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&site
        .command(&a, &[])
        .current_dir(site.tmp.path())
        .output()
        .unwrap());
    let m = PointMount {
        dir: dir.clone(),
        env: merged_env(&site, &[]),
        run_dir: site.run_dir.clone(),
        state: site.state.clone(),
    };
    let scratch = hrl_shipper::mount::session::scratch_dir(
        &site.state,
        &hrl_shipper::mount::session::mount_path(&dir).unwrap(),
    );
    let pid = hrl_shipper::mount::session::read_info(&scratch)
        .unwrap()
        .pid;
    signal(pid, "KILL");
    wait_until(Duration::from_secs(30), "the mount process to die", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    let out = m.unmount();
    assert!(
        out.contains("point 1 tested") && out.contains("died"),
        "{out}"
    );
    assert_eq!(leases(&site), 0, "the dead mount's lease is released");
    let points = ok(&site.shipper(
        &[
            "points",
            "--target",
            &site.server.url,
            "--group",
            &site.group,
            "--key",
            &key_s,
        ],
        &[],
    ));
    assert_eq!(points.matches("tested").count(), 2, "{points}");
}
