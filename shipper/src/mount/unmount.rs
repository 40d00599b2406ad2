//! `hrl-shipper unmount DIR`: unmounts a served point and waits until its process released
//! the lease and wrote the test record; after a mount process was killed, detaches the dead
//! mount and does that job itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hrl::store::TestRecord;

use super::session::{
    alive, finish_dead, mount_path, read_info, scratch_dir, store_of, take_record, MountInfo,
};

/// How long `unmount` waits for the mount process to finish after the kernel let go.
const WAIT: Duration = Duration::from_secs(120);

pub fn umount(p: &Path, flags: i32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts the point served at `dir`; the test record its mount wrote, if readable.
pub async fn unmount(dir: &Path, state_dir: &Path) -> Result<Option<TestRecord>> {
    let mountpoint = mount_path(dir)?;
    let scratch = scratch_dir(state_dir, &mountpoint);
    let info = read_info(&scratch);
    let live = info.as_ref().is_some_and(|i| alive(i.pid));
    // A dead server's mount refuses a plain unmount on some kernels: detach it.
    let flags = if live { 0 } else { libc::MNT_DETACH };
    match umount(&mountpoint, flags) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && info.is_some() => {
            tracing::info!(dir = %mountpoint.display(), "not mounted any more");
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            bail!("{} is not a mount point", mountpoint.display())
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
            "{} is busy (a loop device or a program still uses a disk); detach it and retry",
            mountpoint.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("unmount {}", mountpoint.display()));
        }
    }
    let Some(info) = info else {
        return Ok(None);
    };
    if live {
        let started = Instant::now();
        while alive(info.pid) && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if alive(info.pid) {
            bail!(
                "the mount process (pid {}) did not finish within {WAIT:?} (see its log)",
                info.pid
            );
        }
        if read_info(&scratch).is_none() {
            return Ok(match take_record(&scratch) {
                Some(r) => Some(r),
                None => record_of(&info).await,
            });
        }
    }
    // The process died without finishing: release its lease, record the test, clean up.
    finish_dead(&info, &scratch).await;
    Ok(record_of(&info).await)
}

async fn record_of(info: &MountInfo) -> Option<TestRecord> {
    let store = store_of(info).ok()?;
    crate::store::tests::get(&store, info.point, info.started_ns)
        .await
        .ok()
        .flatten()
}
