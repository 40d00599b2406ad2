//! The shipper's state per protected directory, kept as a JSON file under the state
//! directory (`$HRL_STATE_DIR`, default `/var/lib/hrl/shipper`) so that `status` can show it
//! while the service runs, and so that it survives restarts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::replicate::progress::{ResyncKind, ResyncProgress};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/hrl/shipper";

/// Replication state of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    InitialReplication,
    Replicating,
    ResyncRequired,
    Resyncing,
    Paused,
}

impl DiskState {
    pub fn label(self) -> &'static str {
        match self {
            DiskState::InitialReplication => "initial replication",
            DiskState::Replicating => "replicating",
            DiskState::ResyncRequired => "resync required",
            DiskState::Resyncing => "resyncing",
            DiskState::Paused => "paused",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Health {
    Normal,
    Warning,
    Critical,
}

/// What `status` shows about one disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk: String,
    pub disk_id: String,
    pub state: DiskState,
    pub health: Health,
    pub disk_size: u64,
    /// Sealed and active log bytes not yet in a committed point.
    pub unshipped_bytes: u64,
    /// Initial copy / resync progress: bytes done and total.
    pub progress: Option<(u64, u64)>,
    pub last_error: Option<String>,
    /// Byte ranges a resync must cover besides the tracker's marks (extents of logs the
    /// 50% rule dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resync_extents: Vec<(u64, u64)>,
    /// The next resync compares every block (chain break, operator request).
    #[serde(default)]
    pub resync_full: bool,
    /// Why the disk needs (or runs) a resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_reason: Option<String>,
    /// Progress of the running (or interrupted) resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncProgress>,
    /// What the last finished resync did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<ResyncProgress>,
}

/// What `status` shows about one directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirStatus {
    pub dir: String,
    pub group: String,
    pub target: String,
    pub health: Health,
    pub last_point_id: Option<u64>,
    /// Seal time of the last committed point, ns since the Unix epoch.
    pub last_point_ns: Option<u64>,
    pub last_error: Option<String>,
    /// Failed attempts in a row.
    pub attempt: u32,
    /// When the next attempt runs, ns since the Unix epoch.
    pub next_retry_ns: Option<u64>,
    pub updated_ns: u64,
    /// An operator paused replication (`hrl-shipper pause`); disks show as paused.
    #[serde(default)]
    pub paused: bool,
    /// The service's replication interval (absent for one-off `sync`).
    #[serde(default)]
    pub interval_ns: Option<u64>,
    /// Files of the directory that look like disks but the tracker cannot track (a name
    /// that is not UTF-8, a symlink to outside), as the tracker reported them at the last
    /// cycle: a Warning until fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untracked: Vec<String>,
    /// The point whose manifest this shipper is writing, and its seal id (set just before
    /// the commit): a state saved then is still in step with a store whose latest point is
    /// that one (the seal id tells it from another shipper's point with the same id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committing_point: Option<(u64, u64)>,
    /// Free space on the image directory's filesystem is below the threshold (Warning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub space_warning: Option<String>,
    /// The owner epoch this directory's shipper commits under (set by each cycle that
    /// found this host the group's owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Who owns the group when this host does not (a fenced shipper): one line naming
    /// the owner since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
    /// The last prune of the group by this service or `sync` (retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionStatus>,
    /// Seal time of the last app-consistent point (when the next one is due).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_app_point_ns: Option<u64>,
    /// The last app-consistency hook failure (a Warning until the hooks succeed again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_warning: Option<String>,
    pub disks: Vec<DiskStatus>,
}

/// What the last prune found: `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetentionStatus {
    /// When it ran, ns since the Unix epoch.
    pub pruned_ns: u64,
    pub retained_points: u64,
    /// Chunks, indexes and logs in the store after it.
    pub store_bytes: u64,
    /// Unneeded, waiting for the grace period.
    pub awaiting_collection_bytes: u64,
    pub last_error: Option<String>,
}

impl DirStatus {
    pub fn new(dir: &Path, group: &str, target: &str) -> DirStatus {
        DirStatus {
            dir: dir.display().to_string(),
            group: group.to_string(),
            target: target.to_string(),
            health: Health::Normal,
            last_point_id: None,
            last_point_ns: None,
            last_error: None,
            attempt: 0,
            next_retry_ns: None,
            updated_ns: hrl::now_ns(),
            paused: false,
            interval_ns: None,
            untracked: Vec::new(),
            committing_point: None,
            space_warning: None,
            epoch: None,
            fenced_by: None,
            retention: None,
            last_app_point_ns: None,
            hook_warning: None,
            disks: Vec::new(),
        }
    }

    pub fn disk_mut(&mut self, name: &str, disk_id: &str) -> &mut DiskStatus {
        // By id first: a name may have passed from one disk to another (rename over).
        let by_id = (!disk_id.is_empty())
            .then(|| self.disks.iter().position(|d| d.disk_id == disk_id))
            .flatten();
        let by_name = || {
            self.disks
                .iter()
                .position(|d| d.disk == name && (d.disk_id.is_empty() || disk_id.is_empty()))
        };
        if let Some(i) = by_id.or_else(by_name) {
            let d = &mut self.disks[i];
            d.disk = name.to_string();
            if !disk_id.is_empty() {
                d.disk_id = disk_id.to_string();
            }
            return d;
        }
        self.disks.push(DiskStatus {
            disk: name.to_string(),
            disk_id: disk_id.to_string(),
            state: DiskState::InitialReplication,
            health: Health::Normal,
            disk_size: 0,
            unshipped_bytes: 0,
            progress: None,
            last_error: None,
            resync_extents: Vec::new(),
            resync_full: false,
            resync_reason: None,
            resync: None,
            last_resync: None,
        });
        self.disks.last_mut().expect("just pushed")
    }
}

/// A directory's status shared between the cycle and the budget checks: every change goes
/// through [`StatusHandle::edit`], which saves it (no lock held across an await, none to
/// release by hand).
#[derive(Clone, Copy)]
pub struct StatusHandle<'a> {
    cell: &'a std::sync::Mutex<DirStatus>,
    state_dir: &'a Path,
}

impl<'a> StatusHandle<'a> {
    pub fn new(cell: &'a std::sync::Mutex<DirStatus>, state_dir: &'a Path) -> StatusHandle<'a> {
        StatusHandle { cell, state_dir }
    }

    fn lock(&self) -> std::sync::MutexGuard<'a, DirStatus> {
        // A panic while it was held leaves a status worth showing still.
        self.cell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the status.
    pub fn read<R>(&self, f: impl FnOnce(&DirStatus) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the status and saves it (a failed save is logged: the file is a cache).
    pub fn edit<R>(&self, f: impl FnOnce(&mut DirStatus) -> R) -> R {
        let mut s = self.lock();
        let r = f(&mut s);
        if let Err(e) = save(self.state_dir, &s) {
            tracing::warn!("cannot save status: {e:#}");
        }
        r
    }
}

impl DirStatus {
    /// A cycle committed its point: nothing is failing any more.
    pub fn cycle_succeeded(&mut self) {
        self.health = match self.hook_warning {
            Some(_) => Health::Warning,
            None => Health::Normal,
        };
        self.last_error = None;
        self.attempt = 0;
        self.next_retry_ns = None;
    }

    /// A cycle failed with `err`: Critical when waiting cannot fix it, else Warning at
    /// least.
    pub fn cycle_failed(&mut self, fatal: bool, err: &anyhow::Error) {
        self.health = match fatal {
            true => Health::Critical,
            false => self.health.max(Health::Warning),
        };
        self.last_error = Some(format!("{err:#}"));
        // A resync runs only inside a cycle: once that failed, the disk waits for the next
        // one (its job is saved and resumes), so it shows "resync required", not "resyncing".
        for d in self
            .disks
            .iter_mut()
            .filter(|d| d.state == DiskState::Resyncing)
        {
            d.state = DiskState::ResyncRequired;
        }
    }
}

/// Log bytes of a disk not yet in a committed point: sealed logs waiting, plus what the
/// active log holds beyond its header.
pub fn unshipped_bytes(d: &hrl::control::DiskStatus) -> u64 {
    d.active_log_bytes.saturating_sub(hrl::log::HEADER_LEN) + d.pending_sealed_bytes
}

/// State file of a protected directory: `dir-<16 hex of blake3(canonical dir)>.json`.
pub fn state_file(state_dir: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let hex = hrl::to_hex(blake3::hash(canonical.as_os_str().as_bytes()).as_bytes());
    state_dir.join(format!("dir-{}.json", &hex[..16]))
}

/// RPO lag beyond this many intervals turns a Normal directory into Warning.
const RPO_WARN_INTERVALS: u64 = 3;

impl DirStatus {
    /// Health as of `now`: a directory whose last point is older than three intervals (while
    /// not paused) is in Warning even if no cycle failed — something is holding it up; so is
    /// one with files the tracker cannot track.
    pub fn apply_rpo(&mut self, now: u64) {
        if !self.untracked.is_empty() {
            self.health = self.health.max(Health::Warning);
        }
        let (Some(last), Some(interval)) = (self.last_point_ns, self.interval_ns) else {
            return;
        };
        let lag = now.saturating_sub(last);
        if !self.paused && self.health == Health::Normal && lag > RPO_WARN_INTERVALS * interval {
            self.health = Health::Warning;
            if self.last_error.is_none() {
                self.last_error = Some(format!(
                    "RPO lag {}s exceeds {RPO_WARN_INTERVALS} intervals of {}s",
                    lag / 1_000_000_000,
                    interval / 1_000_000_000
                ));
            }
        }
    }
}

/// Marker file whose presence pauses replication of a directory (kept apart from the state
/// file, which the service rewrites).
pub fn pause_marker(state_dir: &Path, dir: &Path) -> PathBuf {
    state_file(state_dir, dir).with_extension("paused")
}

pub fn is_paused(state_dir: &Path, dir: &Path) -> bool {
    pause_marker(state_dir, dir).exists()
}

/// Writes the state atomically and durably (temporary file, fsync, rename, fsync of the
/// directory): the ranges of logs the 50% rule released live here, and a power cut must
/// leave either the old file or the new one, whole.
pub fn save(state_dir: &Path, status: &DirStatus) -> Result<()> {
    use std::io::Write;
    crate::private::create_dir(state_dir)
        .with_context(|| format!("create state directory {}", state_dir.display()))?;
    let path = state_file(state_dir, Path::new(&status.dir));
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(status).context("encode status")?;
    bytes.push(b'\n');
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_data())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync state directory {}", state_dir.display()))?;
    Ok(())
}

/// The state file of `dir` cannot be read back. It is only a cache of what the tracker and
/// the store hold, but replacing it in silence would hide that: the operator is told which
/// file and the safe way on (`sync --reconcile`).
#[derive(Debug, thiserror::Error)]
#[error("shipper state file {} is damaged ({reason}). It is a cache of what the tracker and the store hold: run `hrl-shipper sync --dir {} --reconcile` (with your --target) to set it aside and rebuild it; every disk's replica is then checked against the tracker's marks, and compared block by block where they cannot prove it", path.display(), dir.display())]
pub struct DamagedState {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub reason: String,
}

pub fn load(state_dir: &Path, dir: &Path) -> Result<Option<DirStatus>> {
    let path = state_file(state_dir, dir);
    match std::fs::read(&path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(s) => Ok(Some(s)),
            Err(e) => Err(DamagedState {
                path,
                dir: dir.to_path_buf(),
                reason: e.to_string(),
            }
            .into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Moves a damaged state file aside (`.json.damaged-<ns>`, kept for a post-mortem); returns
/// where it went, or `None` when there was none or it reads fine.
pub fn set_aside_if_damaged(state_dir: &Path, dir: &Path) -> Result<Option<PathBuf>> {
    match load(state_dir, dir) {
        Ok(_) => Ok(None),
        Err(e) if e.downcast_ref::<DamagedState>().is_some() => {
            let path = state_file(state_dir, dir);
            let aside = path.with_extension(format!("json.damaged-{}", hrl::now_ns()));
            std::fs::rename(&path, &aside)
                .with_context(|| format!("move {} aside to {}", path.display(), aside.display()))?;
            Ok(Some(aside))
        }
        Err(e) => Err(e),
    }
}

/// Every state file in the state directory.
pub fn load_all(state_dir: &Path) -> Result<Vec<DirStatus>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(e).with_context(|| format!("read state directory {}", state_dir.display()))
        }
    };
    for entry in entries {
        let entry =
            entry.with_context(|| format!("read state directory {}", state_dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("dir-") && name.ends_with(".json") {
            let b = std::fs::read(entry.path())
                .with_context(|| format!("read {}", entry.path().display()))?;
            match serde_json::from_slice(&b) {
                Ok(s) => out.push(s),
                Err(e) => {
                    return Err(DamagedState {
                        path: entry.path(),
                        dir: PathBuf::from("DIR"),
                        reason: e.to_string(),
                    }
                    .into())
                }
            }
        }
    }
    out.sort_by(|a: &DirStatus, b| a.dir.cmp(&b.dir));
    Ok(out)
}

/// One line for `status` about a resync.
pub fn render_resync(p: &ResyncProgress) -> String {
    {
        let kind = match p.kind {
            Some(ResyncKind::Targeted) => "targeted",
            Some(ResyncKind::Full) => "full compare",
            None => "",
        };
        let eta = p
            .eta_s
            .map_or_else(|| "?".to_string(), |s| format!("{}m{:02}s", s / 60, s % 60));
        format!(
            "resync ({kind}): {}/{} blocks compared, {} differ, {} read, {} sent (+{} of blocks rebuilt from logs), {eta} left{}",
            p.blocks_compared,
            p.blocks_total,
            p.blocks_differing,
            human_bytes(p.bytes_read),
            human_bytes(p.bytes_sent),
            human_bytes(p.rebuilt_bytes_sent),
            if p.resumed > 0 {
                format!(", resumed {}x", p.resumed)
            } else {
                String::new()
            }
        )
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(ns: u64, now: u64) -> String {
    let s = now.saturating_sub(ns) / 1_000_000_000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Renders the status for people.
pub fn render(all: &[DirStatus]) -> String {
    use hrl::display::escaped as esc;
    use std::fmt::Write;
    let now = hrl::now_ns();
    let mut out = String::new();
    for d in all {
        let _ = writeln!(
            out,
            "{}  group {}  target {}",
            esc(&d.dir),
            esc(&d.group),
            esc(&d.target)
        );
        let last = match (d.last_point_id, d.last_point_ns) {
            (Some(id), Some(ns)) => format!(
                "point {id} sealed {}, RPO lag {}",
                crate::recover::points::fmt_time(ns),
                ago(ns, now)
            ),
            _ => "no recovery point yet".to_string(),
        };
        let _ = writeln!(out, "  health {:?}; last {last}", d.health);
        match (&d.fenced_by, d.epoch) {
            (Some(o), _) => {
                let _ = writeln!(out, "  role: fenced (the group is owned by {})", esc(o));
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "  role: primary (owner, epoch {e})");
            }
            (None, None) => {}
        }
        if let Some(e) = &d.last_error {
            let _ = writeln!(out, "  last error: {}", esc(e));
        }
        for u in &d.untracked {
            let _ = writeln!(out, "  warning: {u}");
        }
        if let Some(w) = &d.space_warning {
            let _ = writeln!(out, "  warning: {w}");
        }
        if let Some(w) = &d.hook_warning {
            let _ = writeln!(out, "  warning: {}", esc(w));
        }
        if let Some(r) = &d.retention {
            let _ = writeln!(
                out,
                "  retention: {} points retained, store {}, {} awaiting collection (pruned {} ago){}",
                r.retained_points,
                human_bytes(r.store_bytes),
                human_bytes(r.awaiting_collection_bytes),
                ago(r.pruned_ns, now),
                r.last_error
                    .as_ref()
                    .map(|e| format!("; last prune failed: {}", esc(e)))
                    .unwrap_or_default()
            );
        }
        if let Some(t) = d.next_retry_ns {
            let _ = writeln!(
                out,
                "  next retry in {}s (attempt {})",
                t.saturating_sub(now) / 1_000_000_000,
                d.attempt + 1
            );
        }
        if d.paused {
            let _ = writeln!(
                out,
                "  replication paused by an operator (hrl-shipper resume --dir {})",
                esc(&d.dir)
            );
        }
        for k in &d.disks {
            render_disk(&mut out, k, d.paused);
        }
    }
    if all.is_empty() {
        out.push_str("no protected directories (no state files yet)\n");
    }
    out
}

/// One disk's lines of [`render`].
fn render_disk(out: &mut String, k: &DiskStatus, paused: bool) {
    use hrl::display::escaped as esc;
    use std::fmt::Write;
    let share = if k.disk_size > 0 {
        100.0 * k.unshipped_bytes as f64 / k.disk_size as f64
    } else {
        0.0
    };
    let _ = write!(
        out,
        "  {:<24} {:<20} {:<8?} unshipped {} ({share:.2}% of {})",
        esc(&k.disk),
        if paused {
            DiskState::Paused.label()
        } else {
            k.state.label()
        },
        k.health,
        human_bytes(k.unshipped_bytes),
        human_bytes(k.disk_size)
    );
    if let Some((done, total)) = k.progress {
        let _ = write!(out, "  copy {}/{}", human_bytes(done), human_bytes(total));
    }
    out.push('\n');
    if let Some(r) = &k.resync {
        let _ = writeln!(out, "    {}", render_resync(r));
    }
    if let Some(why) = k.resync_reason.as_ref().filter(|_| k.resync.is_none()) {
        let _ = writeln!(out, "    resync needed: {}", esc(why));
    }
    if let Some(e) = &k.last_error {
        let _ = writeln!(out, "    error: {}", esc(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state file written by the release before issue 8 (by `tests/fixtures/store-v1`'s
    /// make.sh: it still has the offline-edit fields `tracker_pid` and `image_stat`) loads
    /// and is rewritten without them.
    #[test]
    fn a_state_file_of_the_previous_release_loads() {
        let old = include_str!("../../tests/fixtures/state-v1/status.json");
        let s: DirStatus = serde_json::from_str(old).unwrap();
        assert_eq!((s.last_point_id, s.disks.len()), (Some(4), 2));
        assert_eq!(s.disks[0].state, DiskState::Replicating);
        assert_eq!(
            s.disks[0].last_resync.as_ref().and_then(|r| r.kind),
            Some(ResyncKind::Full)
        );
        let dir = tempfile::tempdir().unwrap();
        let mut moved = s.clone();
        moved.dir = dir.path().join("vm").display().to_string();
        save(dir.path(), &moved).unwrap();
        let back = load(dir.path(), &dir.path().join("vm")).unwrap().unwrap();
        assert_eq!(back, moved);
        let text = std::fs::read_to_string(state_file(dir.path(), &dir.path().join("vm"))).unwrap();
        assert!(
            !text.contains("image_stat") && !text.contains("tracker_pid"),
            "{text}"
        );
    }

    #[test]
    fn a_failed_cycle_leaves_its_resync_required_not_resyncing() {
        let mut s = DirStatus::new(Path::new("/v/a"), "a", "/s");
        s.disk_mut("a.img", "").state = DiskState::Resyncing;
        s.disk_mut("b.img", "").state = DiskState::Replicating;
        s.cycle_failed(false, &anyhow::anyhow!("store refused a write"));
        assert_eq!(s.disks[0].state, DiskState::ResyncRequired);
        assert_eq!(s.disks[1].state, DiskState::Replicating);
        assert_eq!(s.health, Health::Warning);
    }

    #[test]
    fn rpo_lag_beyond_three_intervals_is_a_warning() {
        let mut s = DirStatus::new(Path::new("/v/a"), "a", "/s");
        s.interval_ns = Some(10_000_000_000);
        s.last_point_ns = Some(100_000_000_000);
        let mut fresh = s.clone();
        fresh.apply_rpo(125_000_000_000);
        assert_eq!(fresh.health, Health::Normal);
        s.apply_rpo(140_000_000_000);
        assert_eq!(s.health, Health::Warning);
        assert!(s
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("RPO lag 40s"));
        let mut paused = DirStatus::new(Path::new("/v/a"), "a", "/s");
        paused.interval_ns = Some(1);
        paused.last_point_ns = Some(0);
        paused.paused = true;
        paused.apply_rpo(1_000_000_000);
        assert_eq!(paused.health, Health::Normal);
    }

    #[test]
    fn progress_line_names_counts_and_time_left() {
        let p = ResyncProgress {
            kind: Some(ResyncKind::Targeted),
            blocks_total: 100,
            blocks_compared: 40,
            blocks_differing: 3,
            bytes_read: 40 << 18,
            bytes_sent: 3 << 18,
            rebuilt_bytes_sent: 0,
            eta_s: Some(75),
            resumed: 1,
        };
        let line = render_resync(&p);
        assert!(line.contains("targeted"), "{line}");
        assert!(line.contains("40/100 blocks compared"), "{line}");
        assert!(line.contains("3 differ"), "{line}");
        assert!(line.contains("1m15s left"), "{line}");
        assert!(line.contains("resumed 1x"), "{line}");
    }

    #[test]
    fn render_names_state_health_and_errors() {
        let mut s = DirStatus::new(Path::new("/v/a"), "a", "/s");
        s.health = Health::Warning;
        s.last_error = Some("store unreachable".into());
        let d = s.disk_mut("d.img", "00");
        d.state = DiskState::ResyncRequired;
        d.disk_size = 1 << 30;
        d.unshipped_bytes = 1 << 29;
        let text = render(&[s]);
        assert!(text.contains("resync required"), "{text}");
        assert!(text.contains("50.00% of 1.0 GiB"), "{text}");
        assert!(text.contains("store unreachable"), "{text}");
    }
}
