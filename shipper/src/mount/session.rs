//! One mount of a point, from start to end: select the point, take a lease on it, open the
//! core, mount FUSE, renew the lease while mounted; at the end (unmount, SIGTERM) delete the
//! lease, write the test record and remove the scratch directory (logs, overlays). The
//! scratch directory's `mount.json` lets `unmount` finish the job of a mount process that
//! was killed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hrl::store::TestRecord;
use serde::{Deserialize, Serialize};

use super::core::{CoreOptions, MountCore};
use super::fuse::PointFs;
use crate::cli::args::KeyArgs;
use crate::recover::points;
use crate::store::{leases, tests, GroupStore};

/// What to mount.
#[derive(Clone)]
pub struct MountSpec {
    /// `latest`, an id or a time (see [`points::select`]).
    pub point: String,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub core: CoreOptions,
    /// The group's key files, kept (as paths) in `mount.json` so that whoever finishes the
    /// job of a killed mount can open an encrypted group.
    pub key: KeyArgs,
}

/// What a live mount leaves for `unmount` (and a later mount) in its scratch directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub target: String,
    pub group: String,
    pub point: u64,
    pub holder: String,
    pub started_ns: u64,
    /// `--key` of the mount (a path; none for a plain group).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `--passphrase-file` of the mount (a path).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

/// The fsname mounts of points show in /proc/self/mountinfo.
pub const SOURCE_PREFIX: &str = "hrl-point:";

/// The absolute path of `p` without a stat of `p` itself (which a dead mount refuses).
pub fn mount_path(p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).with_context(|| format!("resolve {}", p.display()))?;
    Ok(match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .with_context(|| format!("resolve {}", parent.display()))?
            .join(name),
        _ => abs,
    })
}

/// The scratch directory of the mount at `mountpoint` (absolute).
pub fn scratch_dir(state_dir: &Path, mountpoint: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(mountpoint.as_os_str().as_bytes());
    state_dir
        .join("mounts")
        .join(hrl::to_hex(&h.as_bytes()[..8]))
}

/// Where a mount process leaves its test record for `unmount`, beside its log: the store's
/// copy of an encrypted group is sealed with a key `unmount` is not given.
pub fn record_path(scratch: &Path) -> PathBuf {
    scratch.with_extension("record.json")
}

/// The record a finished mount process left at `scratch` (taken: the file is removed).
pub fn take_record(scratch: &Path) -> Option<TestRecord> {
    let p = record_path(scratch);
    let bytes = std::fs::read(&p).ok()?;
    let _ = std::fs::remove_file(&p);
    serde_json::from_slice(&bytes).ok()
}

fn absolute(p: Option<&Path>) -> Result<Option<PathBuf>> {
    p.map(|p| std::path::absolute(p).with_context(|| format!("resolve {}", p.display())))
        .transpose()
}

/// The store of the mount `info` describes, with its key.
pub fn store_of(info: &MountInfo) -> Result<GroupStore> {
    let store = GroupStore::new(crate::store::target::open(&info.target)?, &info.group)?;
    let key = KeyArgs {
        key: info.key_file.clone(),
        passphrase_file: info.passphrase_file.clone(),
    };
    key.apply(store)
}

pub fn read_info(scratch: &Path) -> Option<MountInfo> {
    let bytes = std::fs::read(scratch.join("mount.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// True if process `pid` runs.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// A point being served.
pub struct Serving {
    pub core: Arc<MountCore>,
    pub info: MountInfo,
    pub scratch: PathBuf,
    store: GroupStore,
    session: fuser::Session<PointFs>,
}

/// Takes the lease, opens the point and mounts it; the mount is live when this returns.
pub async fn start(store: GroupStore, spec: &MountSpec) -> Result<Serving> {
    let mountpoint = mount_path(&spec.dir)?;
    let scratch = scratch_dir(&spec.state_dir, &mountpoint);
    if let Some(old) = read_info(&scratch) {
        if alive(old.pid) {
            bail!(
                "{} is already served by hrl-shipper (pid {}); run `hrl-shipper unmount {}` first",
                mountpoint.display(),
                old.pid,
                mountpoint.display()
            );
        }
        // A killed mount process left its dead mount and its lease: take both away.
        let _ = super::unmount::umount(&mountpoint, libc::MNT_DETACH);
        finish_dead(&old, &scratch).await;
    }
    if !mountpoint.is_dir() {
        bail!("{}: not a directory", mountpoint.display());
    }
    // The point first: a refused key or an unknown point leaves nothing behind.
    let point = points::select(&store, &spec.point).await?;
    let _ = std::fs::remove_dir_all(&scratch);
    let _ = std::fs::remove_file(record_path(&scratch));
    crate::private::create_dir(&scratch)
        .with_context(|| format!("create {}", scratch.display()))?;
    let info = MountInfo {
        pid: std::process::id(),
        mountpoint: mountpoint.clone(),
        target: store.target.url.clone(),
        group: store.group.clone(),
        point: point.id,
        holder: leases::holder_name(),
        started_ns: hrl::now_ns(),
        // Absolute: `unmount` may run from another directory.
        key_file: absolute(spec.key.key.as_deref())?,
        passphrase_file: absolute(spec.key.passphrase_file.as_deref())?,
    };
    let opened = async {
        write_info(&scratch, &info)?;
        renew(&store, &info).await?;
        open_and_mount(&store, point, &scratch, &mountpoint, spec).await
    }
    .await;
    match opened {
        Ok((core, session)) => Ok(Serving {
            core,
            info,
            scratch,
            store,
            session,
        }),
        Err(e) => {
            let _ = leases::delete(&store, &info.holder).await;
            let _ = std::fs::remove_dir_all(&scratch);
            Err(e)
        }
    }
}

async fn open_and_mount(
    store: &GroupStore,
    point: hrl::store::PointManifest,
    scratch: &Path,
    mountpoint: &Path,
    spec: &MountSpec,
) -> Result<(Arc<MountCore>, fuser::Session<PointFs>)> {
    let id = point.id;
    let core = Arc::new(MountCore::open(store, point, scratch, spec.core.clone()).await?);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("{SOURCE_PREFIX}{}/{id}", store.group)),
        fuser::MountOption::Subtype("hrl-point".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoExec,
    ];
    if spec.core.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    config.clone_fd = true;
    let fs = PointFs::new(Arc::clone(&core), tokio::runtime::Handle::current());
    let session = fuser::Session::new(fs, mountpoint, &config)
        .with_context(|| format!("mount FUSE at {}", mountpoint.display()))?;
    raise_readahead(mountpoint);
    Ok((core, session))
}

/// Readahead of the mount in KiB: the kernel gives FUSE 128 KiB, and sequential reads of a
/// disk (a copy, a VM booting) go much faster with more requests in flight.
const READAHEAD_KB: u32 = 4096;

/// Sets the readahead of the mount's backing device info through sysfs; the device number
/// comes from /proc/self/mountinfo (a stat of the mount would wait for this process).
fn raise_readahead(mountpoint: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let target = mountpoint.to_string_lossy();
    let fields = |l: &str| l.split(' ').map(str::to_string).collect::<Vec<_>>();
    let dev = info
        .lines()
        .map(fields)
        .filter(|f| f.get(4).map(String::as_str) == Some(&*target))
        .filter_map(|f| f.get(2).cloned())
        .next_back();
    if let Some(dev) = dev {
        let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        if let Err(e) = std::fs::write(&path, READAHEAD_KB.to_string()) {
            tracing::debug!(path, error = %e, "cannot raise readahead");
        }
    }
}

fn write_info(scratch: &Path, info: &MountInfo) -> Result<()> {
    let p = scratch.join("mount.json");
    std::fs::write(&p, serde_json::to_vec_pretty(info)?)
        .with_context(|| format!("write {}", p.display()))
}

async fn renew(store: &GroupStore, info: &MountInfo) -> Result<()> {
    leases::put(
        store,
        &info.holder,
        info.point,
        "mount",
        leases::DEFAULT_EXPIRY,
    )
    .await
    .map(|_| ())
    .context("write the lease that keeps the point from retention")
}

impl Serving {
    /// Serves until the mount is unmounted (or SIGTERM/SIGINT unmounts it); then releases
    /// the lease, records the test and removes the scratch directory.
    pub async fn run(self) -> Result<TestRecord> {
        let Serving {
            core,
            info,
            scratch,
            store,
            session,
        } = self;
        let renewer = {
            let (store, info) = (store.clone(), info.clone());
            tokio::spawn(async move {
                let mut t = tokio::time::interval(leases::DEFAULT_EXPIRY / 3);
                t.tick().await;
                loop {
                    t.tick().await;
                    if let Err(e) = renew(&store, &info).await {
                        tracing::warn!(error = %format!("{e:#}"), "cannot renew the lease; retrying");
                    }
                }
            })
        };
        let stopper = tokio::spawn(unmount_on_signal(info.mountpoint.clone()));
        let served = tokio::task::spawn_blocking(move || session.run())
            .await
            .context("FUSE worker failed")?;
        renewer.abort();
        stopper.abort();
        let result = match &served {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("the FUSE session failed: {e}"),
        };
        let record = finish(&store, &info, &result, core.overlay_bytes()).await;
        if let Ok(r) = &record {
            let written = serde_json::to_vec(r)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(record_path(&scratch), b));
            if let Err(e) = written {
                tracing::warn!(error = %e, "cannot leave the test record for unmount");
            }
        }
        let _ = std::fs::remove_dir_all(&scratch);
        let stat = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(mount = %info.mountpoint.display(), point = info.point,
            chunks_fetched = stat(&core.blocks.fetched),
            cache_hits = stat(&core.blocks.cache.stats.hits),
            cache_misses = stat(&core.blocks.cache.stats.misses),
            "unmounted; overlay removed");
        served.context("FUSE session failed")?;
        record
    }
}

async fn unmount_on_signal(mountpoint: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: unmounting");
        if let Err(e) = super::unmount::umount(&mountpoint, 0) {
            tracing::warn!(error = %e, "unmount failed (the mount is busy?)");
        }
    }
}

/// Releases the lease and writes the test record of a mount that ended.
pub async fn finish(
    store: &GroupStore,
    info: &MountInfo,
    result: &str,
    overlay_bytes: u64,
) -> Result<TestRecord> {
    if let Err(e) = leases::delete(store, &info.holder).await {
        tracing::warn!(error = %e, "cannot delete the lease (it expires by itself)");
    }
    let record = TestRecord {
        version: 1,
        point: info.point,
        host: crate::replicate::owner::host_name(),
        started_ns: info.started_ns,
        ended_ns: hrl::now_ns(),
        result: result.to_string(),
        overlay_bytes,
    };
    tests::put(store, &record)
        .await
        .context("write the test-failover record")?;
    Ok(record)
}

/// Finishes the job of a mount process that died (kill -9): its lease and its record.
pub async fn finish_dead(info: &MountInfo, scratch: &Path) {
    match store_of(info) {
        Ok(store) => {
            let why = format!("the mount process (pid {}) died", info.pid);
            if let Err(e) = finish(&store, info, &why, 0).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot record the end of the dead mount");
            }
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot open the store of the dead mount")
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
}
