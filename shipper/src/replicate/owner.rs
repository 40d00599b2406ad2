//! Who owns a group in a store. A group holds the points of one protected directory of one
//! host; two shippers committing into it (two hosts whose directories share a name, a cloned
//! configuration) would interleave their points, and `restore --point latest` would return
//! the other host's disks. So:
//!
//! - the default group name is unique per host and directory ([`default_group`]);
//! - ownership goes by epochs (`hrl::owner`): the first cycle of a group creates the record
//!   of epoch 1 (host and directory, create-if-absent); a failover creates the next epoch's;
//!   every cycle checks the highest one when it starts and again just before and after its
//!   commit: a shipper of another host or directory, or of a group handed over, is stopped
//!   (Critical, fenced) with an error naming the owner since when and what to run. A
//!   fenced shipper acks nothing: its logs stay on the host.
//!
//! Groups written before owner records existed are claimed by the host that committed their
//! latest point; another host is fenced. A group's `owner.json` from before epochs is its
//! epoch 0.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hrl::owner::{OwnerRecord, OwnerState};
use hrl::store::PointManifest;

use crate::service::retry::Fatal;
use crate::store::{owners, GroupStore, Put};

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
/// `latest` is the group's latest point. Returns the owner epoch this host commits under.
/// Another owner, or a group handed over, is a non-recoverable error naming who owns it
/// since when, and what to run.
pub async fn ensure(store: &GroupStore, dir: &Path, latest: Option<&PointManifest>) -> Result<u64> {
    match owns(store, dir, latest).await? {
        Ok(epoch) => Ok(epoch),
        Err(f) => Err(f.error),
    }
}

/// A fenced shipper: who owns the group (one line, for `status`) and the error to stop with.
pub struct Fenced {
    pub owner: String,
    pub error: anyhow::Error,
}

/// [`ensure`], with the fence as a value (the cycle shows the owner in the status).
pub async fn owns(
    store: &GroupStore,
    dir: &Path,
    latest: Option<&PointManifest>,
) -> Result<std::result::Result<u64, Fenced>> {
    let host = host_name();
    let dir = canonical_dir(dir);
    let records = owners::list(store).await?;
    let current = match records.last() {
        Some(r) => r.clone(),
        None => {
            if let Some(m) = latest.filter(|m| m.host != host) {
                let owner = format!(
                    "host {} (it committed point {}; the group has no owner record)",
                    m.host, m.id
                );
                let error = fenced_by(store, &owner);
                return Ok(Err(Fenced { owner, error }));
            }
            // A group from before owner records is claimed at its latest point.
            let point = latest.map(|m| m.id);
            match take(store, 1, &host, &dir, point, OwnerState::Active).await? {
                Ok(r) => {
                    tracing::info!(group = %store.group, %host, dir = %dir.display(), "group claimed");
                    return Ok(Ok(r.epoch));
                }
                Err(other) => other,
            }
        }
    };
    Ok(match check_owner(store, &current, &host, &dir) {
        Ok(epoch) => Ok(epoch),
        Err(error) => Err(Fenced {
            owner: describe(&current),
            error,
        }),
    })
}

/// Before and after a commit: this host still owns the group at `epoch` (a takeover since
/// the cycle began fences it; see docs/store-layout.md, "Ownership").
pub async fn still_owner(store: &GroupStore, dir: &Path, epoch: u64) -> Result<()> {
    let records = owners::list(store).await?;
    let current = records
        .last()
        .context("the group's owner records vanished")?;
    let got = check_owner(store, current, &host_name(), &canonical_dir(dir))?;
    if got != epoch {
        return Err(fenced(store, current));
    }
    Ok(())
}

/// The epoch `current` gives this host and directory, or the error of a fenced one.
fn check_owner(store: &GroupStore, current: &OwnerRecord, host: &str, dir: &Path) -> Result<u64> {
    if current.state == OwnerState::Active && current.host == host && Path::new(&current.dir) == dir
    {
        return Ok(current.epoch);
    }
    Err(fenced(store, current))
}

/// Takes the group at `epoch` (the current epoch + 1) with create-if-absent. `Err(record)`:
/// another host took that epoch first; its record.
pub async fn take(
    store: &GroupStore,
    epoch: u64,
    host: &str,
    dir: &Path,
    point: Option<u64>,
    state: OwnerState,
) -> Result<std::result::Result<OwnerRecord, OwnerRecord>> {
    let me = OwnerRecord {
        version: hrl::owner::OWNER_VERSION,
        epoch,
        host: host.to_string(),
        dir: dir.display().to_string(),
        since_ns: hrl::now_ns(),
        point,
        state,
    };
    match owners::create(store, &me).await? {
        Put::Created => Ok(Ok(me)),
        Put::Existed => {
            let records = owners::list(store).await?;
            let other = records
                .into_iter()
                .find(|r| r.epoch == epoch)
                .context("an owner record vanished")?;
            Ok(Err(other))
        }
    }
}

/// The group's owner records (for `failover` and `status`).
pub async fn records(store: &GroupStore) -> Result<Vec<OwnerRecord>> {
    Ok(owners::list(store).await?)
}

/// One line naming who holds the group since when.
pub fn describe(r: &OwnerRecord) -> String {
    let since = crate::recover::points::fmt_time(r.since_ns);
    match r.state {
        OwnerState::Active => format!(
            "host {} directory {} since {since} (epoch {}{})",
            r.host,
            r.dir,
            r.epoch,
            r.point.map(|p| format!(", from point {p}")).unwrap_or_default()
        ),
        OwnerState::HandedOver => format!(
            "nobody: host {} directory {} handed it over at point {} at {since} (epoch {}), waiting for `hrl-shipper failover` on the recovery host",
            r.host,
            r.dir,
            r.point.unwrap_or(0),
            r.epoch
        ),
    }
}

fn fenced(store: &GroupStore, owner: &OwnerRecord) -> anyhow::Error {
    let host = host_name();
    let what = describe(owner);
    let todo = match owner.state {
        OwnerState::HandedOver => format!(
            "on the recovery host run `hrl-shipper failover --target {} --group {} --to DIR`",
            store.target.url, store.group
        ),
        OwnerState::Active => format!(
            "to make this host the primary again, fail back: on {} run `hrl-shipper failover planned --dir {}`, then here `hrl-shipper failover --target {} --group {} --to DIR`",
            owner.host, owner.dir, store.target.url, store.group
        ),
    };
    Fatal(format!(
        "group {:?} in {} is owned by {what}, not by this host ({host}): this host is fenced; nothing was committed and its logs stay on this host. {todo}",
        store.group, store.target.url
    ))
    .into()
}

/// The fence of a group whose owner has no record yet (points from before owner records).
fn fenced_by(store: &GroupStore, owner: &str) -> anyhow::Error {
    Fatal(format!(
        "group {:?} in {} is owned by {owner}, not by this host ({}); nothing was written. Give this directory its own group (omit --group for the default, unique per host and directory), or take the group over with `hrl-shipper failover`",
        store.group,
        store.target.url,
        host_name(),
    ))
    .into()
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
