//! Bandwidth: one limit shared by every upload and download of the process (`bandwidth`,
//! `bandwidth_schedule` in the config, `--bandwidth` on the command line), and the byte
//! counters per group that the metrics show. [`Throttled`] wraps a target's object store
//! (every store is opened through `target::open`), so no put or get path can miss it.
//!
//! The limiter is a token bucket with a 50 ms burst (a virtual "link free at" instant, GCRA):
//! an upload pays for its bytes before it is sent (a multipart upload per part), a download
//! as each piece of the body arrives. The rate is looked up in the schedule (local time) at
//! every request, so a schedule change applies from the next request on.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{
    GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::service::window::Window;

/// A rate in bytes per second; `None` is unlimited.
pub type Rate = Option<u64>;

/// Parses a rate: `unlimited`, or a number with a unit and an optional `/s`: `B`, `KB`,
/// `MB`, `GB` (powers of 1000), `KiB`, `MiB`, `GiB` (powers of 1024), `kbit`, `Mbit`,
/// `Gbit` (bits). Zero is refused (it would stop replication; pause does that).
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let t = s.trim();
    if matches!(t, "unlimited" | "none" | "off") {
        return Ok(None);
    }
    let bad =
        || format!("{s:?} is not a rate; write e.g. 50MiB/s, 100Mbit/s, 500KB/s or unlimited");
    let t = t.strip_suffix("/s").unwrap_or(t).trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim() {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let rate = (num * mult).round();
    if !rate.is_finite() || rate < 1.0 {
        return Err(format!(
            "{s:?} is zero; give a positive rate or unlimited (to stop replication, pause it)"
        ));
    }
    Ok(Some(rate as u64))
}

/// When which rate applies: the first entry whose span holds the local time, else `base`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// `bandwidth` (or `--bandwidth`): the rate outside every entry's span.
    pub base: Rate,
    /// `(span, rate)`; a `None` span (`*`) holds every time.
    pub entries: Vec<(Option<Window>, Rate)>,
}

impl Schedule {
    /// A fixed rate (`--bandwidth`).
    pub fn fixed(rate: Rate) -> Schedule {
        Schedule {
            base: rate,
            entries: vec![],
        }
    }

    /// Parses `bandwidth` and `bandwidth_schedule` (entries `HH:MM-HH:MM RATE` or
    /// `* RATE`); errors name the key and the entry.
    pub fn parse(base: Option<&str>, entries: &[String]) -> Result<Schedule, String> {
        let base = match base {
            Some(b) => parse_rate(b).map_err(|e| format!("bandwidth: {e}"))?,
            None => None,
        };
        let mut out = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let key = format!("bandwidth_schedule[{i}] ({e:?})");
            let (span, rate) = e.trim().split_once(char::is_whitespace).ok_or_else(|| {
                format!(
                    "{key}: write \"HH:MM-HH:MM RATE\" or \"* RATE\", e.g. \"08:00-18:00 20MiB/s\""
                )
            })?;
            let span = match span.trim() {
                "*" => None,
                w => Some(Window::parse(w).map_err(|_| {
                    format!("{key}: {w:?} is not a span; write HH:MM-HH:MM (local time) or *")
                })?),
            };
            let rate = parse_rate(rate).map_err(|e| format!("{key}: {e}"))?;
            out.push((span, rate));
        }
        Ok(Schedule { base, entries: out })
    }

    /// The rate at minute `m` after local midnight.
    pub fn rate_at(&self, m: u32) -> Rate {
        for (span, rate) in &self.entries {
            if span.is_none_or(|w| w.contains_minute(m)) {
                return *rate;
            }
        }
        self.base
    }

    /// Whether nothing is ever limited.
    pub fn is_unlimited(&self) -> bool {
        self.base.is_none() && self.entries.iter().all(|(_, r)| r.is_none())
    }
}

/// Bytes moved for one group (or, under the key "", outside any group).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

/// Idle link time a request may still use (see [`Limiter::take`]).
const BURST: Duration = Duration::from_millis(50);

/// The process's limiter and counters.
#[derive(Debug)]
pub struct Limiter {
    schedule: RwLock<Schedule>,
    /// The instant the link is free again (GCRA's theoretical arrival time).
    free_at: Mutex<Instant>,
    moved: Mutex<HashMap<String, Moved>>,
}

static LIMITER: LazyLock<Arc<Limiter>> = LazyLock::new(|| {
    Arc::new(Limiter {
        schedule: RwLock::new(Schedule::default()),
        free_at: Mutex::new(Instant::now()),
        moved: Mutex::new(HashMap::new()),
    })
});

/// The one limiter of the process.
pub fn limiter() -> Arc<Limiter> {
    LIMITER.clone()
}

/// Sets the process's schedule (the command line and config call this before any store
/// I/O; later calls replace it).
pub fn set_schedule(s: Schedule) {
    tracing::debug!(?s, "bandwidth schedule");
    if let Ok(mut g) = LIMITER.schedule.write() {
        *g = s;
    }
}

/// Bytes moved per group so far.
pub fn moved() -> HashMap<String, Moved> {
    LIMITER.moved.lock().map(|m| m.clone()).unwrap_or_default()
}

impl Limiter {
    fn rate_now(&self) -> Rate {
        let s = self.schedule.read().ok()?;
        if s.is_unlimited() {
            return None;
        }
        s.rate_at(crate::service::window::local_minute_now())
    }

    fn limited(&self) -> bool {
        self.schedule
            .read()
            .map(|s| !s.is_unlimited())
            .unwrap_or(false)
    }

    /// Waits until `n` bytes may go (at once when unlimited).
    pub async fn take(&self, n: u64) {
        let Some(rate) = self.rate_now() else { return };
        let until = {
            let Ok(mut free) = self.free_at.lock() else {
                return;
            };
            let now = Instant::now();
            // Credit at most BURST of idle time: a waiter woken late by the timer (small
            // pieces of a download) must not lose the link's time, an idle link must not
            // save it up.
            let start = (*free).max(now.checked_sub(BURST).unwrap_or(now));
            *free = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *free
        };
        tokio::time::sleep_until(until.into()).await;
    }

    fn count(&self, group: &str, up: u64, down: u64) {
        if let Ok(mut m) = self.moved.lock() {
            let e = m.entry(group.to_string()).or_default();
            e.up += up;
            e.down += down;
        }
    }
}

/// An object store whose payload bytes go through the process's limiter and are counted
/// per group (the path part after the target's prefix).
#[derive(Debug)]
pub struct Throttled {
    inner: Arc<dyn ObjectStore>,
    prefix_parts: usize,
    limiter: Arc<Limiter>,
}

impl Throttled {
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &Path) -> Throttled {
        Throttled {
            inner,
            prefix_parts: prefix.parts().count(),
            limiter: limiter(),
        }
    }

    fn group(&self, p: &Path) -> String {
        p.parts()
            .nth(self.prefix_parts)
            .map(|g| g.as_ref().to_string())
            .unwrap_or_default()
    }

    /// The body of a GET, paid for and counted as it arrives.
    fn throttle_get(&self, location: &Path, r: GetResult) -> GetResult {
        let group = self.group(location);
        if !self.limiter.limited() {
            if let GetResultPayload::File(..) = &r.payload {
                // A local file is read by the caller at once: count it whole, keep it a file.
                self.limiter.count(&group, 0, r.range.end - r.range.start);
                return r;
            }
        }
        let (meta, range, attributes) = (r.meta.clone(), r.range.clone(), r.attributes.clone());
        let lim = self.limiter.clone();
        let stream = r
            .into_stream()
            .then(move |piece| {
                let (lim, group) = (lim.clone(), group.clone());
                async move {
                    if let Ok(b) = &piece {
                        lim.count(&group, 0, b.len() as u64);
                        lim.take(b.len() as u64).await;
                    }
                    piece
                }
            })
            .boxed();
        GetResult {
            payload: GetResultPayload::Stream(stream),
            meta,
            range,
            attributes,
        }
    }

    async fn pay_put(&self, location: &Path, n: u64) {
        self.limiter.take(n).await;
        self.limiter.count(&self.group(location), n, 0);
    }
}

impl std::fmt::Display for Throttled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Throttled({})", self.inner)
    }
}

/// A multipart upload whose parts pay before they are sent.
#[derive(Debug)]
struct ThrottledUpload {
    inner: Box<dyn MultipartUpload>,
    limiter: Arc<Limiter>,
    group: String,
}

#[async_trait]
impl MultipartUpload for ThrottledUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = data.content_length() as u64;
        let (lim, group) = (self.limiter.clone(), self.group.clone());
        let part = self.inner.put_part(data);
        Box::pin(async move {
            lim.take(n).await;
            lim.count(&group, n, 0);
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

type OsResult<T> = object_store::Result<T>;

#[async_trait]
impl ObjectStore for Throttled {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> OsResult<PutResult> {
        self.pay_put(location, payload.content_length() as u64)
            .await;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> OsResult<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(ThrottledUpload {
            inner,
            limiter: self.limiter.clone(),
            group: self.group(location),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> OsResult<GetResult> {
        let r = self.inner.get_opts(location, options).await?;
        Ok(self.throttle_get(location, r))
    }

    async fn head(&self, location: &Path) -> OsResult<ObjectMeta> {
        self.inner.head(location).await
    }

    async fn delete(&self, location: &Path) -> OsResult<()> {
        self.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures::stream::BoxStream<'static, OsResult<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> futures::stream::BoxStream<'static, OsResult<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> OsResult<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> OsResult<()> {
        self.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> OsResult<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("50MiB/s"), Ok(Some(50 << 20)));
        assert_eq!(parse_rate("100Mbit/s"), Ok(Some(12_500_000)));
        assert_eq!(parse_rate("500KB"), Ok(Some(500_000)));
        assert_eq!(parse_rate("1.5GiB/s"), Ok(Some(3 << 29)));
        assert_eq!(parse_rate(" unlimited "), Ok(None));
        for bad in ["", "fast", "50", "50MiB/h", "-1MiB/s", "0MiB/s", "MiB/s"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules_pick_the_first_matching_span_in_local_time() {
        let s = Schedule::parse(
            Some("50MiB/s"),
            &["08:00-18:00 20MiB/s".into(), "22:00-06:00 unlimited".into()],
        )
        .unwrap();
        assert_eq!(s.rate_at(9 * 60), Some(20 << 20));
        assert_eq!(
            s.rate_at(18 * 60),
            Some(50 << 20),
            "the span's end is outside it"
        );
        assert_eq!(s.rate_at(23 * 60), None);
        assert_eq!(s.rate_at(5 * 60 + 59), None);
        let star =
            Schedule::parse(None, &["08:00-18:00 20MiB/s".into(), "* unlimited".into()]).unwrap();
        assert_eq!(star.rate_at(12 * 60), Some(20 << 20));
        assert_eq!(star.rate_at(20 * 60), None);
        assert!(!star.is_unlimited());
        assert!(Schedule::parse(None, &["* unlimited".into()])
            .unwrap()
            .is_unlimited());
    }

    #[test]
    fn bad_values_name_the_key_and_entry() {
        let e = Schedule::parse(Some("fast"), &[]).unwrap_err();
        assert!(e.starts_with("bandwidth: \"fast\" is not a rate"), "{e}");
        let e = Schedule::parse(None, &["* 1MiB/s".into(), "8-18 2MiB/s".into()]).unwrap_err();
        assert!(
            e.contains("bandwidth_schedule[1] (\"8-18 2MiB/s\")") && e.contains("HH:MM-HH:MM"),
            "{e}"
        );
        let e = Schedule::parse(None, &["08:00-18:00".into()]).unwrap_err();
        assert!(
            e.contains("bandwidth_schedule[0]") && e.contains("HH:MM-HH:MM RATE"),
            "{e}"
        );
        let e = Schedule::parse(None, &["* 0B/s".into()]).unwrap_err();
        assert!(
            e.contains("bandwidth_schedule[0]") && e.contains("zero"),
            "{e}"
        );
    }
}
