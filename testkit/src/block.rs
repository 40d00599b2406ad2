//! Kernel objects a test attaches and must detach even when it fails: an ext4 filesystem on
//! a loop device, a read-only bind mount, a tmpfs, and any list of undo commands.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::run;

/// ext4 on a loop device on an image, mounted at `mnt`; unmounted and detached on drop.
pub struct LoopFs {
    pub dev: String,
    pub mnt: PathBuf,
}

impl LoopFs {
    /// `losetup`, `mkfs.ext4` (inode tables and journal written now, so later writes are the
    /// test's own) and `mount` of `image` at `mnt`.
    pub fn create(image: &Path, mnt: &Path) -> LoopFs {
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(image))
            .trim()
            .to_string();
        let fs = LoopFs {
            dev,
            mnt: mnt.to_path_buf(),
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&fs.dev));
        std::fs::create_dir_all(mnt).expect("create the mount point");
        run(Command::new("mount").arg(&fs.dev).arg(mnt));
        fs
    }

    pub fn freeze(&self) {
        run(Command::new("fsfreeze").arg("-f").arg(&self.mnt));
    }

    pub fn thaw(&self) {
        run(Command::new("fsfreeze").arg("-u").arg(&self.mnt));
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A directory bind-mounted read-only over itself (a local store that answers reads and
/// refuses writes); undone on drop.
pub struct ReadOnly(PathBuf);

impl ReadOnly {
    pub fn over(dir: &Path) -> ReadOnly {
        run(Command::new("mount").arg("--bind").arg(dir).arg(dir));
        let guard = ReadOnly(dir.to_path_buf());
        run(Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(dir));
        guard
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A tmpfs of `mib` MiB mounted on a directory; unmounted on drop (drop it after the
/// tracker mounted on top).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn on(dir: &Path, mib: u64) -> Tmpfs {
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Commands run on drop, in order (each a program and its arguments): undoes what a test
/// attached by hand (a loop device, a bind mount).
pub struct Undo(pub Vec<Vec<String>>);

impl Drop for Undo {
    fn drop(&mut self) {
        for cmd in &self.0 {
            if let Some((program, args)) = cmd.split_first() {
                let _ = Command::new(program).args(args).status();
            }
        }
    }
}
