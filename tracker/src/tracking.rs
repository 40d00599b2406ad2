//! The set of tracked disks of one mount: which files are disks, their lifecycle (created,
//! renamed, removed), recovery at startup, and the control operations on them.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use hrl::control::{DiskMode, MountStatus, SealedLog};
use hrl::log::{verify_sealed, LogError, LogWriter};
use hrl::naming::{self, HrlFile};

use crate::core::{ChangeSink, RenameOf};
use crate::disk::{sealed_entry, Change, Disk, Start};
use crate::error::TrackError;
use crate::sys::{self, BackingKey, Stat};

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

    /// The backing directory (an `O_PATH` descriptor).
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
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
        let entries =
            sys::read_dir(self.root_fd()).map_err(io_err("read the backing directory"))?;
        let mut names: Vec<String> = entries
            .into_iter()
            .filter_map(|e| String::from_utf8(e.name).ok())
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
                Some((_, v)) => Start::Continue {
                    last_seq: v.header.sequence,
                    prev: hrl::log::chain_hash(&v.header, &v.seal),
                    id: v.header.disk_id,
                    generation: v.header.generation,
                },
                None => Start::Fresh { first_seq: 1 },
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
                        let c = found.disks.entry(st.key()).or_default();
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
    fn on_created(&self, name: &OsStr, key: BackingKey, mode: u32) -> io::Result<()> {
        let Some(name) = name.to_str() else {
            return Ok(());
        };
        if mode & libc::S_IFMT != libc::S_IFREG
            || !self.is_disk_name(name)
            || self.disk(key).is_some()
        {
            return Ok(());
        }
        let start = Start::Fresh {
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
                Err(e.into_io())
            }
        }
    }

    /// Logs what removing the name `name` does to a disk, before the name goes: a removal
    /// (retired after the unlink), or, when another hard link keeps the disk, a rename.
    fn plan_unlink(
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
                d.log_lifecycle(Change::Rename {
                    name: other.clone(),
                })?;
                return Ok(Some(UnlinkPlan::Move(d, other)));
            }
        }
        d.log_lifecycle(Change::Delete)?;
        Ok(Some(UnlinkPlan::Retire(d)))
    }

    /// Carries out an unlink plan once the name is gone.
    fn finish_unlink(&self, plan: Option<UnlinkPlan>) {
        match plan {
            Some(UnlinkPlan::Retire(d)) => self.retire(&d),
            Some(UnlinkPlan::Move(d, other)) => {
                if let Err(e) = d.rename_files(&self.root_path, &other) {
                    tracing::error!(disk = %other, error = %e, "cannot rename the disk's log and bitmap");
                }
            }
            None => {}
        }
    }

    /// Another name in the root, with a disk pattern, for the same backing file.
    fn other_disk_link(&self, name: &OsStr, key: BackingKey) -> Option<String> {
        sys::read_dir(self.root_fd())
            .ok()?
            .into_iter()
            .filter_map(|e| String::from_utf8(e.name).ok())
            .filter(|n| n.as_str() != name.to_str().unwrap_or("") && self.is_disk_name(n))
            .find(|n| {
                sys::statat(self.root_fd(), OsStr::new(n))
                    .map(|st| st.key() == key)
                    .unwrap_or(false)
            })
    }

    /// Logs what a rename does to disks (before it happens).
    fn plan_rename(&self, r: &RenameOf<'_>) -> io::Result<RenamePlan> {
        let (old_in_root, new_in_root) = (r.old_in_root, r.new_in_root);
        let (key, mode, replaced) = (r.moved.key(), r.moved.st_mode, r.replaced);
        if r.exchange && (old_in_root.is_some() || new_in_root.is_some()) {
            // Swapping two names cannot be described to the shipper with one record each
            // when either side is a disk.
            if self.disk(key).is_some() || replaced.and_then(|k| self.disk(k)).is_some() {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        let mut plan = RenamePlan::default();
        let new_disk_name = new_in_root
            .and_then(|n| n.to_str())
            .filter(|n| self.is_disk_name(n) && mode & libc::S_IFMT == libc::S_IFREG)
            .map(str::to_string);
        let moved = self
            .disk(key)
            .filter(|d| old_in_root.and_then(|n| n.to_str()) == Some(d.name().as_str()));
        if let Some(r) = replaced.filter(|r| *r != key).and_then(|r| self.disk(r)) {
            r.log_lifecycle(Change::Delete)?;
            plan.replaced = Some(r);
        }
        match moved {
            Some(d) => {
                let change = match &new_disk_name {
                    Some(n) => Change::Rename { name: n.clone() },
                    None => Change::Delete,
                };
                d.log_lifecycle(change)?;
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
    fn finish_rename(&self, plan: RenamePlan) {
        if let Some(r) = plan.replaced {
            self.retire(&r);
        }
        if let Some((d, new_name)) = plan.moved {
            match new_name {
                Some(n) => {
                    if let Err(e) = d.rename_files(&self.root_path, &n) {
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

    /// Stops tracking a disk that is gone: seals its last log (which records the removal)
    /// and keeps its unacked logs for the shipper.
    fn retire(&self, d: &Arc<Disk>) {
        self.disks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&d.key);
        let retired = d.retire(&self.root_path);
        if let Some(bitmap) = retired.bitmap {
            let _ = self.remove_own_file(&bitmap);
        }
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(retired.pending);
    }

    pub(crate) fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Records a sealed log as waiting for its ack (with the retired disks' logs if the disk
    /// went away meanwhile).
    pub fn add_pending(&self, d: &Disk, entry: SealedLog) {
        if let Some(entry) = d.add_pending(entry) {
            self.retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry);
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
            out.extend(d.pending());
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
            gone.extend(d.ack(&self.root_path, seq, of_id)?);
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

    /// Files in the root that look like disks but are not tracked, each with why and what to
    /// do: a name that is not valid UTF-8 (the logs and the store name disks in UTF-8), a disk
    /// name that is a symlink to something other than a tracked disk (writes through it reach a
    /// file the tracker does not log), or a disk file that could not be opened for tracking.
    /// Computed from the directory on every `status`, so the warning stays until it is fixed.
    pub fn untracked(&self) -> Vec<String> {
        let Ok(entries) = sys::read_dir(self.root_fd()) else {
            return Vec::new();
        };
        let tracked: Vec<(u64, u64)> = self.disks().iter().map(|d| d.key).collect();
        let mut out = Vec::new();
        for e in entries {
            let raw = e.name;
            let lossy = String::from_utf8_lossy(&raw).into_owned();
            if !self.is_disk_name(&lossy) {
                continue;
            }
            let name = OsStr::from_bytes(&raw);
            let Ok(st) = sys::statat(self.root_fd(), name) else {
                continue;
            };
            let kind = st.st_mode & libc::S_IFMT;
            let why = if std::str::from_utf8(&raw).is_err() {
                (kind == libc::S_IFREG || kind == libc::S_IFLNK).then(|| {
                    format!("{lossy:?} is not tracked: its name is not valid UTF-8; rename it (through the mount) to a UTF-8 name")
                })
            } else if kind == libc::S_IFLNK {
                let target = self.root_path().join(name);
                let reaches = sys::identity(&target);
                (!reaches.is_some_and(|k| tracked.contains(&k))).then(|| {
                    let to = std::fs::read_link(&target).map(|p| p.display().to_string()).unwrap_or_default();
                    format!("{lossy} is not tracked: it is a symlink to {to}, outside the tracked disks of the directory; move the image into the directory instead of linking to it")
                })
            } else if kind == libc::S_IFREG && !tracked.contains(&(st.st_dev, st.st_ino)) {
                Some(format!("{lossy} is not tracked: it could not be opened for tracking (see the tracker's log); fix that and remount"))
            } else {
                None
            };
            out.extend(why);
        }
        out
    }

    pub fn status(&self, socket: &Path) -> MountStatus {
        MountStatus {
            mount: self.mount_dir.display().to_string(),
            socket: socket.display().to_string(),
            pid: std::process::id(),
            disks: self.disks().iter().map(|d| d.status()).collect(),
            untracked: self.untracked(),
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

/// The core's changes, as tracking sees them: disks' data changes go through their
/// [`Disk`]; creations, renames and removals in the root start, follow and retire disks.
impl ChangeSink for Tracker {
    type Tracked = Disk;
    type Unlink = Option<UnlinkPlan>;
    type Rename = RenamePlan;

    fn owns_name(&self, name: &OsStr) -> bool {
        self.is_hrl_name(name)
    }

    fn tracks_name(&self, name: &OsStr) -> bool {
        name.to_str().is_some_and(|n| self.is_disk_name(n))
    }

    fn tracked(&self, key: BackingKey) -> Option<Arc<Disk>> {
        self.disk(key)
    }

    fn created(&self, name: &OsStr, st: &Stat) -> io::Result<()> {
        self.on_created(name, st.key(), st.st_mode)
    }

    fn before_unlink(&self, name: &OsStr, st: &Stat) -> io::Result<Option<UnlinkPlan>> {
        self.plan_unlink(name, st.key(), st.st_nlink)
    }

    fn after_unlink(&self, plan: Option<UnlinkPlan>) {
        self.finish_unlink(plan);
    }

    fn before_rename(&self, rename: &RenameOf<'_>) -> io::Result<RenamePlan> {
        self.plan_rename(rename)
    }

    fn after_rename(&self, plan: RenamePlan) {
        self.finish_rename(plan);
    }

    fn metadata_changed(&self, key: BackingKey) {
        if let Some(d) = self.disk(key) {
            d.after_metadata_change();
        }
    }

    fn close(&self) {
        self.close_all();
    }
}
