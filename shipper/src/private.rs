//! The shipper's local files hold disk data (coalesced logs in the state directory's `work/`,
//! chunks and logs of a local store), so they are root's alone: everything the shipper
//! creates is 0600 (umask 077, which also covers files the object store library writes) and
//! its state and local store directories are 0700, existing ones included (docs/SECURITY.md).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of the state and local store directories.
pub const DIR_MODE: u32 = 0o700;

/// Makes every file and directory the process creates from now on private to its user.
pub fn set_umask() {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
}

/// Creates `dir` (and its parents) if needed and makes it 0700. A directory that is already
/// 0700 is left untouched, so a read-only store (a replica site's mount, an outage) can still
/// be listed and restored from.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() && md.permissions().mode() & 0o7777 == DIR_MODE => return Ok(()),
        Ok(md) if md.is_dir() => {}
        _ => std::fs::create_dir_all(dir)?,
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
}
