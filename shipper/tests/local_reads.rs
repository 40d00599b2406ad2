//! The shipper reads the backing files through the read-only descriptors the tracker hands
//! it (`open_disk`, `open_log`), not through the mount: a base copy, shipped logs and a full
//! compare resync leave the tracker's read counter where it was, and store what the old
//! path through the mount (`HRL_SHIPPER_READ_THROUGH_MOUNT=1`) stores. Run with that
//! variable set, the test fails: the mount is read.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

use testkit::*;

const SIZE: usize = 8 << 20;

/// The tracker's (reads, bytes read) through the mount so far.
fn mount_reads(site: &Site) -> (u64, u64) {
    let c = &site.tracker_status()["counters"];
    (
        c["reads"].as_u64().unwrap(),
        c["bytes_read"].as_u64().unwrap(),
    )
}

/// Names of the chunk objects in the local store (content-addressed: equal data, equal set).
fn chunk_names(site: &Site) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let top = site.store_group().join("chunks");
    for sub in std::fs::read_dir(&top).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.insert(f.unwrap().file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// What one run stored and read.
struct Run {
    /// Reads and bytes through the mount while the shipper ran.
    reads: (u64, u64),
    /// Each point's restored disk.
    restored: Vec<Vec<u8>>,
    /// What each point should restore to.
    expected: Vec<Vec<u8>>,
    chunks: BTreeSet<String>,
    /// Per shipper run: log bytes coalesced, base copy uploaded bytes, resync blocks differing.
    reports: Vec<(u64, u64, u64)>,
}

/// Initial copy, a point shipping logs, a full compare resync, each through the shipper
/// with `env`; the model of the disk is kept in memory so the test itself never reads
/// through the mount (writable opens of a disk are direct: no page cache either).
fn replicate(env: &[(String, String)]) -> Run {
    let site = Site::new(ServerKind::Local);
    let disk = site.dir.join("d.img");
    let mut model = random_bytes(&[41], SIZE);
    // A hole, so SEEK_DATA has something to skip.
    model[2 << 20..3 << 20].fill(0);
    std::fs::write(&disk, &model).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    hrl_punch(&f, 2 << 20, 1 << 20);
    drop(f);
    let tracker = site.mount();
    let mut reads = (0, 0);
    let mut reports = Vec::new();
    let mut expected = Vec::new();
    let mut shipper_run = |args: &[&str], model: &[u8]| {
        let before = mount_reads(&site);
        let out = ok(&site.output(args[0], &args[1..], env));
        let after = mount_reads(&site);
        reads.0 += after.0 - before.0;
        reads.1 += after.1 - before.1;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let base = &v["base_copies"][0];
        reports.push((
            v["log_bytes_coalesced"].as_u64().unwrap(),
            base["uploaded_bytes"].as_u64().unwrap_or(0),
            base["resync"]["blocks_differing"].as_u64().unwrap_or(0),
        ));
        expected.push(model.to_vec());
    };
    let write = |model: &mut Vec<u8>, off: usize, seed: u8, len: usize| {
        let data = random_bytes(&[seed], len);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(tracker.path("d.img"))
            .unwrap();
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&data);
    };

    // 1: the initial copy (and the logs of the second seal).
    write(&mut model, 4096, 1, 8192);
    shipper_run(&["sync", "--json"], &model);
    // 2: logs only, several of them coalesced.
    write(&mut model, 1 << 20, 2, 64 << 10);
    write(&mut model, (2 << 20) + 4096, 3, 4096);
    write(&mut model, 7 << 20, 4, 100_000);
    shipper_run(&["sync", "--json"], &model);
    // 3: a full compare (every block holding data read back, SEEK_DATA), with a change.
    write(&mut model, 5 << 20, 5, 4096);
    shipper_run(&["resync", "--disk", "d.img", "--now", "--json"], &model);
    tracker.unmount();

    let restored = (1..=expected.len() as u64)
        .map(|p| std::fs::read(site.restore(p).join("d.img")).unwrap())
        .collect();
    Run {
        reads,
        restored,
        expected,
        chunks: chunk_names(&site),
        reports,
    }
}

/// Deallocates `len` bytes at `off` (a real hole in the image).
fn hrl_punch(f: &std::fs::File, off: i64, len: i64) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a descriptor we own.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    assert_eq!(rc, 0, "punch a hole: {}", std::io::Error::last_os_error());
}

fn assert_restores(run: &Run, what: &str) {
    assert_eq!(run.restored.len(), run.expected.len());
    for (i, (r, e)) in run.restored.iter().zip(&run.expected).enumerate() {
        assert!(r == e, "{what}: point {} does not restore the disk", i + 1);
    }
}

#[test]
fn copies_logs_and_resyncs_skip_the_mount_and_store_the_same_bytes() {
    // The environment of the test run decides (HRL_SHIPPER_READ_THROUGH_MOUNT=1 makes this
    // run read through the mount, and the test fail).
    let direct = replicate(&[]);
    let mount = replicate(&[("HRL_SHIPPER_READ_THROUGH_MOUNT".into(), "1".into())]);
    assert_restores(&direct, "through descriptors");
    assert_restores(&mount, "through the mount");
    assert!(
        mount.reads.1 >= SIZE as u64 / 2,
        "the path through the mount reads the disk through it: {:?}",
        mount.reads
    );
    assert_eq!(
        direct.reads,
        (0, 0),
        "the shipper read the disk or its logs through the mount (reads, bytes)"
    );
    assert_eq!(
        direct.chunks, mount.chunks,
        "both paths store the same chunks"
    );
    assert_eq!(
        direct.reports, mount.reports,
        "both paths coalesce, upload and find differing the same (log bytes, chunk bytes, blocks differing)"
    );
    assert!(
        direct.reports[2].2 >= 1,
        "the full compare found the change"
    );
}

/// Reading through descriptors, the shipper holds no file of the mount open: the tracker
/// can be unmounted while a resync reads (through the mount that was EBUSY). The cycle then
/// fails at its next request to the tracker, which is gone, and commits nothing; an edit of
/// the raw image meanwhile (a block the resync had compared) is found by the next mount's
/// stamp check and resynced, and the next point restores it.
#[test]
fn a_cycle_whose_tracker_went_away_fails_and_commits_nothing() {
    let site = Site::new(ServerKind::Local);
    let disk = site.dir.join("d.img");
    let mut model = random_bytes(&[51], SIZE);
    std::fs::write(&disk, &model).unwrap();
    let tracker = site.mount();
    site.sync();
    assert_eq!(site.points(), 1);

    let marker = site.state.join("stopped-at-mid-resync-pause");
    let err_path = site.tmp.path().join("resync.err");
    let mut cmd = site.cmd("resync", &["--disk", "d.img", "--now", "--json"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = spawn_paused_at(cmd, &marker, "mid-resync-pause");
    // Half way through the full compare: the mount is not busy.
    tracker.unmount();
    let edit = random_bytes(&[52], 4096);
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.write_all_at(&edit, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    model[..4096].copy_from_slice(&edit);
    signal(child.id(), "CONT");
    let st = wait_exit(
        &mut child.0,
        std::time::Duration::from_secs(120),
        "the resync",
    );
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert!(
        !st.success(),
        "the resync succeeded without its tracker: {err}"
    );
    assert!(
        err.contains("tracker"),
        "the error does not say the tracker went away: {err}"
    );
    assert_eq!(
        site.points(),
        1,
        "a point was committed without the tracker"
    );

    let tracker = site.mount();
    let st = site.tracker_status();
    assert!(
        st["disks"][0]["unclean_extents"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "the offline edit is not reported: {st}"
    );
    let point = site.sync()["point"].as_u64().unwrap();
    tracker.unmount();
    let restored = std::fs::read(site.restore(point).join("d.img")).unwrap();
    assert!(
        restored == model,
        "point {point} does not restore the edited disk"
    );
}
