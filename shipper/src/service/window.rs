//! The resync window: the daily span of local time in which the service may run the resyncs
//! the 50% rule, an unclean tracker stop or an offline edit call for (they read and upload
//! much more than an interval). Outside it, the directory waits with its disks in bitmap
//! tracking; `hrl-shipper resync --now` (or `sync`) resyncs at once.

use anyhow::{bail, Result};

/// Default resync window: outside office hours, local time.
pub const DEFAULT_WINDOW: &str = "18:00-08:00";

/// Parses a window setting: `HH:MM-HH:MM`, or `any` / `always` for no restriction.
pub fn parse_option(s: &str) -> Result<Option<Window>> {
    match s.trim() {
        "any" | "always" => Ok(None),
        w => Window::parse(w).map(Some),
    }
}

/// A daily span `start..end` in minutes after local midnight; it may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u32,
    end: u32,
}

fn minutes(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

impl Window {
    /// Parses `HH:MM-HH:MM` (local time), e.g. `18:00-07:00`.
    pub fn parse(s: &str) -> Result<Window> {
        let parsed = s.split_once('-').and_then(|(a, b)| {
            Some(Window {
                start: minutes(a)?,
                end: minutes(b)?,
            })
        });
        match parsed {
            Some(w) if w.start != w.end => Ok(w),
            _ => bail!("resync window {s:?} is not valid; write it as HH:MM-HH:MM in local time, e.g. 18:00-07:00"),
        }
    }

    /// Whether minute-of-day `m` is inside.
    pub fn contains_minute(&self, m: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Whether now (local time) is inside.
    pub fn contains_now(&self) -> bool {
        self.contains_minute(local_minute_now())
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Minutes after local midnight now.
pub fn local_minute_now() -> u32 {
    // SAFETY: time(NULL) and localtime_r into a zeroed struct we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        (tm.tm_hour as u32) * 60 + tm.tm_min as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap_past_midnight() {
        assert_eq!(parse_option("any").unwrap(), None);
        let default = parse_option(DEFAULT_WINDOW).unwrap().unwrap();
        assert!(default.contains_minute(20 * 60) && !default.contains_minute(10 * 60));
        assert!(parse_option("sometimes").is_err());
        let night = Window::parse("18:00-07:30").unwrap();
        assert!(night.contains_minute(23 * 60));
        assert!(night.contains_minute(7 * 60 + 29));
        assert!(!night.contains_minute(12 * 60));
        let day = Window::parse("09:00-17:00").unwrap();
        assert!(day.contains_minute(9 * 60) && !day.contains_minute(17 * 60));
        assert_eq!(day.to_string(), "09:00-17:00");
        for bad in ["9-17", "25:00-01:00", "10:00-10:00", "10:00"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
