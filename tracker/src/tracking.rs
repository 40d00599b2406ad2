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

/// True if a regular file called `name` in the root is a disk under the `include` patterns.
pub fn is_disk_name(include: &[String], name: &str) -> bool {
    naming::classify(name).is_none() && include.iter().any(|p| crate::glob::matches(p, name))
}

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

/// What the startup scan found in the root.
#[derive(Default)]
struct Found {
    /// Sealed logs that verify: (file name, log).
    logs: Vec<(String, hrl::log::VerifiedLog)>,
    /// Warnings about quarantined files, by the disk name they were found under.
    suspect: HashMap<String, Vec<String>>,
    /// Disk files by backing inode: (link count, names in the root).
    disks: BTreeMap<BackingKey, (u64, Vec<String>)>,
}

/// One disk to resume at startup.
struct DiskPlan {
    key: BackingKey,
    name: String,
    /// The disk id of its active log, if it has a readable one.
    id: Option<[u8; 16]>,
    link_warning: Option<String>,
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

fn sealed_entry(v: &hrl::log::VerifiedLog, disk: &str, log: &str, mode: DiskMode) -> SealedLog {
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
        changed_outside: false,
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
        is_disk_name(&self.include, name)
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

    /// Names in the backing directory (valid UTF-8 ones; others are not hrl's).
    fn root_names(&self) -> Result<Vec<String>, TrackError> {
        let dirfd = sys::openat(
            self.root_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(io_err("open the backing directory"))?;
        let entries = sys::read_dir_entries(dirfd.as_raw_fd())
            .map_err(io_err("read the backing directory"))?;
        let mut names: Vec<String> = entries
            .into_iter()
            .filter_map(|(_, _, n)| String::from_utf8(n).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Finds disks and sealed logs in the backing directory and resumes tracking. Chains
    /// are followed by disk id, not by name: a disk renamed while its logs were pending
    /// keeps them, and a new disk under an old name does not inherit them. A log that
    /// cannot be read is set aside (quarantined) and its disk compared in full, so one bad
    /// file never keeps the others from being tracked.
    fn scan(&self) -> Result<(), TrackError> {
        let mut found = self.find_files()?;
        let plans = self.plan_disks(&mut found)?;
        let mut chains = self.assign_logs(found.logs, &plans);
        for p in plans {
            let chain = chains.remove(&p.name).unwrap_or_default();
            let start = match chain.last() {
                Some((_, v)) => crate::disk::Start::Continue {
                    last_seq: v.header.sequence,
                    prev: hrl::log::chain_hash(&v.header, &v.seal),
                    id: v.header.disk_id,
                    generation: v.header.generation,
                },
                None => crate::disk::Start::Fresh { first_seq: 1 },
            };
            let pending = chain
                .iter()
                .map(|(f, v)| sealed_entry(v, &p.name, f, DiskMode::Log))
                .collect();
            let opened = Disk::open(&self.root_path, &p.name, p.key, pending, start)?;
            if opened.recovered {
                tracing::warn!(disk = %p.name, "resumed after an unclean stop");
            }
            if let Some(w) = p.link_warning {
                opened.disk.warn(w);
            }
            if let Some(ws) = found.suspect.remove(&p.name) {
                let what = format!("mark disk {} for a full compare", p.name);
                opened.disk.distrust(ws).map_err(io_err(what))?;
            }
            self.disks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(p.key, Arc::new(opened.disk));
        }
        for (disk, ws) in found.suspect {
            for w in ws {
                tracing::warn!(%disk, "{w} (no such disk is tracked)");
            }
        }
        Ok(())
    }

    /// The sealed logs (verified; unreadable ones quarantined) and the disk files of the root.
    fn find_files(&self) -> Result<Found, TrackError> {
        let mut found = Found::default();
        for name in self.root_names()? {
            match naming::classify(&name) {
                Some(HrlFile::SealedLog { disk, .. }) => match self.load_sealed(&name) {
                    Ok(v) => found.logs.push((name, v)),
                    Err(e) => {
                        let w = self.quarantine(&name, e)?;
                        found.suspect.entry(disk).or_default().push(w);
                    }
                },
                Some(_) => {}
                None if self.is_disk_name(&name) => {
                    let Ok(st) = sys::statat(self.root_fd(), OsStr::new(&name)) else {
                        continue;
                    };
                    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
                        let c = found.disks.entry((st.st_dev, st.st_ino)).or_default();
                        c.0 = st.st_nlink;
                        c.1.push(name);
                    }
                }
                None => {}
            }
        }
        Ok(found)
    }

    /// One name per backing file (hard links: see `pick_link`), and the id its active log
    /// says (an unreadable active log is quarantined).
    fn plan_disks(&self, found: &mut Found) -> Result<Vec<DiskPlan>, TrackError> {
        let mut plans = Vec::new();
        for (key, (nlink, links)) in std::mem::take(&mut found.disks) {
            let (name, link_warning) = self.pick_link(&links, nlink);
            let active = naming::active_log_path(Path::new(&name));
            let active = active.to_string_lossy().into_owned();
            let id = match hrl::log::LogReader::open(&self.root_path.join(&active)) {
                Ok(r) => Some(r.header().disk_id),
                Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    None
                }
                Err(e) => {
                    let w = self.quarantine(&active, e)?;
                    found.suspect.entry(name.clone()).or_default().push(w);
                    None
                }
            };
            plans.push(DiskPlan {
                key,
                name,
                id,
                link_warning,
            });
        }
        Ok(plans)
    }

    /// Gives each sealed log to its disk: the disk whose active log has its id, else (no
    /// active log) the disk named in the file name, for the id of its latest log there.
    /// Logs no disk claims are of removed disks: they go to the retired list.
    fn assign_logs(
        &self,
        mut logs: Vec<(String, hrl::log::VerifiedLog)>,
        plans: &[DiskPlan],
    ) -> HashMap<String, Vec<(String, hrl::log::VerifiedLog)>> {
        let named = |f: &str, name: &str| matches!(naming::classify(f), Some(HrlFile::SealedLog { disk, .. }) if disk == name);
        let mut claimed: HashMap<[u8; 16], String> = plans
            .iter()
            .filter_map(|p| Some((p.id?, p.name.clone())))
            .collect();
        for p in plans.iter().filter(|p| p.id.is_none()) {
            let latest = logs
                .iter()
                .filter(|(f, v)| !claimed.contains_key(&v.header.disk_id) && named(f, &p.name))
                .max_by_key(|(_, v)| (v.header.generation, v.header.sequence));
            if let Some((_, v)) = latest {
                claimed.insert(v.header.disk_id, p.name.clone());
            }
        }
        logs.sort_by_key(|(_, v)| (v.header.generation, v.header.sequence));
        let mut chains: HashMap<String, Vec<(String, hrl::log::VerifiedLog)>> = HashMap::new();
        for (file, v) in logs {
            match claimed.get(&v.header.disk_id) {
                Some(owner) => chains.entry(owner.clone()).or_default().push((file, v)),
                None => {
                    let disk = match naming::classify(&file) {
                        Some(HrlFile::SealedLog { disk, .. }) => disk,
                        _ => String::new(),
                    };
                    self.retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sealed_entry(&v, &disk, &file, DiskMode::Log));
                }
            }
        }
        chains
    }

    /// The name a disk with several hard links is tracked under: the one whose active log
    /// exists (it continues its chain), else the first in name order. Its other names are
    /// not disks (new links to disks are refused: docs/tracker.md); the warning says so.
    fn pick_link(&self, links: &[String], nlink: u64) -> (String, Option<String>) {
        let has_log = |n: &String| {
            let log = naming::active_log_path(Path::new(n));
            sys::statat(self.root_fd(), log.as_os_str()).is_ok()
        };
        let name = links
            .iter()
            .find(|n| has_log(n))
            .unwrap_or(&links[0])
            .clone();
        let warning = (nlink > 1).then(|| {
            let others: Vec<&str> = links
                .iter()
                .filter(|n| **n != name)
                .map(String::as_str)
                .collect();
            let msg =
                format!(
                "disk {name} has {nlink} hard links (in this directory also: {}); it is tracked \
                 as {name} only. Remove the other links: a disk has one name",
                if others.is_empty() { "none".to_string() } else { others.join(", ") }
            );
            tracing::warn!("{msg}");
            msg
        });
        (name, warning)
    }

    /// Sets an unreadable hrl file aside (`<file>.quarantined-<secs>`) and says so.
    fn quarantine(&self, file: &str, why: LogError) -> Result<String, TrackError> {
        if let LogError::Io { .. } = why {
            // Not a bad file but a failing filesystem: do not hide it.
            return Err(TrackError::Log(why));
        }
        let secs = hrl::now_ns() / 1_000_000_000;
        let to = naming::quarantine_path(Path::new(file), secs)
            .to_string_lossy()
            .into_owned();
        std::fs::rename(self.root_path.join(file), self.root_path.join(&to))
            .map_err(io_err(format!("move the unreadable log {file} aside")))?;
        let msg = format!(
            "{file} could not be read ({why}); it was moved aside to {to} and the disk is \
             compared in full with its replica. Delete {to} once you no longer need it"
        );
        tracing::warn!("{msg}");
        Ok(msg)
    }

    /// Verifies a sealed log, finishing a seal a crash interrupted.
    fn load_sealed(&self, file: &str) -> Result<hrl::log::VerifiedLog, LogError> {
        let path = self.root_path.join(file);
        match verify_sealed(&path, None) {
            Err(LogError::NotSealed { .. }) => {
                tracing::warn!(log = %file, "finishing a seal interrupted by a crash");
                let (w, _) = LogWriter::open_append(&path)?;
                w.seal()?;
                verify_sealed(&path, None)
            }
            r => r,
        }
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
                // What the attempt made (a bitmap, a log cut short by ENOSPC) would block
                // the next one: a new disk has no files of its own yet.
                for own in [
                    naming::active_log_path(Path::new(name)),
                    naming::bitmap_path(Path::new(name)),
                ] {
                    let _ = self.remove_own_file(&own.to_string_lossy());
                }
                Err(match e {
                    TrackError::Io { source, .. } => source,
                    TrackError::Log(l) => {
                        io::Error::from_raw_os_error(l.raw_os_error().unwrap_or(libc::EIO))
                    }
                    // ENOSPC reserving the bitmap reaches the creator as ENOSPC.
                    TrackError::Bitmap(hrl::bitmap::BitmapError::Io { source, .. }) => {
                        io::Error::from_raw_os_error(source.raw_os_error().unwrap_or(libc::EIO))
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
        // Its pending logs keep their file names but are the disk's under its new name.
        for p in &mut st.pending {
            p.disk = new.to_string();
        }
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
            let id = hrl::to_hex(&h.disk_id);
            let file = naming::sealed_log_path(Path::new(&name), h.sequence, &id);
            let file = file.to_string_lossy().into_owned();
            let path = self.root_path.join(&file);
            let res = log
                .rename_to(&path)
                .and_then(|_| log.seal())
                .and_then(|_| verify_sealed(&path, None));
            match res {
                Ok(v) => pending.push(sealed_entry(&v, &name, &file, st.mode)),
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

    /// Deletes `disk`'s sealed logs with sequence <= `seq`; with `disk_id`, only the logs of
    /// that disk id (two disks may have held the same name one after the other).
    pub fn ack(&self, disk: &str, disk_id: Option<&str>, seq: u64) -> Result<usize, TrackError> {
        let mut gone: Vec<SealedLog> = Vec::new();
        let mut found = false;
        let of_id = |p: &SealedLog| disk_id.is_none_or(|id| p.disk_id.eq_ignore_ascii_case(id));
        if let Some(d) = self.disk_by_name(disk) {
            found = true;
            let mut st = d.lock();
            let (drop_, keep): (Vec<_>, Vec<_>) =
                st.pending.drain(..).partition(|p| p.seq <= seq && of_id(p));
            st.pending = keep;
            gone.extend(drop_);
        }
        {
            let mut r = self.retired.lock().unwrap_or_else(|p| p.into_inner());
            if r.iter().any(|p| p.disk == disk) {
                found = true;
            }
            let (drop_, keep): (Vec<_>, Vec<_>) = r
                .drain(..)
                .partition(|p| p.disk == disk && p.seq <= seq && of_id(p));
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
            untracked: crate::bypass::untracked(self),
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
