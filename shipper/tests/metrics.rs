//! `run --metrics` and the tracker's counters, scraped while a real tracker mount and the
//! service replicate writes to a local store: the values move as the writes and points do.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use testkit::*;

/// One scrape of `GET /metrics`: the body.
fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_string())
}

/// The value of the sample whose name and labels are `key` (e.g. `hrl_store_points{group="vm1"}`).
fn value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A scrape for which `ready` holds (`Err`: the last scrape, for the timeout's message).
fn scrape_until(port: u16, ready: impl Fn(&str) -> Option<bool>) -> Result<String, String> {
    let t = scrape(port).ok_or("no answer on the metrics port")?;
    match ready(&t) {
        Some(true) => Ok(t),
        _ => Err(t),
    }
}

fn counters(site: &Site) -> serde_json::Value {
    site.tracker_status()["counters"].clone()
}

fn write_disk(site: &Site, seed: u8, at: u64, len: usize) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(site.dir.join("disk0.img"))
        .unwrap();
    f.write_all_at(&random_bytes(&[seed], len), at).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn scraped_metrics_and_tracker_counters_move_with_writes_and_points() {
    let site = Site::new(ServerKind::Local);
    std::fs::File::create(site.dir.join("disk0.img"))
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let _mount = site.mount();
    let before = counters(&site);
    assert!(
        before["writes"].is_u64(),
        "status --json has counters: {before}"
    );
    write_disk(&site, 1, 0, 1 << 20);
    let after_write = counters(&site);
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    assert!(n(&after_write, "writes") > n(&before, "writes"));
    assert!(n(&after_write, "bytes_logged") >= n(&before, "bytes_logged") + (1 << 20));
    assert!(n(&after_write, "marks_set") > n(&before, "marks_set"));

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let svc = site.service(&["--interval", "1s", "--retry-unit", "1s", "--metrics", &addr]);
    let g = "{group=\"vm1\"}";
    let first = wait_for(
        Duration::from_secs(120),
        "a first point in the metrics",
        || {
            scrape_until(port, |t| {
                Some(value(t, &format!("hrl_store_points{g}"))? >= 1.0)
            })
        },
    );
    let up1 = value(&first, &format!("hrl_uploaded_bytes_total{g}")).unwrap();
    assert!(up1 >= (1 << 20) as f64, "the base copy went up: {first}");
    let point1 = value(&first, &format!("hrl_last_point_id{g}")).unwrap();
    assert!(value(&first, &format!("hrl_store_bytes{g}")).unwrap() > 0.0);
    let cycles1 = value(&first, &format!("hrl_cycle_duration_seconds_count{g}")).unwrap();
    let sealed = counters(&site);
    assert!(n(&sealed, "seals") >= 2, "a cycle seals twice: {sealed}");
    assert!(n(&sealed, "seal_hold_us_max") >= n(&sealed, "seal_hold_us_last"));

    // 2 MiB more: shipped as logs in a later point.
    write_disk(&site, 2, 4 << 20, 2 << 20);
    let later = wait_for(
        Duration::from_secs(120),
        "a later point with the new writes",
        || {
            scrape_until(port, |t| {
                let up = value(t, &format!("hrl_uploaded_bytes_total{g}"))?;
                let point = value(t, &format!("hrl_last_point_id{g}"))?;
                Some(point > point1 && up >= up1 + (2 << 20) as f64)
            })
        },
    );
    assert!(value(&later, &format!("hrl_cycle_duration_seconds_count{g}")).unwrap() > cycles1);
    assert!(value(&later, &format!("hrl_store_points{g}")).unwrap() >= 2.0);
    let lag = value(&later, &format!("hrl_rpo_lag_seconds{g}")).unwrap();
    assert!((0.0..60.0).contains(&lag), "RPO lag {lag}");
    let d = "{group=\"vm1\",disk=\"disk0.img\"}";
    assert_eq!(
        value(&later, &format!("hrl_disk_size_bytes{d}")),
        Some((8 << 20) as f64)
    );
    assert!(value(&later, &format!("hrl_disk_resync_required{d}")).is_some());
    assert!(
        later
            .lines()
            .any(|l| l.starts_with("hrl_health{group=\"vm1\"")),
        "{later}"
    );
    let after = counters(&site);
    assert!(n(&after, "bytes_logged") >= n(&after_write, "bytes_logged") + (2 << 20));
    assert!(n(&after, "seals") > n(&sealed, "seals"));
    site.stop_service(svc);

    // A busy port is an error of `run`.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let out = site.output("run", &["--metrics", &taken], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--metrics: cannot listen on"),
        "{}",
        stderr(&out)
    );
}
