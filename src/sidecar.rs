//! Opening hrl's own files beside a disk (its logs, its bitmap). The directory of disks is
//! writable by others (whoever may create a disk), and the tracker runs as root, so:
//! - a planted symlink is never followed (`O_NOFOLLOW`), and a new file is really new
//!   (`O_EXCL`), so root never creates or writes a file an attacker chose;
//! - a sidecar holds the disk's data (a log has every byte written to it), so it takes the
//!   disk's owner and group and a mode no wider than the disk's, at most 0600. A file that is
//!   no disk's sidecar (a log in the shipper's work directory) stays root's, 0600.
//!
//! Every sidecar creation and write-open goes through here (docs/SECURITY.md).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::naming::{classify, HrlFile};

/// Widest mode a sidecar gets (owner read/write; the disk's own mode narrows it further).
pub const MAX_MODE: u32 = 0o600;

fn open_raw(path: &Path, flags: i32, mode: u32) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid C string; the returned descriptor is owned by the File.
    let fd = unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(io::Error::other(format!(
                "{} is a symbolic link; hrl never follows links for its own files beside a disk \
                 (someone may have planted it): check it and remove it",
                path.display()
            )));
        }
        return Err(e);
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Creates a new sidecar (fails if anything, a symlink included, has the name already).
pub fn create_new(path: &Path) -> io::Result<File> {
    let file = open_raw(path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, MAX_MODE)?;
    if let Err(e) = match_disk(&file, path) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

/// Opens an existing sidecar for reading and writing, never through a symlink; its owner and
/// mode are brought in line with the disk (logs written by older versions were 0644).
pub fn open_existing(path: &Path) -> io::Result<File> {
    let file = open_raw(path, libc::O_RDWR, 0)?;
    match_disk(&file, path)?;
    Ok(file)
}

/// Opens a sidecar, creating it when missing (the bitmap).
pub fn open_or_create(path: &Path) -> io::Result<File> {
    match create_new(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open_existing(path),
        r => r,
    }
}

/// The mode, owner and group a sidecar of a disk with `disk_mode`, `uid`, `gid` gets.
pub fn sidecar_attrs(disk_mode: u32, uid: u32, gid: u32) -> (u32, u32, u32) {
    (disk_mode & MAX_MODE, uid, gid)
}

/// The disk a sidecar belongs to, found beside it by name.
fn disk_of(path: &Path) -> Option<std::fs::Metadata> {
    let name = path.file_name()?.to_str()?;
    let disk = match classify(name)? {
        HrlFile::ActiveLog { disk }
        | HrlFile::SealedLog { disk, .. }
        | HrlFile::Bitmap { disk } => disk,
        // A quarantined junk file belongs to no disk: it stays root's, 0600.
        HrlFile::Quarantined => return None,
    };
    let md = std::fs::symlink_metadata(path.parent()?.join(disk)).ok()?;
    md.file_type().is_file().then_some(md)
}

fn match_disk(file: &File, path: &Path) -> io::Result<()> {
    let (mode, uid, gid) = match disk_of(path) {
        Some(md) => sidecar_attrs(md.mode(), md.uid(), md.gid()),
        None => (MAX_MODE, 0, 0),
    };
    let fd = file.as_raw_fd();
    let st = file.metadata()?;
    if (st.uid(), st.gid()) != (uid, gid) {
        // SAFETY: plain syscall on our own descriptor.
        if unsafe { libc::fchown(fd, uid, gid) } != 0 {
            let e = io::Error::last_os_error();
            // Only root may give a file away; an unprivileged tool keeps its own files.
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e);
            }
        }
    }
    if st.mode() & 0o7777 != mode {
        // SAFETY: as above.
        if unsafe { libc::fchmod(fd, mode) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sidecars_refuse_symlinks_and_narrow_to_the_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("d.img");
        std::fs::write(&disk, b"x").unwrap();
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o640)).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let bitmap = tmp.path().join("d.img.hrl-bitmap");
        std::os::unix::fs::symlink(&victim, &bitmap).unwrap();
        assert!(open_or_create(&bitmap).is_err());
        assert!(create_new(&bitmap).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");

        let log = tmp.path().join("d.img.hrl");
        let f = create_new(&log).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
        std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o400)).unwrap();
        drop(open_existing(&log).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().mode() & 0o7777, 0o400);

        let work = tmp.path().join("1-5.hrl");
        let f = create_new(&work).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
    }
}
