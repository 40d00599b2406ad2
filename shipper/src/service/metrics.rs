//! `run --metrics ADDR`: the service's state in the Prometheus text format
//! (`prometheus-client`, OpenMetrics text). The per-directory and per-disk figures are read
//! from the state files at each scrape (the service saves them on every change, the 50%
//! check every second), so a scrape never waits for a cycle; the cycle durations, errors by
//! class and store usage are recorded by the service loop ([`cycle_done`]); bytes moved come
//! from the store's limiter (`store::bandwidth`). The HTTP side is a few lines over tokio:
//! `GET /metrics` (or `/`), one answer per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::replicate::cycle::{CycleReport, Protected, ResyncDeferred};
use crate::service::status::{self, DirStatus, DiskState, Health};
use crate::store::{bandwidth, error::store_error_in, manifests, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    group: String,
    dir: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    group: String,
    disk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    group: String,
    class: String,
}

type Histograms = Family<GroupLabels, Histogram, fn() -> Histogram>;

fn cycle_histogram() -> Histogram {
    // 0.25 s .. about 34 min.
    Histogram::new(exponential_buckets(0.25, 2.0, 14))
}

/// What the service loop records; the rest is read at scrape time.
struct Recorded {
    cycles: Histograms,
    errors: Family<ErrorLabels, Counter>,
    store: Mutex<HashMap<String, StoreFigures>>,
}

#[derive(Clone, Copy, Default)]
struct StoreFigures {
    points: u64,
    objects: u64,
    bytes: u64,
    usage_at: Option<Instant>,
}

static RECORDED: LazyLock<Recorded> = LazyLock::new(|| Recorded {
    cycles: Family::new_with_constructor(cycle_histogram as fn() -> Histogram),
    errors: Family::default(),
    store: Mutex::new(HashMap::new()),
});

/// How often the group's whole listing (objects, bytes) is refreshed; the points are
/// counted after every successful cycle.
const USAGE_EVERY: Duration = Duration::from_secs(600);

/// The class of a failed cycle, as the `class` label of `hrl_cycle_errors_total`.
pub fn error_class(e: &anyhow::Error) -> &'static str {
    if e.downcast_ref::<ResyncDeferred>().is_some() {
        return "resync_deferred";
    }
    if e.chain()
        .any(|c| c.downcast_ref::<crate::service::retry::Fatal>().is_some())
    {
        return "fatal";
    }
    match store_error_in(e) {
        Some(StoreError::AuthRefused { .. }) => "auth_refused",
        Some(StoreError::BucketMissing { .. }) => "bucket_missing",
        Some(StoreError::NotFound { .. }) => "not_found",
        Some(StoreError::PreconditionFailed { .. }) => "precondition_failed",
        Some(StoreError::Damaged { .. }) => "damaged",
        Some(StoreError::Transient { .. }) => "transient",
        Some(StoreError::Encryption { .. }) => "encryption",
        None => "other",
    }
}

/// Records a finished cycle of `p`: its duration, its error class, and after a success the
/// store's points (and, every [`USAGE_EVERY`], its objects and bytes).
pub async fn cycle_done(p: &Protected, took: Duration, r: &Result<CycleReport>) {
    let group = p.store.group.clone();
    let labels = GroupLabels {
        group: group.clone(),
    };
    RECORDED
        .cycles
        .get_or_create(&labels)
        .observe(took.as_secs_f64());
    let Ok(_) = r else {
        if let Err(e) = r {
            let class = error_class(e).to_string();
            RECORDED
                .errors
                .get_or_create(&ErrorLabels { group, class })
                .inc();
        }
        return;
    };
    let mut fig = RECORDED
        .store
        .lock()
        .ok()
        .and_then(|m| m.get(&group).copied())
        .unwrap_or_default();
    match manifests::list_ids(&p.store).await {
        Ok(ids) => fig.points = ids.len() as u64,
        Err(e) => tracing::debug!(%group, "metrics: cannot count the points: {e}"),
    }
    if fig.usage_at.is_none_or(|t| t.elapsed() >= USAGE_EVERY) {
        match p.store.usage().await {
            Ok(u) => {
                fig.objects = u.objects;
                fig.bytes = u.bytes;
                fig.usage_at = Some(Instant::now());
            }
            Err(e) => tracing::debug!(%group, "metrics: cannot list the group: {e}"),
        }
    }
    if let Ok(mut m) = RECORDED.store.lock() {
        m.insert(group, fig);
    }
}

/// One gauge family per metric, filled from the state files at each scrape.
#[derive(Default)]
struct Gauges {
    health: Family<DirLabels, Gauge>,
    paused: Family<DirLabels, Gauge>,
    rpo_lag: Family<GroupLabels, Gauge>,
    last_point_time: Family<GroupLabels, Gauge>,
    last_point_id: Family<GroupLabels, Gauge>,
    space_warning: Family<GroupLabels, Gauge>,
    disk_health: Family<DiskLabels, Gauge>,
    disk_size: Family<DiskLabels, Gauge>,
    unshipped: Family<DiskLabels, Gauge>,
    log_ratio: Family<DiskLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    resync_required: Family<DiskLabels, Gauge>,
    resync_progress: Family<DiskLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

fn health_value(h: Health) -> i64 {
    match h {
        Health::Normal => 0,
        Health::Warning => 1,
        Health::Critical => 2,
    }
}

fn secs(ns: u64) -> i64 {
    (ns / 1_000_000_000) as i64
}

impl Gauges {
    fn add_dir(&self, s: &DirStatus, now: u64) {
        let g = GroupLabels {
            group: s.group.clone(),
        };
        let d = DirLabels {
            group: s.group.clone(),
            dir: s.dir.clone(),
        };
        self.health.get_or_create(&d).set(health_value(s.health));
        self.paused.get_or_create(&d).set(i64::from(s.paused));
        self.space_warning
            .get_or_create(&g)
            .set(i64::from(s.space_warning.is_some()));
        if let (Some(id), Some(t)) = (s.last_point_id, s.last_point_ns) {
            self.last_point_id.get_or_create(&g).set(id as i64);
            self.last_point_time.get_or_create(&g).set(secs(t));
            self.rpo_lag
                .get_or_create(&g)
                .set(secs(now.saturating_sub(t)));
        }
        for disk in &s.disks {
            let k = DiskLabels {
                group: s.group.clone(),
                disk: disk.disk.clone(),
            };
            self.disk_health
                .get_or_create(&k)
                .set(health_value(disk.health));
            self.disk_size.get_or_create(&k).set(disk.disk_size as i64);
            self.unshipped
                .get_or_create(&k)
                .set(disk.unshipped_bytes as i64);
            let ratio = disk.unshipped_bytes as f64 / disk.disk_size.max(1) as f64;
            self.log_ratio.get_or_create(&k).set(ratio);
            let resync = matches!(disk.state, DiskState::ResyncRequired | DiskState::Resyncing);
            self.resync_required
                .get_or_create(&k)
                .set(i64::from(resync));
            let progress = match (&disk.resync, disk.progress) {
                (Some(r), _) if r.blocks_total > 0 => {
                    r.blocks_compared as f64 / r.blocks_total as f64
                }
                (_, Some((done, total))) if total > 0 => done as f64 / total as f64,
                _ => 0.0,
            };
            self.resync_progress.get_or_create(&k).set(progress);
        }
    }

    fn register(self, r: &mut Registry) {
        r.register(
            "health",
            "Directory health: 0 Normal, 1 Warning, 2 Critical",
            self.health,
        );
        r.register(
            "paused",
            "1 while replication of the directory is paused",
            self.paused,
        );
        r.register(
            "rpo_lag_seconds",
            "Seconds since the last recovery point's seal",
            self.rpo_lag,
        );
        r.register(
            "last_point_timestamp_seconds",
            "Seal time of the last recovery point (Unix seconds)",
            self.last_point_time,
        );
        r.register(
            "last_point_id",
            "Id of the last recovery point",
            self.last_point_id,
        );
        r.register(
            "space_warning",
            "1 while the images' filesystem has less than 10% free",
            self.space_warning,
        );
        r.register(
            "disk_health",
            "Disk health: 0 Normal, 1 Warning, 2 Critical",
            self.disk_health,
        );
        r.register("disk_size_bytes", "Disk size", self.disk_size);
        r.register(
            "disk_unshipped_bytes",
            "Log bytes not yet in a committed point",
            self.unshipped,
        );
        r.register(
            "disk_log_ratio",
            "Unshipped log bytes / disk size (the 50% rule fires above 0.5)",
            self.log_ratio,
        );
        r.register(
            "disk_resync_required",
            "1 while the disk needs or runs a resync",
            self.resync_required,
        );
        r.register(
            "disk_resync_progress_ratio",
            "Blocks compared / total of the running resync or copy",
            self.resync_progress,
        );
    }
}

/// The text a scrape gets, for the directories `dirs` (dir, state dir) of this service.
pub fn render(dirs: &[(PathBuf, PathBuf)]) -> String {
    let mut reg = Registry::with_prefix("hrl");
    let gauges = Gauges::default();
    let now = hrl::now_ns();
    for (dir, state_dir) in dirs {
        match status::load(state_dir, dir) {
            Ok(Some(mut s)) => {
                s.apply_rpo(now);
                gauges.add_dir(&s, now);
            }
            Ok(None) => {}
            // A damaged state file: the directory is Critical (as the service reports it).
            Err(_) => {
                gauges
                    .health
                    .get_or_create(&DirLabels {
                        group: String::new(),
                        dir: dir.display().to_string(),
                    })
                    .set(2);
            }
        }
    }
    gauges.register(&mut reg);
    let up = Family::<GroupLabels, Counter>::default();
    let down = Family::<GroupLabels, Counter>::default();
    for (group, m) in bandwidth::moved() {
        let g = GroupLabels { group };
        up.get_or_create(&g).inc_by(m.up);
        down.get_or_create(&g).inc_by(m.down);
    }
    reg.register("uploaded_bytes", "Payload bytes uploaded to the store", up);
    reg.register(
        "downloaded_bytes",
        "Payload bytes downloaded from the store",
        down,
    );
    reg.register(
        "cycle_duration_seconds",
        "Duration of replication cycles",
        RECORDED.cycles.clone(),
    );
    reg.register(
        "cycle_errors",
        "Failed cycles by error class",
        RECORDED.errors.clone(),
    );
    let points = Family::<GroupLabels, Gauge>::default();
    let objects = Family::<GroupLabels, Gauge>::default();
    let bytes = Family::<GroupLabels, Gauge>::default();
    if let Ok(m) = RECORDED.store.lock() {
        for (group, f) in m.iter() {
            let g = GroupLabels {
                group: group.clone(),
            };
            points.get_or_create(&g).set(f.points as i64);
            if f.usage_at.is_some() {
                objects.get_or_create(&g).set(f.objects as i64);
                bytes.get_or_create(&g).set(f.bytes as i64);
            }
        }
    }
    reg.register(
        "store_points",
        "Recovery points of the group in the store",
        points,
    );
    reg.register(
        "store_objects",
        "Objects of the group in the store (refreshed every 10 min)",
        objects,
    );
    reg.register(
        "store_bytes",
        "Bytes of the group in the store (refreshed every 10 min)",
        bytes,
    );
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!("metrics: cannot encode: {e}");
    }
    out
}

/// Binds `addr` (at start, so a busy port is an error of `run`).
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let a: SocketAddr = addr.trim().parse().with_context(|| {
        format!("--metrics {addr:?}: give an address and port, e.g. 127.0.0.1:9477")
    })?;
    tokio::net::TcpListener::bind(a)
        .await
        .with_context(|| format!("--metrics: cannot listen on {a}"))
}

/// Serves scrapes until `stop` turns true.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dirs: Vec<(PathBuf, PathBuf)>,
    mut stop: watch::Receiver<bool>,
) {
    let dirs = std::sync::Arc::new(dirs);
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => return,
        };
        match conn {
            Ok((sock, _)) => {
                let dirs = dirs.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(sock, &dirs).await {
                        tracing::debug!("metrics: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head (at most 8 KiB, 5 s) and answers it.
async fn answer(
    mut sock: tokio::net::TcpStream,
    dirs: &[(PathBuf, PathBuf)],
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    };
    if tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line =
        String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or(&[])).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics" | "/") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(dirs),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: scrape /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".into(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(reply.as_bytes()).await?;
    sock.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classed_by_cause() {
        let deferred = anyhow::Error::new(ResyncDeferred("outside the window".into()));
        assert_eq!(error_class(&deferred), "resync_deferred");
        let fatal = anyhow::Error::new(crate::service::retry::Fatal("broken chain".into()));
        assert_eq!(error_class(&fatal.context("cycle")), "fatal");
        let auth = anyhow::Error::new(StoreError::NotFound {
            path: "p".into(),
            url: "u".into(),
        });
        assert_eq!(error_class(&auth), "not_found");
        assert_eq!(error_class(&anyhow::anyhow!("tracker gone")), "other");
    }

    #[test]
    fn a_directory_renders_as_gauges() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vm");
        let mut s = DirStatus::new(&dir, "g1", "/store");
        s.last_point_id = Some(7);
        s.last_point_ns = Some(hrl::now_ns() - 5_000_000_000);
        let d = s.disk_mut("disk0.img", "id");
        d.disk_size = 1000;
        d.unshipped_bytes = 250;
        d.state = DiskState::ResyncRequired;
        status::save(tmp.path(), &s).unwrap();
        let g1 = GroupLabels { group: "g1".into() };
        RECORDED.cycles.get_or_create(&g1).observe(1.5);
        let text = render(&[(dir, tmp.path().to_path_buf())]);
        assert!(text.contains("hrl_last_point_id{group=\"g1\"} 7"), "{text}");
        assert!(
            text.contains("hrl_disk_log_ratio{group=\"g1\",disk=\"disk0.img\"} 0.25"),
            "{text}"
        );
        assert!(
            text.contains("hrl_disk_resync_required{group=\"g1\",disk=\"disk0.img\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE hrl_cycle_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("hrl_cycle_duration_seconds_bucket{le=\"2.0\",group=\"g1\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
