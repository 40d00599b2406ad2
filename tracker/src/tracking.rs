//! The set of tracked disks of one mount: which files are disks, their lifecycle (created,
//! renamed, removed), recovery at startup, and the control operations on them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use hrl::control::{DiskMode, MountStatus, SealedLog};
use hrl::log::{verify_sealed, LogError, LogWriter};
use hrl::naming::{self, HrlFile};

use crate::core::inodes::BackingKey;
use crate::core::sys;
use crate::disk::{Change, Disk};

/// Errors of tracking setup and control operations.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Bitmap(#[from] hrl::bitmap::BitmapError),
    #[error("no tracked disk named {0:?} in this mount (see `hrl-tracker status`)")]
    NoSuchDisk(String),
    #[error(
        "seal failed for {disk}: {reason}; its active log keeps receiving changes, retry the seal"
    )]
    SealFailed { disk: String, reason: String },
}

/// Default disk patterns.
pub const DEFAULT_INCLUDE: &[&str] = &["*.vhd", "*.vhdx", "*.img", "*.raw", "*.qcow2"];

/// What a rename does to tracking, decided before the rename and carried out after it.
#[derive(Default)]
pub struct RenamePlan {
    moved: Option<(Arc<Disk>, Option<String>)>,
    replaced: Option<Arc<Disk>>,
    becomes_disk: Option<(String, BackingKey)>,
}

/// What an unlink does to a disk.
pub enum UnlinkPlan {
    /// The disk is gone.
    Retire(Arc<Disk>),
    /// The disk stays reachable under another hard link.
    Move(Arc<Disk>, String),
}

/// The disks of one mount.
pub struct Tracker {
    root: OwnedFd,
    root_path: PathBuf,
    mount_dir: PathBuf,
    include: Vec<String>,
    disks: RwLock<HashMap<BackingKey, Arc<Disk>>>,
    /// Sealed, unacked logs of disks that are gone (deleted or renamed away).
    retired: Mutex<Vec<SealedLog>>,
    /// Serializes seals; holds the last seal id.
    pub(crate) seal_state: Mutex<u64>,
    /// Where to report files the tracker removed from the root behind the kernel's back
    /// (so the kernel drops its inode, and the descriptor that keeps the space allocated).
    removed: Mutex<Option<std::sync::mpsc::Sender<Removed>>>,
}

/// A file the tracker removed from the mount root.
pub struct Removed {
    pub key: BackingKey,
    pub name: std::ffi::OsString,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TrackError {
    let what = what.into();
    move |source| TrackError::Io { what, source }
}

fn sealed_entry(
    dir: &Path,
    v: &hrl::log::VerifiedLog,
    disk: &str,
    log: &str,
    mode: DiskMode,
) -> SealedLog {
    let _ = dir;
    SealedLog {
        disk: disk.to_string(),
        disk_id: hrl::to_hex(&v.header.disk_id),
        generation: v.header.generation,
        seq: v.header.sequence,
        log: log.to_string(),
        bytes: v.file_len,
        hash: hrl::to_hex(&v.seal.hash),
        prev_hash: hrl::to_hex(&v.header.prev_hash),
        records: v.seal.records,
        disk_size: v.header.disk_size,
        mode,
    }
}

impl Tracker {
    /// Opens tracking over the backing directory `root` (an `O_PATH` directory descriptor),
    /// served at `mount_dir`. Resumes every disk found, recovering after a crash.
    pub fn open(
        root: OwnedFd,
        mount_dir: &Path,
        include: Vec<String>,
    ) -> Result<Tracker, TrackError> {
        let root_path = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()));
        let t = Tracker {
            root,
            root_path,
            mount_dir: mount_dir.to_path_buf(),
            include,
            disks: RwLock::new(HashMap::new()),
            retired: Mutex::new(Vec::new()),
            seal_state: Mutex::new(0),
            removed: Mutex::new(None),
        };
        t.scan()?;
        Ok(t)
    }

    /// Sets where removals of the tracker's own files are reported.
    pub fn report_removals_to(&self, tx: std::sync::mpsc::Sender<Removed>) {
        *self.removed.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Removes one of the tracker's files from the root and reports it.
    fn remove_own_file(&self, name: &str) -> io::Result<()> {
        let st = sys::statat(self.root_fd(), OsStr::new(name))?;
        sys::unlinkat(self.root_fd(), OsStr::new(name), 0)?;
        if let Some(tx) = self
            .removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(Removed {
                key: (st.st_dev, st.st_ino),
                name: name.into(),
            });
        }
        Ok(())
    }

    pub fn root_fd(&self) -> RawFd {
        self.root.as_raw_fd()
    }

    /// True if `name` is one of hrl's own files (logs, bitmaps).
    pub fn is_hrl_name(&self, name: &OsStr) -> bool {
        name.to_str().and_then(naming::classify).is_some()
    }

    /// True if a regular file called `name` in the root is a disk.
    pub fn is_disk_name(&self, name: &str) -> bool {
        naming::classify(name).is_none()
            && self.include.iter().any(|p| crate::glob::matches(p, name))
    }

    pub fn disk(&self, key: BackingKey) -> Option<Arc<Disk>> {
        self.disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
    }

    /// Tracked disks, sorted by name.
    pub fn disks(&self) -> Vec<Arc<Disk>> {
        let mut v: Vec<Arc<Disk>> = self
            .disks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|d| d.name());
        v
    }

    fn disk_by_name(&self, name: &str) -> Option<Arc<Disk>> {
        self.disks().into_iter().find(|d| d.name() == name)
    }

    /// Finds disks and sealed logs in the backing directory and resumes tracking.
    fn scan(&self) -> Result<(), TrackError> {
        let dirfd = sys::openat(
            self.root_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(io_err("open the backing directory"))?;
        let entries = sys::read_dir_entries(dirfd.as_raw_fd())
            .map_err(io_err("read the backing directory"))?;
        let mut sealed: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
        let mut candidates = Vec::new();
        for (_, _, name) in entries {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            match naming::classify(&name) {
                Some(HrlFile::SealedLog { disk, seq }) => {
                    sealed.entry(disk).or_default().insert(seq, name);
                }
                Some(_) => {}
                None => {
                    if self.is_disk_name(&name) {
                        candidates.push(name);
                    }
                }
            }
        }
        for name in candidates {
            let Ok(st) = sys::statat(self.root_fd(), OsStr::new(&name)) else {
                continue;
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                continue;
            }
            let logs = sealed.remove(&name).unwrap_or_default();
            let (pending, last) = self.load_sealed(&name, &logs)?;
            let start = match last {
                Some(v) => crate::disk::Start::Continue {
                    last_seq: v.header.sequence,
                    prev: hrl::log::chain_hash(&v.header, &v.seal),
                    id: v.header.disk_id,
                    generation: v.header.generation,
                },
                None => crate::disk::Start::Fresh { first_seq: 1 },
            };
            let opened = Disk::open(
                &self.root_path,
                &name,
                (st.st_dev, st.st_ino),
                pending,
                start,
            )?;
            if opened.recovered {
                tracing::warn!(disk = %name, "resumed after an unclean stop");
            }
            self.disks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert((st.st_dev, st.st_ino), Arc::new(opened.disk));
        }
        // Sealed logs whose disk is gone: still to be shipped.
        for (name, logs) in sealed {
            let (pending, _) = self.load_sealed(&name, &logs)?;
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(pending);
        }
        Ok(())
    }

    /// Verifies a disk's sealed logs, finishing a seal a crash interrupted.
    fn load_sealed(
        &self,
        disk: &str,
        logs: &BTreeMap<u64, String>,
    ) -> Result<(Vec<SealedLog>, Option<hrl::log::VerifiedLog>), TrackError> {
        let mut out = Vec::new();
        let mut last = None;
        for file in logs.values() {
            let path = self.root_path.join(file);
            let v = match verify_sealed(&path, None) {
                Ok(v) => v,
                Err(LogError::NotSealed { .. }) => {
                    tracing::warn!(log = %file, "finishing a seal interrupted by a crash");
                    let (w, _) = LogWriter::open_append(&path)?;
                    w.seal()?;
                    verify_sealed(&path, None)?
                }
                Err(e) => return Err(e.into()),
            };
            out.push(sealed_entry(&self.root_path, &v, disk, file, DiskMode::Log));
            last = Some(v);
        }
        Ok((out, last))
    }

    fn first_free_seq(&self, name: &str) -> u64 {
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|s| s.disk == name)
            .map(|s| s.seq + 1)
            .max()
            .unwrap_or(1)
    }

    /// Starts tracking a file just created (or renamed) in the root if it is a disk.
    pub fn on_created(&self, name: &OsStr, key: BackingKey, mode: u32) -> io::Result<()> {
        let Some(name) = name.to_str() else {
            return Ok(());
        };
        if mode & libc::S_IFMT != libc::S_IFREG
            || !self.is_disk_name(name)
            || self.disk(key).is_some()
        {
            return Ok(());
        }
        let start = crate::disk::Start::Fresh {
            first_seq: self.first_free_seq(name),
        };
        match Disk::open(&self.root_path, name, key, Vec::new(), start) {
            Ok(opened) => {
                tracing::info!(disk = name, "tracking new disk");
                self.disks
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Arc::new(opened.disk));
                Ok(())
            }
            Err(e) => {
                tracing::error!(disk = name, error = %e, "cannot start tracking a new disk");
                Err(match e {
                    TrackError::Io { source, .. } => source,
                    TrackError::Log(l) => {
                        io::Error::from_raw_os_error(l.raw_os_error().unwrap_or(libc::EIO))
                    }
                    _ => io::Error::from_raw_os_error(libc::EIO),
                })
            }
        }
    }

    /// Logs what removing the name `name` does to a disk, before the name goes: a removal
    /// (retired after the unlink), or, when another hard link keeps the disk, a rename.
    pub fn before_unlink(
        &self,
        name: &OsStr,
        key: BackingKey,
        nlink: u64,
    ) -> io::Result<Option<UnlinkPlan>> {
        let Some(d) = self.disk(key) else {
            return Ok(None);
        };
        if d.name().as_str() != name.to_str().unwrap_or("") {
            return Ok(None);
        }
        if nlink > 1 {
            if let Some(other) = self.other_disk_link(name, key) {
                d.lock_settled().record_lifecycle(Change::Rename {
                    name: other.clone(),
                })?;
                return Ok(Some(UnlinkPlan::Move(d, other)));
            }
        }
        d.lock_settled().record_lifecycle(Change::Delete)?;
        Ok(Some(UnlinkPlan::Retire(d)))
    }

    /// Carries out an unlink plan once the name is gone.
    pub fn after_unlink(&self, plan: Option<UnlinkPlan>) {
        match plan {
            Some(UnlinkPlan::Retire(d)) => self.retire(&d),
            Some(UnlinkPlan::Move(d, other)) => {
                if let Err(e) = self.rename_files(&d, &other) {
                    tracing::error!(disk = %other, error = %e, "cannot rename the disk's log and bitmap");
                }
            }
            None => {}
        }
    }

    /// Another name in the root, with a disk pattern, for the same backing file.
    fn other_disk_link(&self, name: &OsStr, key: BackingKey) -> Option<String> {
        let dirfd = sys::openat(
            self.root_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .ok()?;
        sys::read_dir_entries(dirfd.as_raw_fd())
            .ok()?
            .into_iter()
            .filter_map(|(_, _, n)| String::from_utf8(n).ok())
            .filter(|n| n.as_str() != name.to_str().unwrap_or("") && self.is_disk_name(n))
            .find(|n| {
                sys::statat(self.root_fd(), OsStr::new(n))
                    .map(|st| (st.st_dev, st.st_ino) == key)
                    .unwrap_or(false)
            })
    }

    /// Logs what a rename does to disks (before it happens).
    pub fn before_rename(
        &self,
        old_in_root: Option<&OsStr>,
        new_in_root: Option<&OsStr>,
        key: BackingKey,
        mode: u32,
        replaced: Option<BackingKey>,
    ) -> io::Result<RenamePlan> {
        let mut plan = RenamePlan::default();
        let new_disk_name = new_in_root
            .and_then(|n| n.to_str())
            .filter(|n| self.is_disk_name(n) && mode & libc::S_IFMT == libc::S_IFREG)
            .map(str::to_string);
        let moved = self
            .disk(key)
            .filter(|d| old_in_root.and_then(|n| n.to_str()) == Some(d.name().as_str()));
        if let Some(r) = replaced.filter(|r| *r != key).and_then(|r| self.disk(r)) {
            r.lock_settled().record_lifecycle(Change::Delete)?;
            plan.replaced = Some(r);
        }
        match moved {
            Some(d) => {
                let change = match &new_disk_name {
                    Some(n) => Change::Rename { name: n.clone() },
                    None => Change::Delete,
                };
                d.lock_settled().record_lifecycle(change)?;
                plan.moved = Some((d, new_disk_name));
            }
            None => {
                if let Some(n) = new_disk_name {
                    if self.disk(key).is_none() {
                        plan.becomes_disk = Some((n, key));
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Carries out a rename plan after the rename succeeded.
    pub fn after_rename(&self, plan: RenamePlan) {
        if let Some(r) = plan.replaced {
            self.retire(&r);
        }
        if let Some((d, new_name)) = plan.moved {
            match new_name {
                Some(n) => {
                    if let Err(e) = self.rename_files(&d, &n) {
                        tracing::error!(disk = %n, error = %e, "cannot rename the disk's log and bitmap");
                    }
                }
                None => self.retire(&d),
            }
        }
        if let Some((n, key)) = plan.becomes_disk {
            let _ = self.on_created(OsStr::new(&n), key, libc::S_IFREG);
        }
    }

    fn rename_files(&self, d: &Disk, new: &str) -> Result<(), TrackError> {
        let mut st = d.lock_settled();
        let old_disk = self.root_path.join(&st.name);
        let new_disk = self.root_path.join(new);
        if let Some(log) = st.log.as_mut() {
            log.rename_to(&naming::active_log_path(&new_disk))?;
        }
        std::fs::rename(
            naming::bitmap_path(&old_disk),
            naming::bitmap_path(&new_disk),
        )
        .map_err(io_err("rename the dirty bitmap"))?;
        st.name = new.to_string();
        Ok(())
    }

    /// Stops tracking a disk that is gone: seals its last log (which records the removal)
    /// and keeps its unacked logs for the shipper.
    fn retire(&self, d: &Arc<Disk>) {
        self.disks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.key);
        let mut st = d.lock_settled();
        st.retired = true;
        let name = st.name.clone();
        let mut pending = std::mem::take(&mut st.pending);
        if let Some(mut log) = st.log.take() {
            let h = log.header().clone();
            let file = naming::sealed_log_path(Path::new(&name), h.sequence);
            let file = file.to_string_lossy().into_owned();
            let path = self.root_path.join(&file);
            let res = log
                .rename_to(&path)
                .and_then(|_| log.seal())
                .and_then(|_| verify_sealed(&path, None));
            match res {
                Ok(v) => pending.push(sealed_entry(&self.root_path, &v, &name, &file, st.mode)),
                Err(e) => {
                    tracing::error!(disk = %name, error = %e, "cannot seal the log of a removed disk")
                }
            }
        }
        if st.bitmap.take().is_some() {
            let bitmap = naming::bitmap_path(Path::new(&name));
            let _ = self.remove_own_file(&bitmap.to_string_lossy());
        }
        drop(st);
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(pending);
    }

    pub(crate) fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Records a sealed log as waiting for its ack (with the retired disks' logs if the disk
    /// went away meanwhile).
    pub fn add_pending(&self, d: &Disk, entry: SealedLog) {
        let mut st = d.lock();
        if st.retired {
            drop(st);
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry);
        } else {
            st.pending.push(entry);
        }
    }

    /// Every sealed log not acked yet.
    pub fn pending(&self) -> Vec<SealedLog> {
        let mut out: Vec<SealedLog> = self
            .retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for d in self.disks() {
            out.extend(d.lock().pending.iter().cloned());
        }
        out
    }

    /// Deletes `disk`'s sealed logs with sequence <= `seq`.
    pub fn ack(&self, disk: &str, seq: u64) -> Result<usize, TrackError> {
        let mut gone: Vec<SealedLog> = Vec::new();
        let mut found = false;
        if let Some(d) = self.disk_by_name(disk) {
            found = true;
            let mut st = d.lock();
            let (drop_, keep): (Vec<_>, Vec<_>) = st.pending.drain(..).partition(|p| p.seq <= seq);
            st.pending = keep;
            gone.extend(drop_);
        }
        {
            let mut r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            if r.iter().any(|p| p.disk == disk) {
                found = true;
            }
            let (drop_, keep): (Vec<_>, Vec<_>) =
                r.drain(..).partition(|p| p.disk == disk && p.seq <= seq);
            *r = keep;
            gone.extend(drop_);
        }
        if !found {
            return Err(TrackError::NoSuchDisk(disk.to_string()));
        }
        for p in &gone {
            if let Err(e) = self.remove_own_file(&p.log) {
                if e.kind() != io::ErrorKind::NotFound {
                    return Err(TrackError::Io {
                        what: format!("delete acked log {}", p.log),
                        source: e,
                    });
                }
            }
        }
        Ok(gone.len())
    }

    pub fn status(&self, socket: &Path) -> MountStatus {
        MountStatus {
            mount: self.mount_dir.display().to_string(),
            socket: socket.display().to_string(),
            pid: std::process::id(),
            disks: self.disks().iter().map(|d| d.status()).collect(),
        }
    }

    pub fn set_mode(&self, disk: &str, mode: DiskMode) -> Result<(), TrackError> {
        self.disk_by_name(disk)
            .ok_or_else(|| TrackError::NoSuchDisk(disk.into()))?
            .set_mode(mode);
        Ok(())
    }

    pub fn dirty(&self, disk: &str) -> Result<Vec<(u64, u64)>, TrackError> {
        Ok(self
            .disk_by_name(disk)
            .ok_or_else(|| TrackError::NoSuchDisk(disk.into()))?
            .dirty())
    }

    pub fn clear(&self, disk: &str, upto: u64) -> Result<(), TrackError> {
        self.disk_by_name(disk)
            .ok_or_else(|| TrackError::NoSuchDisk(disk.into()))?
            .clear_upto(upto)
            .map_err(io_err("clear the dirty bitmap"))
    }

    /// Clean stop of every disk: logs Closed, images durable, bitmaps clean.
    pub fn close_all(&self) {
        for d in self.disks() {
            if let Err(e) = d.close_clean() {
                tracing::error!(disk = %d.name(), error = %e, "clean close failed; the next start will resync its marked extents");
            }
        }
    }
}
