//! Which recovery points a retention policy keeps: a pure function of the points' ids,
//! seal times and kinds, so it is tested without a store.
//!
//! Kept: the latest point always; every point sealed within `retention` of now; of the
//! older ones, the newest of each of the `keep_hourly` latest hours and of the `keep_daily`
//! latest days (UTC) that hold one (as Proxmox Backup's keep-hourly / keep-daily); and the
//! `keep_app_consistent` newest app-consistent points wherever they are.

use std::collections::BTreeSet;
use std::time::Duration;

/// Default retention window (Hyper-V Replica keeps up to 24 h).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Every point sealed within this of now is kept.
    pub retention: Duration,
    /// Of the older points, the newest in each of this many latest hours.
    pub keep_hourly: u32,
    /// Of the older points, the newest in each of this many latest days (UTC).
    pub keep_daily: u32,
    /// The newest this many app-consistent points, wherever they are.
    pub keep_app_consistent: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            retention: DEFAULT_RETENTION,
            keep_hourly: 0,
            keep_daily: 0,
            keep_app_consistent: 0,
        }
    }
}

/// What the policy needs to know of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointInfo {
    pub id: u64,
    pub time_ns: u64,
    pub app: bool,
}

/// A policy value that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {value:?} is not valid: {why}")]
pub struct PolicyError {
    pub key: String,
    pub value: String,
    pub why: String,
}

/// Longest retention accepted (a typo like `24000d` is refused, not obeyed for 65 years).
const MAX_RETENTION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Parses a duration given for `key` (`retention`, `--grace`, ...): any humantime duration,
/// `0s` included, up to ten years.
pub fn parse_duration(key: &str, value: &str) -> Result<Duration, PolicyError> {
    let err = |why: String| PolicyError {
        key: key.to_string(),
        value: value.to_string(),
        why,
    };
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| err(format!("{e} (use a duration like 24h, 90m, 3600s)")))?;
    if d > MAX_RETENTION {
        return Err(err("longer than ten years".into()));
    }
    Ok(d)
}

/// Checks a keep count given for `key`: at most 100 000.
pub fn check_count(key: &str, n: i64) -> Result<u32, PolicyError> {
    match u32::try_from(n) {
        Ok(v) if v <= 100_000 => Ok(v),
        _ => Err(PolicyError {
            key: key.to_string(),
            value: n.to_string(),
            why: "use a count from 0 to 100000".into(),
        }),
    }
}

const HOUR_NS: u64 = 3_600_000_000_000;
const DAY_NS: u64 = 24 * HOUR_NS;

/// The ids of `points` that `policy` keeps at `now_ns`. Empty only when `points` is.
pub fn keep(points: &[PointInfo], now_ns: u64, policy: &Policy) -> BTreeSet<u64> {
    let mut newest_first: Vec<PointInfo> = points.to_vec();
    newest_first.sort_by_key(|p| std::cmp::Reverse(p.id));
    let mut kept = BTreeSet::new();
    if let Some(latest) = newest_first.first() {
        kept.insert(latest.id);
    }
    let cutoff = now_ns.saturating_sub(policy.retention.as_nanos() as u64);
    let (inside, older): (Vec<&PointInfo>, Vec<&PointInfo>) =
        newest_first.iter().partition(|p| p.time_ns >= cutoff);
    kept.extend(inside.iter().map(|p| p.id));
    kept.extend(newest_per_period(&older, HOUR_NS, policy.keep_hourly));
    kept.extend(newest_per_period(&older, DAY_NS, policy.keep_daily));
    kept.extend(
        newest_first
            .iter()
            .filter(|p| p.app)
            .take(policy.keep_app_consistent as usize)
            .map(|p| p.id),
    );
    kept
}

/// The newest point (first in `newest_first`) of each of the `n` latest periods of
/// `period_ns` that hold a point.
fn newest_per_period(newest_first: &[&PointInfo], period_ns: u64, n: u32) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last_period = None;
    for p in newest_first {
        if out.len() >= n as usize {
            break;
        }
        let period = p.time_ns / period_ns;
        if last_period != Some(period) {
            last_period = Some(period);
            out.push(p.id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pts(times: &[u64]) -> Vec<PointInfo> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| PointInfo {
                id: i as u64 + 1,
                time_ns: t,
                app: false,
            })
            .collect()
    }

    #[test]
    fn the_window_keeps_recent_points_and_the_latest_always() {
        let now = 100 * HOUR_NS;
        let p = pts(&[10 * HOUR_NS, 98 * HOUR_NS, 99 * HOUR_NS]);
        let pol = |h: u64| Policy {
            retention: Duration::from_secs(h * 3600),
            ..Policy::default()
        };
        assert_eq!(keep(&p, now, &pol(3)), BTreeSet::from([2, 3]));
        assert_eq!(keep(&p, now, &pol(0)), BTreeSet::from([3]));
        assert_eq!(keep(&p, now + 1000 * HOUR_NS, &pol(1)), BTreeSet::from([3]));
        assert!(keep(&[], now, &pol(1)).is_empty());
    }

    #[test]
    fn hourly_and_daily_thin_older_points_to_the_newest_of_each_period() {
        // Three points an hour for 50 hours, a window of 1 hour.
        let times: Vec<u64> = (0..150).map(|i| i * HOUR_NS / 3).collect();
        let p = pts(&times);
        let now = 50 * HOUR_NS;
        let pol = Policy {
            retention: Duration::from_secs(3600),
            keep_hourly: 4,
            keep_daily: 3,
            keep_app_consistent: 0,
        };
        let k = keep(&p, now, &pol);
        // Window: points at 49h, 49h20, 49h40 (ids 148..=150). Hourly: newest of hours
        // 48, 47, 46, 45 (ids 147, 144, 141, 138). Daily: newest of days 2, 1, 0 (ids 147,
        // 144, 72).
        let expect = BTreeSet::from([148, 149, 150, 147, 144, 141, 138, 72]);
        assert_eq!(k, expect);
    }

    #[test]
    fn app_consistent_points_are_kept_by_their_own_count() {
        let mut p = pts(&[1, 2, 3, 4, 5]);
        p[0].app = true;
        p[2].app = true;
        let pol = Policy {
            retention: Duration::ZERO,
            keep_app_consistent: 1,
            ..Policy::default()
        };
        assert_eq!(keep(&p, 10 * DAY_NS, &pol), BTreeSet::from([3, 5]));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse_duration("retention", "soon").unwrap_err().to_string();
        assert!(e.starts_with("retention = \"soon\" is not valid"), "{e}");
        assert!(parse_duration("--grace", "24000d").is_err());
        assert_eq!(parse_duration("retention", "90s").unwrap().as_secs(), 90);
        let e = check_count("keep_daily", -1).unwrap_err().to_string();
        assert!(e.contains("keep_daily"), "{e}");
    }

    proptest! {
        #[test]
        fn the_latest_and_the_window_are_always_kept(
            times in proptest::collection::vec(0u64..(1000 * HOUR_NS), 0..60),
            hourly in 0u32..5, daily in 0u32..5, app in 0u32..3, ret_h in 0u64..100,
            now in 0u64..(1100 * HOUR_NS),
        ) {
            let mut p = pts(&times);
            for (i, x) in p.iter_mut().enumerate() { x.app = i % 3 == 0; }
            let pol = Policy { retention: Duration::from_secs(ret_h * 3600), keep_hourly: hourly,
                keep_daily: daily, keep_app_consistent: app };
            let k = keep(&p, now, &pol);
            let cutoff = now.saturating_sub(ret_h * HOUR_NS);
            if let Some(last) = p.last() { prop_assert!(k.contains(&last.id)); }
            for x in &p {
                if x.time_ns >= cutoff { prop_assert!(k.contains(&x.id)); }
            }
            // Nothing outside the window beyond what the keep rules allow.
            let outside = k.iter().filter(|id| p[**id as usize - 1].time_ns < cutoff).count();
            prop_assert!(outside <= 1 + (hourly + daily + app) as usize);
            prop_assert!(k.iter().all(|id| *id >= 1 && *id <= p.len() as u64));
        }
    }
}
