//! The service configuration file (TOML): one target and any number of protected
//! directories, each with its interval. Unknown keys are refused, so a typo is an error
//! naming the key rather than a silently ignored setting.
//!
//! ```toml
//! target = "s3://bucket/hrl"          # or a path, file://, az://, gs://
//! retry_unit = "1m"                   # optional: back-off unit (tests use seconds)
//! state_dir = "/var/lib/hrl/shipper"  # optional
//! chunk_size = 262144                 # optional, bytes, power of two
//! resync_window = "18:00-08:00"       # optional: local time in which automatic resyncs
//!                                     # run (default 18:00-08:00; "any": no limit)
//! bandwidth = "50MiB/s"               # optional: one limit for every upload and download
//! bandwidth_schedule = ["08:00-18:00 20MiB/s", "* unlimited"]
//!                                     # optional: local time, the first span that holds
//!                                     # applies, else `bandwidth` (--bandwidth replaces both)
//! metrics = "127.0.0.1:9477"          # optional: serve Prometheus metrics (run --metrics)
//! encryption_key = "/etc/hrl/group.key"   # optional: key file (`hrl-shipper key create`);
//! passphrase_file = "/etc/hrl/key.pass"   # its passphrase, if it has one (docs/encryption.md)
//!
//! [[dir]]
//! path = "/vms/vm1"
//! interval = "5m"                     # 30s, 5m or 15m (any duration works)
//! group = "vm1"                       # optional: default unique per host and directory
//! encryption_key = "/etc/hrl/vm1.key"  # optional: this directory's key (else the one above)
//! retention = "24h"                   # optional: points sealed within it are kept (24h)
//! keep_hourly = 24                    # optional: of older points, newest of N latest hours
//! keep_daily = 7                      # optional: ... and of N latest days (UTC)
//! keep_app_consistent = 4             # optional: N newest app-consistent points
//! prune_every = "1h"                  # optional: the service prunes after a cycle at most
//!                                     # this often (1h)
//! app_consistent_every = "1h"         # optional, with both hooks: an app-consistent point
//! pre_seal = "virsh domfsfreeze vm1"  #   this often, sealed between the hooks (sh -c)
//! post_seal = "virsh domfsthaw vm1"
//! hook_timeout = "30s"                # optional: a hook running longer is killed
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::service::retry::parse_duration;
use crate::store::bandwidth::Schedule;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    target: String,
    retry_unit: Option<String>,
    state_dir: Option<PathBuf>,
    chunk_size: Option<u32>,
    resync_window: Option<String>,
    bandwidth: Option<String>,
    #[serde(default)]
    bandwidth_schedule: Vec<String>,
    metrics: Option<String>,
    encryption_key: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    #[serde(default)]
    dir: Vec<RawDir>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    path: PathBuf,
    interval: Option<String>,
    group: Option<String>,
    encryption_key: Option<PathBuf>,
    retention: Option<String>,
    keep_hourly: Option<i64>,
    keep_daily: Option<i64>,
    keep_app_consistent: Option<i64>,
    prune_every: Option<String>,
    app_consistent_every: Option<String>,
    pre_seal: Option<String>,
    post_seal: Option<String>,
    hook_timeout: Option<String>,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub target: String,
    pub retry_unit: Option<Duration>,
    pub state_dir: Option<PathBuf>,
    pub chunk_size: Option<u32>,
    /// `HH:MM-HH:MM` local time in which resyncs may run (checked when parsed).
    pub resync_window: Option<String>,
    /// `bandwidth` and `bandwidth_schedule` (unlimited when neither is given).
    pub bandwidth: Schedule,
    /// Address to serve Prometheus metrics on (checked when `run` binds it).
    pub metrics: Option<String>,
    /// Passphrase file of the key files (`passphrase_file`).
    pub passphrase_file: Option<PathBuf>,
    pub dirs: Vec<DirConfig>,
}

#[derive(Debug, Clone)]
pub struct DirConfig {
    pub path: PathBuf,
    pub interval: Duration,
    /// The group given; `None`: the default (`crate::replicate::owner::default_group`, or the group
    /// the state file recorded).
    pub group: Option<String>,
    /// Key file of the directory's group (its own `encryption_key`, else the file's).
    pub encryption_key: Option<PathBuf>,
    /// What the service's prunes keep.
    pub policy: crate::retain::policy::Policy,
    /// The service prunes the group after a cycle at most this often.
    pub prune_every: Duration,
    /// App-consistency hooks (checked when parsed; the flags of `run` go over them).
    pub hooks: crate::cli::app_args::HookSettings,
}

/// Default time between app-consistent points (with hooks configured).
pub const DEFAULT_APP_EVERY: Duration = Duration::from_secs(3600);

/// Default replication interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read config file {}", path.display()))?;
    parse(&text).with_context(|| format!("config file {} is not valid", path.display()))
}

pub fn parse(text: &str) -> Result<Config> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if raw.dir.is_empty() {
        bail!("no [[dir]] sections: add at least one protected directory (path = \"/vms/vm1\")");
    }
    let mut dirs = Vec::new();
    for d in raw.dir {
        let interval = match &d.interval {
            Some(s) => {
                parse_duration(s).with_context(|| format!("interval of {}", d.path.display()))?
            }
            None => DEFAULT_INTERVAL,
        };
        if interval.is_zero() {
            bail!(
                "interval of {} is zero; use e.g. 30s, 5m or 15m",
                d.path.display()
            );
        }
        let group = d.group.clone();
        if let Some(g) = group.as_ref() {
            if dirs.iter().any(|x: &DirConfig| x.group.as_ref() == Some(g)) {
                bail!("group {g:?} is used by two directories; give each [[dir]] its own group");
            }
        }
        let (policy, prune_every) =
            retention_of(&d).with_context(|| format!("[[dir]] {}", d.path.display()))?;
        let hooks = crate::cli::app_args::HookSettings {
            pre_seal: d.pre_seal.clone(),
            post_seal: d.post_seal.clone(),
            every: d.app_consistent_every.clone(),
            timeout: d.hook_timeout.clone(),
        };
        hooks
            .hooks(DEFAULT_APP_EVERY)
            .with_context(|| format!("[[dir]] {}", d.path.display()))?;
        dirs.push(DirConfig {
            path: d.path,
            interval,
            group,
            encryption_key: d.encryption_key.or_else(|| raw.encryption_key.clone()),
            policy,
            prune_every,
            hooks,
        });
    }
    Ok(Config {
        target: raw.target,
        retry_unit: raw
            .retry_unit
            .as_deref()
            .map(parse_duration)
            .transpose()
            .context("retry_unit")?,
        state_dir: raw.state_dir,
        chunk_size: raw.chunk_size,
        resync_window: match raw.resync_window {
            Some(w) => {
                crate::service::window::parse_option(&w)?;
                Some(w)
            }
            None => None,
        },
        bandwidth: Schedule::parse(raw.bandwidth.as_deref(), &raw.bandwidth_schedule)
            .map_err(|e| anyhow::anyhow!(e))?,
        metrics: raw.metrics,
        passphrase_file: raw.passphrase_file,
        dirs,
    })
}

/// The retention keys of a `[[dir]]`; a bad value is an error naming its key.
fn retention_of(d: &RawDir) -> Result<(crate::retain::policy::Policy, Duration)> {
    use crate::retain::policy::{check_count, parse_duration, Policy};
    let mut p = Policy::default();
    if let Some(r) = &d.retention {
        p.retention = parse_duration("retention", r)?;
    }
    let count = |key: &str, v: Option<i64>| v.map(|n| check_count(key, n)).transpose();
    p.keep_hourly = count("keep_hourly", d.keep_hourly)?.unwrap_or(0);
    p.keep_daily = count("keep_daily", d.keep_daily)?.unwrap_or(0);
    p.keep_app_consistent = count("keep_app_consistent", d.keep_app_consistent)?.unwrap_or(0);
    let every = match &d.prune_every {
        Some(e) => parse_duration("prune_every", e)?,
        None => crate::service::retention::DEFAULT_PRUNE_EVERY,
    };
    if every.is_zero() {
        bail!(
            "prune_every = {:?} is not valid: use a duration above zero, like 1h",
            d.prune_every.as_deref().unwrap_or("")
        );
    }
    Ok((p, every))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_key_per_file_and_per_directory() {
        let c = parse("target = \"/s\"\nencryption_key = \"/k/all\"\npassphrase_file = \"/k/p\"\n[[dir]]\npath = \"/v/a\"\n[[dir]]\npath = \"/v/b\"\nencryption_key = \"/k/b\"\n").unwrap();
        assert_eq!(
            c.dirs[0].encryption_key.as_deref(),
            Some(Path::new("/k/all"))
        );
        assert_eq!(c.dirs[1].encryption_key.as_deref(), Some(Path::new("/k/b")));
        assert_eq!(c.passphrase_file.as_deref(), Some(Path::new("/k/p")));
        let plain = parse("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\n").unwrap();
        assert!(plain.dirs[0].encryption_key.is_none());
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key() {
        let err = format!(
            "{:#}",
            parse("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\nintervall = \"5m\"\n").unwrap_err()
        );
        assert!(err.contains("intervall"), "{err}");
    }

    #[test]
    fn bandwidth_keys_parse_and_bad_values_name_the_key() {
        let c = parse("target = \"/s\"\nbandwidth = \"50MiB/s\"\nbandwidth_schedule = [\"08:00-18:00 20MiB/s\", \"* unlimited\"]\n[[dir]]\npath = \"/v/a\"\n").unwrap();
        assert_eq!(c.bandwidth.base, Some(50 << 20));
        assert_eq!(c.bandwidth.rate_at(9 * 60), Some(20 << 20));
        assert_eq!(c.bandwidth.rate_at(20 * 60), None);
        let err = format!(
            "{:#}",
            parse("target = \"/s\"\nbandwidth = \"50MiBs\"\n[[dir]]\npath = \"/v/a\"\n")
                .unwrap_err()
        );
        assert!(err.contains("bandwidth: \"50MiBs\" is not a rate"), "{err}");
        let err = format!("{:#}", parse("target = \"/s\"\nbandwidth_schedule = [\"8-18 1MiB/s\"]\n[[dir]]\npath = \"/v/a\"\n").unwrap_err());
        assert!(err.contains("bandwidth_schedule[0]"), "{err}");
        assert!(parse("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\n")
            .unwrap()
            .bandwidth
            .is_unlimited());
    }

    #[test]
    fn directories_get_intervals_and_groups() {
        let c = parse("target = \"/s\"\nretry_unit = \"1s\"\n[[dir]]\npath = \"/v/a\"\ninterval = \"30s\"\n[[dir]]\npath = \"/v/b\"\ngroup = \"g\"\n").unwrap();
        assert_eq!(c.dirs[0].interval, Duration::from_secs(30));
        assert_eq!(c.dirs[0].group, None);
        assert_eq!(c.dirs[1].group.as_deref(), Some("g"));
        assert_eq!(c.dirs[1].interval, DEFAULT_INTERVAL);
        assert_eq!(c.retry_unit, Some(Duration::from_secs(1)));
        assert!(parse("target = \"/s\"\n").is_err());
        assert!(parse("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\ninterval = \"soon\"\n").is_err());
    }

    #[test]
    fn retention_keys_per_directory_and_bad_values_name_the_key() {
        let c = parse("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\nretention = \"2h\"\nkeep_daily = 7\nprune_every = \"10m\"\n[[dir]]\npath = \"/v/b\"\n").unwrap();
        assert_eq!(c.dirs[0].policy.retention, Duration::from_secs(7200));
        assert_eq!(c.dirs[0].policy.keep_daily, 7);
        assert_eq!(c.dirs[0].prune_every, Duration::from_secs(600));
        assert_eq!(c.dirs[1].policy, crate::retain::policy::Policy::default());
        assert_eq!(
            c.dirs[1].prune_every,
            crate::service::retention::DEFAULT_PRUNE_EVERY
        );
        for (bad, key) in [
            ("retention = \"a day\"", "retention"),
            ("keep_hourly = -3", "keep_hourly"),
            ("keep_app_consistent = 9999999", "keep_app_consistent"),
            ("prune_every = \"0s\"", "prune_every"),
        ] {
            let text = format!("target = \"/s\"\n[[dir]]\npath = \"/v/a\"\n{bad}\n");
            let err = format!("{:#}", parse(&text).unwrap_err());
            assert!(err.contains(key), "{bad}: {err}");
        }
    }
}
