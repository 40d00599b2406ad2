//! Who owns a group in a store. A group holds the points of one protected directory of one
//! host; two shippers committing into it (two hosts whose directories share a name, a cloned
//! configuration) would interleave their points, and `restore --point latest` would return
//! the other host's disks. So:
//!
//! - the default group name is unique per host and directory ([`default_group`]);
//! - the first cycle of a group writes `<group>/owner.json` (host and directory,
//!   create-if-absent), and every cycle checks it: a shipper of another host or directory
//!   is stopped (Critical) with an error naming the owner, before it writes anything.
//!
//! Groups written before owner records existed are claimed by the host that committed their
//! latest point; another host is fenced.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hrl::store::PointManifest;
use serde::{Deserialize, Serialize};

use crate::service::retry::Fatal;
use crate::store::{GroupStore, Put};

/// Key of the owner record, relative to the group.
pub const OWNER_KEY: &str = "owner.json";

/// The owner of a group: the host and the protected directory that ship into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub host: String,
    pub dir: PathBuf,
    /// When it claimed the group, ns since the Unix epoch.
    pub since_ns: u64,
}

impl Owner {
    fn is(&self, host: &str, dir: &Path) -> bool {
        self.host == host && self.dir == dir
    }
}

/// This host's name (the kernel's; the same name `hostname` prints).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The directory as recorded in an owner record and used in the default group name.
pub fn canonical_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The group of `dir` when none is given: `<host>-<path with '-' for '/'>` (e.g.
/// `hv1-var-lib-libvirt-images`), characters other than letters, digits, `.`, `_` and `-`
/// replaced by `_`. Unique per host and directory (two names that still meet, `/a-b` and
/// `/a/b`, are told apart by the owner record).
pub fn default_group(dir: &Path) -> Result<String> {
    let path = canonical_dir(dir);
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        anyhow::bail!(
            "cannot derive a group name from {}; pass --group NAME",
            dir.display()
        );
    }
    let raw = format!("{}-{}", host_name(), parts.join("-"));
    Ok(raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_string())
}

/// Makes sure this host and directory own `store`'s group, claiming it when nobody does;
/// `latest` is the group's latest point. Another owner is a non-recoverable error naming it.
pub async fn ensure(store: &GroupStore, dir: &Path, latest: Option<&PointManifest>) -> Result<()> {
    let host = host_name();
    let dir = canonical_dir(dir);
    let owner = match read(store).await? {
        Some(o) => o,
        None => {
            if let Some(m) = latest.filter(|m| m.host != host) {
                return Err(fenced(
                    store,
                    &format!(
                        "host {} (it committed point {}; the group has no owner record)",
                        m.host, m.id
                    ),
                ));
            }
            let me = Owner {
                host: host.clone(),
                dir: dir.clone(),
                since_ns: hrl::now_ns(),
            };
            let json = serde_json::to_vec_pretty(&me).context("encode owner record")?;
            match store.put_new(OWNER_KEY, json).await? {
                Put::Created => {
                    tracing::info!(group = %store.group, %host, dir = %dir.display(), "group claimed");
                    return Ok(());
                }
                // Claimed by another shipper just now: check whom.
                Put::Existed => read(store).await?.context("owner record vanished")?,
            }
        }
    };
    if owner.is(&host, &dir) {
        return Ok(());
    }
    Err(fenced(
        store,
        &format!("host {} directory {}", owner.host, owner.dir.display()),
    ))
}

fn fenced(store: &GroupStore, owner: &str) -> anyhow::Error {
    Fatal(format!(
        "group {:?} in {} is owned by {owner}, not by this host ({}); nothing was written. Give this directory its own group (omit --group for the default, unique per host and directory), or, if this host really takes the group over, delete {} first",
        store.group,
        store.target.url,
        host_name(),
        store.path(OWNER_KEY)
    ))
    .into()
}

async fn read(store: &GroupStore) -> Result<Option<Owner>> {
    match store.get(OWNER_KEY).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "owner record {} is not valid; delete it (the next cycle writes it again)",
                store.path(OWNER_KEY)
            )
        }),
        Err(crate::store::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_groups_differ_by_path_and_name_the_host() {
        let a = default_group(Path::new("/var/lib/libvirt/images")).unwrap();
        let b = default_group(Path::new("/srv/other/images")).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(&host_name()), "{a}");
        assert!(a.ends_with("-var-lib-libvirt-images"), "{a}");
        let odd = default_group(Path::new("/x y/é")).unwrap();
        assert!(odd.ends_with("-x_y-_"), "{odd}");
        assert!(default_group(Path::new("/")).is_err());
    }
}
