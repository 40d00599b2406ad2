//! Bandwidth limits on a real local store: uploads and downloads under a limit take at
//! least the time the limit allows (the rate measured is printed; only a generous lower
//! bound on the elapsed time is asserted, never an upper one), through the library and
//! through `sync`/`restore --bandwidth`; bad values are errors naming the option.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use hrl_shipper::store::{bandwidth, target, GroupStore};
use testkit::*;

const MIB: u64 = 1 << 20;

/// The elapsed time `bytes` need at `rate`, less 15%: a run faster than this broke the limit.
fn lower_bound(bytes: u64, rate: u64) -> f64 {
    bytes as f64 / rate as f64 / 1.15
}

fn report(what: &str, bytes: u64, rate: u64, secs: f64) {
    let measured = bytes as f64 / secs;
    eprintln!(
        "{what}: {bytes} bytes in {secs:.2}s = {:.2} MiB/s under a {:.2} MiB/s limit ({:+.1}%)",
        measured / MIB as f64,
        rate as f64 / MIB as f64,
        (measured / rate as f64 - 1.0) * 100.0
    );
    assert!(
        secs >= lower_bound(bytes, rate),
        "{what}: {bytes} bytes in {secs:.2}s is faster than the limit allows (+15%)"
    );
}

/// Many chunk-sized puts in parallel (as a base copy makes them), a multipart upload and
/// the downloads back, all under one limit of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_downloads_share_one_limit() {
    let dir = tempfile::tempdir().unwrap();
    let t = target::open(dir.path().to_str().unwrap()).unwrap();
    let store = GroupStore::new(t, "g").unwrap();
    let rate = 4 * MIB;
    bandwidth::set_schedule(bandwidth::Schedule::fixed(Some(rate)));

    // 48 chunks of 256 KiB, 8 in flight: 12 MiB, 3 s at 4 MiB/s.
    let chunks: Vec<Vec<u8>> = (0..48u8)
        .map(|i| random_bytes(&[i, 7], 256 << 10))
        .collect();
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in chunks.iter().enumerate() {
        let (s, c) = (store.clone(), c.clone());
        set.spawn(async move { s.put_immutable(&format!("chunks/{i}"), c).await });
        while set.len() >= 8 {
            set.join_next().await.unwrap().unwrap().unwrap();
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    report(
        "48 parallel puts",
        12 * MIB,
        rate,
        started.elapsed().as_secs_f64(),
    );
    assert_eq!(bandwidth::moved()["g"].up, 12 * MIB);

    // A 40 MiB file goes up in parts (multipart above 32 MiB): 10 s at 4 MiB/s, so 8 MiB/s.
    let rate = 8 * MIB;
    bandwidth::set_schedule(bandwidth::Schedule::fixed(Some(rate)));
    let big = dir.path().join("big");
    std::fs::write(&big, random_bytes(b"big", 40 << 20)).unwrap();
    let started = Instant::now();
    store.put_file_immutable("logs/big", &big).await.unwrap();
    report(
        "multipart upload",
        40 * MIB,
        rate,
        started.elapsed().as_secs_f64(),
    );

    // Downloads: the chunks back, read as they stream.
    let rate = 4 * MIB;
    bandwidth::set_schedule(bandwidth::Schedule::fixed(Some(rate)));
    let started = Instant::now();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(&store.get(&format!("chunks/{i}")).await.unwrap(), c);
    }
    report("48 gets", 12 * MIB, rate, started.elapsed().as_secs_f64());
    assert_eq!(bandwidth::moved()["g"].down, 12 * MIB);

    // Unlimited again: the counters still count.
    bandwidth::set_schedule(bandwidth::Schedule::default());
    assert_eq!(store.get("chunks/0").await.unwrap(), chunks[0]);
    assert_eq!(bandwidth::moved()["g"].down, 12 * MIB + (256 << 10));
}

/// `sync --bandwidth` and `restore --bandwidth` on the stand-in tracker and a local store.
#[test]
fn sync_and_restore_take_bandwidth() {
    let site = Site::with_stand_in(ServerKind::Local);
    site.tracker().add_disk("disk0.img", 12 << 20);
    site.tracker()
        .write("disk0.img", 0, &random_bytes(b"disk", 12 << 20));
    let rate = 4 * MIB;
    let started = Instant::now();
    let out = ok(&site.output("sync", &["--json", "--bandwidth", "4MiB/s"], &[]));
    let secs = started.elapsed().as_secs_f64();
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let sent: u64 = r["base_copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["uploaded_bytes"].as_u64().unwrap())
        .sum::<u64>()
        + r["log_bytes_uploaded"].as_u64().unwrap();
    assert!(sent >= 12 << 20, "the base copy uploads the disk: {r}");
    report("sync --bandwidth 4MiB/s", sent, rate, secs);

    let to = site.tmp.path().join("restored");
    let target = site.server.url.clone();
    let started = Instant::now();
    ok(&site.shipper(
        &[
            "restore",
            "--target",
            &target,
            "--group",
            &site.group,
            "--point",
            "latest",
            "--to",
            to.to_str().unwrap(),
            "--bandwidth",
            "4MiB/s",
        ],
        &[],
    ));
    // At least the base's chunks come down (the log's records too).
    report(
        "restore --bandwidth 4MiB/s",
        12 * MIB,
        rate,
        started.elapsed().as_secs_f64(),
    );
    assert_files_equal(&to.join("disk0.img"), &site.dir.join("disk0.img"));

    let bad = site.output("sync", &["--bandwidth", "fast"], &[]);
    assert!(!bad.status.success());
    let e = stderr(&bad);
    assert!(e.contains("--bandwidth: \"fast\" is not a rate"), "{e}");
}
