//! The simulated installation: a protected directory under a real tracker mount, the local
//! directory store, the shipper's state dir, all under one work dir that a failing seed keeps.
//! Runs syncs and checks each point they commit against the oracle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::oracle::{self, Disks, Reference};
use crate::common::{shipper_bin, KillOnDrop};
use crate::tracker_common::{force_unmount, is_mounted, Mounted};

/// A broken promise the oracle found (or an action that could not run): the seed fails.
pub type Finding = String;

pub const GROUP: &str = "vm";

pub struct World {
    pub work: PathBuf,
    pub dir: PathBuf,
    pub run: PathBuf,
    pub state: PathBuf,
    pub store: PathBuf,
    pub url: String,
    pub mount: Option<Mounted>,
    /// The store dir is bind-mounted read-only over itself (an outage).
    pub store_ro: bool,
    /// Syncs left before an outage ends.
    pub outage_syncs: u32,
    next_name: u64,
    /// Highest point id checked so far.
    pub max_point: u64,
    /// Each checked point's restored disks (digests), for the final sweep.
    checked: BTreeMap<u64, BTreeMap<String, (usize, String)>>,
    /// An object was deleted from the store (older points may then fail, new ones must not).
    pub objects_lost: bool,
    /// What ran, one line per action (printed when the seed fails).
    pub log: Vec<String>,
    /// The directory lives on a small loop-mounted ext4 here (for `full_fs`), with room
    /// beside it for a filler file.
    pub fs_mount: Option<PathBuf>,
    /// Key file of the group: odd seeds replicate encrypted (every command gets `--key`
    /// through `HRL_KEY`), so every action also runs against sealed objects.
    pub key: Option<PathBuf>,
}

/// How a sync runs.
#[derive(Clone, Copy, Debug)]
pub enum SyncHow {
    Plain,
    /// `sync --resync`
    Resync,
    /// `resync --now`
    ResyncNow,
    /// kill -9 after this many ms
    KillAfter(u64),
    /// kill -9 at `HRL_SHIPPER_STOP_AT`'s stop point (or when it exits before reaching it)
    KillAt(&'static str, bool),
}

pub struct SyncOutcome {
    pub success: bool,
    pub killed: bool,
    pub stderr: String,
}

impl World {
    /// A fresh world; `small_fs` puts the directory on its own small ext4 (loop-mounted), so
    /// that `full_fs` can fill its filesystem without touching the host's.
    pub fn new(seed: u64, small_fs: bool) -> World {
        let work = PathBuf::from(format!("/tmp/hrl-chaos-{seed}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let fs_mount = small_fs.then(|| small_ext4(&work));
        let dir = fs_mount.as_ref().unwrap_or(&work).join(GROUP);
        let (run, state, store) = (work.join("run"), work.join("state"), work.join("store"));
        for d in [
            &dir,
            &run,
            &state,
            &store,
            &work.join("aside"),
            &work.join("restore"),
        ] {
            std::fs::create_dir_all(d).expect("create the work dir");
        }
        let url = format!("file://{}", store.display());
        let key = (seed % 2 == 1).then(|| work.join("group.key"));
        if let Some(k) = &key {
            let out = Command::new(shipper_bin())
                .args(["key", "create", "--out"])
                .arg(k)
                .output()
                .expect("run hrl-shipper key create");
            assert!(
                out.status.success(),
                "key create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        World {
            work,
            dir,
            run,
            state,
            store,
            url,
            mount: None,
            store_ro: false,
            outage_syncs: 0,
            next_name: 0,
            max_point: 0,
            checked: BTreeMap::new(),
            objects_lost: false,
            log: Vec::new(),
            fs_mount,
            key,
        }
    }

    pub fn note(&mut self, line: String) {
        self.log.push(line);
    }

    pub fn fresh_name(&mut self, ext: &str) -> String {
        self.next_name += 1;
        format!("n{}.{ext}", self.next_name)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Disk names now in the directory with this extension, sorted.
    pub fn disks(&self, ext: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| oracle::is_disk_name(n) && n.ends_with(ext))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn pick(&self, ext: &str, r: u64) -> Option<String> {
        let d = self.disks(ext);
        (!d.is_empty()).then(|| d[(r % d.len() as u64) as usize].clone())
    }

    /// Mounts the tracker in place; a tracker that refuses to mount is a finding.
    pub fn mount(&mut self) -> Result<(), Finding> {
        self.mount_how(None, &[])
    }

    /// Mounts the tracker in place, under an open file limit (`nofile`) or with `extra`
    /// arguments (`--force`).
    pub fn mount_how(&mut self, nofile: Option<u32>, extra: &[&str]) -> Result<(), Finding> {
        if self.mount.is_some() {
            return Ok(());
        }
        let (dir, run) = (self.dir.clone(), self.run.clone());
        let extra: Vec<&str> = extra.to_vec();
        match std::panic::catch_unwind(|| match nofile {
            Some(n) => Mounted::start_limited(&dir, &run, n),
            None => Mounted::start(&dir, &dir, &run, &extra),
        }) {
            Ok(m) => {
                self.mount = Some(m);
                Ok(())
            }
            Err(_) => {
                force_unmount(&self.dir);
                Err("hrl-tracker mount failed (its stderr is above)".into())
            }
        }
    }

    /// Clean unmount through `hrl-tracker unmount`.
    pub fn unmount(&mut self) -> Result<(), Finding> {
        if let Some(m) = self.mount.take() {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.unmount()))
                .map_err(|_| "clean unmount failed".to_string())?;
        }
        Ok(())
    }

    /// kill -9 of the tracker; the dead mount is detached.
    pub fn kill_tracker(&mut self) {
        if let Some(m) = self.mount.take() {
            m.kill9();
        }
    }

    /// Makes the store dir read-only (a bind mount over itself) or writable again.
    pub fn set_store_ro(&mut self, ro: bool) {
        if ro == self.store_ro {
            return;
        }
        self.store_ro = ro;
        store_bind(&self.store, ro);
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(shipper_bin());
        c.args(args)
            .env("HRL_RUN_DIR", &self.run)
            .env("HRL_STATE_DIR", &self.state)
            .env(
                "HRL_LOG",
                std::env::var("CHAOS_HRL_LOG").unwrap_or_else(|_| "warn".into()),
            );
        if let Some(k) = &self.key {
            c.env("HRL_KEY", k);
        }
        c
    }

    pub fn tool(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run hrl-shipper")
    }

    /// Runs one sync as `how` says; the outage counter ticks.
    pub fn run_sync(&mut self, how: SyncHow) -> SyncOutcome {
        let dir = self.dir.display().to_string();
        let base = [
            "--dir",
            dir.as_str(),
            "--target",
            self.url.as_str(),
            "--group",
            GROUP,
        ];
        let mut args: Vec<&str> = match how {
            SyncHow::ResyncNow => vec!["resync", "--now"],
            _ => vec!["sync"],
        };
        args.extend(base);
        if matches!(how, SyncHow::Resync | SyncHow::KillAt(_, true)) {
            args.push("--resync");
        }
        let out = match how {
            SyncHow::KillAfter(ms) => self.killed_sync(&args, None, ms),
            SyncHow::KillAt(at, _) => self.killed_sync(&args, Some(at), 0),
            _ => {
                let o = self.cmd(&args).output().expect("run hrl-shipper");
                SyncOutcome {
                    success: o.status.success(),
                    killed: false,
                    stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
                }
            }
        };
        // Every sync's log, kept with the work dir of a failing seed.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("syncs.log"))
        {
            use std::io::Write;
            let _ = writeln!(
                f,
                "=== {} (success {}, killed {})\n{}",
                args.join(" "),
                out.success,
                out.killed,
                out.stderr
            );
        }
        if self.outage_syncs > 0 {
            self.outage_syncs -= 1;
            if self.outage_syncs == 0 {
                self.set_store_ro(false);
            }
        }
        out
    }

    fn killed_sync(&self, args: &[&str], at: Option<&str>, ms: u64) -> SyncOutcome {
        let err = self.work.join("killed-sync.stderr");
        let mut c = self.cmd(args);
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"));
        let marker = at.map(|a| self.state.join(format!("stopped-at-{a}")));
        if let (Some(a), Some(m)) = (at, &marker) {
            let _ = std::fs::remove_file(m);
            c.env("HRL_SHIPPER_STOP_AT", a);
        }
        let mut child = KillOnDrop(c.spawn().expect("spawn hrl-shipper sync"));
        let deadline =
            Instant::now() + Duration::from_millis(if at.is_some() { 60_000 } else { ms });
        let mut exited = None;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.0.try_wait() {
                exited = Some(st);
                break;
            }
            if marker.as_ref().is_some_and(|m| m.exists()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = exited.is_none();
        let st = match exited {
            Some(st) => st,
            None => {
                let _ = child.0.kill();
                child.0.wait().expect("wait for the killed sync")
            }
        };
        SyncOutcome {
            success: st.success(),
            killed,
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// Starts `hrl-shipper run` for the directory (cycles every hour, retries every second,
    /// resyncs at any time); stopped by dropping it.
    pub fn start_service(&self) -> Result<super::faults::Service, Finding> {
        let dir = self.dir.display().to_string();
        let log =
            std::fs::File::create(self.work.join("service.stderr")).map_err(|e| e.to_string())?;
        let child = self
            .cmd(&[
                "run",
                "--dir",
                &dir,
                "--target",
                &self.url,
                "--group",
                GROUP,
                "--interval",
                "1h",
                "--resync-window",
                "any",
            ])
            .env("HRL_RETRY_UNIT", "1s")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start hrl-shipper run: {e}"))?;
        Ok(super::faults::Service(KillOnDrop(child)))
    }

    /// Points committed by something the oracle cannot check (the service while writes ran)
    /// are left out of the checks.
    pub fn skip_points(&mut self) -> Result<(), Finding> {
        let ids = self.point_ids()?;
        let skipped: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|&i| i > self.max_point)
            .collect();
        if let Some(&m) = skipped.iter().max() {
            self.note(format!(
                "   -> points {skipped:?} committed by the service, not checked"
            ));
            self.max_point = m;
        }
        Ok(())
    }

    /// The ids of the committed points (empty if the store cannot be listed).
    pub fn point_ids(&self) -> Result<Vec<u64>, Finding> {
        let o = self.tool(&["points", "--target", &self.url, "--group", GROUP, "--json"]);
        if !o.status.success() {
            return Err(format!(
                "points --json failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| format!("points --json: {e}"))?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(|p| p["id"].as_u64()).collect())
            .unwrap_or_default())
    }

    /// The oracle after one sync: new points must restore to `reference`, verify must agree;
    /// a sync that failed (not killed) must say why and commit nothing.
    pub fn after_sync(&mut self, out: &SyncOutcome, reference: &Reference) -> Result<(), Finding> {
        let new: Vec<u64> = self
            .point_ids()?
            .into_iter()
            .filter(|&i| i > self.max_point)
            .collect();
        let tail = last_lines(&out.stderr, 3);
        if out.success && new.is_empty() {
            return Err(format!("sync returned 0 but committed no point: {tail}"));
        }
        if !out.success && !out.killed {
            if !out.stderr.contains("error:") {
                return Err(format!("sync failed without a clear error: {tail}"));
            }
            if !new.is_empty() {
                return Err(format!(
                    "sync failed ({tail}) yet committed point(s) {new:?}"
                ));
            }
        }
        let outcome = if out.killed {
            "killed"
        } else if out.success {
            "ok"
        } else {
            "failed"
        };
        self.note(format!(
            "   -> sync {outcome}, new points {new:?} {}",
            if out.success { String::new() } else { tail }
        ));
        for id in new {
            self.check_point(id, reference)?;
            self.max_point = id;
        }
        Ok(())
    }

    /// Restores point `id`, runs verify on it; both must agree, and the restore must pass
    /// the reference.
    fn check_point(&mut self, id: u64, reference: &Reference) -> Result<(), Finding> {
        let (restored, verified) = self.restore_and_verify(id)?;
        let disks = match (restored, verified) {
            (Ok(d), Ok(())) => d,
            (Err(e), Ok(())) => {
                return Err(format!(
                    "point {id}: verify says all good, restore fails: {e}"
                ))
            }
            (Ok(_), Err(e)) => return Err(format!("point {id}: restore works, verify fails: {e}")),
            (Err(e), Err(_)) => {
                return Err(format!(
                    "point {id} was committed but cannot be restored: {e}"
                ))
            }
        };
        let mut got = self.guest_view(&disks, reference)?;
        // A disk the tracker found changed outside it (bind_alias) is carried by the point at
        // its last good state, and the shipper says so; the next cycle resyncs it.
        let mut carried = self.carried_disks();
        for c in self.carried_in_point(id)? {
            if !carried.contains(&c) {
                carried.push(c);
            }
        }
        for (name, was) in &carried {
            let restored = got
                .remove(name)
                .map(|b| blake3::hash(&b).to_hex().to_string());
            // Its last good state: under the name the shipper knew it by (a rename since
            // may have given it another disk's name).
            let last_good: Vec<String> = self
                .checked
                .values()
                .rev()
                .filter_map(|c| c.get(was).or_else(|| c.get(name)).map(|d| d.1.clone()))
                .take(1)
                .collect();
            if restored.is_some_and(|r| !last_good.contains(&r)) {
                return Err(format!("point {id}: {name} (known to the shipper as {was}) was changed outside the tracker, but the point holds neither the disk at the seal nor its last good state"));
            }
        }
        let carried: Vec<String> = carried.into_iter().map(|(n, _)| n).collect();
        let reference = oracle::without(reference, &carried);
        oracle::check(&reference, &got).map_err(|e| format!("point {id}: {e}"))?;
        if !carried.is_empty() {
            self.note(format!("   -> point {id} carries {carried:?} at their last good state (changed outside the tracker)"));
        }
        self.checked.insert(id, oracle::digests(&disks));
        Ok(())
    }

    /// The disks point `id`'s manifest says it carries at an earlier point's state (changed
    /// outside the tracker before its seal): (name now, by disk id; name in the point). The
    /// manifest says so even when the shipper was killed before its status did.
    fn carried_in_point(&self, id: u64) -> Result<Vec<(String, String)>, Finding> {
        let o = self.tool(&["points", "--target", &self.url, "--group", GROUP, "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| format!("points --json: {e}"))?;
        let now = self.tracker_disk_names();
        let mut out = Vec::new();
        for p in v.as_array().into_iter().flatten().filter(|p| p["id"] == id) {
            for d in p["disks"].as_array().into_iter().flatten() {
                if d["carried_from"].is_null() {
                    continue;
                }
                let was = d["name"].as_str().unwrap_or_default().to_string();
                let disk_id = d["disk_id"].as_str().unwrap_or_default();
                out.push((name_now(&now, disk_id, &was), was));
            }
        }
        Ok(out)
    }

    /// (disk id, name) of every disk the tracker tracks now.
    fn tracker_disk_names(&self) -> Vec<(String, String)> {
        self.mount
            .as_ref()
            .and_then(|m| m.request(&hrl::control::Request::Status).status)
            .map(|st| st.disks.into_iter().map(|d| (d.disk_id, d.disk)).collect())
            .unwrap_or_default()
    }

    /// The disks the shipper's status shows waiting for a resync because they changed
    /// outside the tracker: (name now, by the tracker's disk id; name in the status).
    fn carried_disks(&self) -> Vec<(String, String)> {
        let dir = self.dir.display().to_string();
        let o = self.tool(&["status", "--dir", &dir, "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let now = self.tracker_disk_names();
        let mut out = Vec::new();
        for st in v.as_array().into_iter().flatten() {
            for d in st["disks"].as_array().into_iter().flatten() {
                let why = d["resync_reason"].as_str().unwrap_or_default();
                if !why.contains("changed outside the tracker") {
                    continue;
                }
                let was = d["disk"].as_str().unwrap_or_default().to_string();
                let id = d["disk_id"].as_str().unwrap_or_default();
                out.push((name_now(&now, id, &was), was));
            }
        }
        out
    }

    /// Restore `id` into a scratch dir and read it; verify `id`.
    #[allow(clippy::type_complexity)]
    fn restore_and_verify(
        &self,
        id: u64,
    ) -> Result<(Result<Disks, String>, Result<(), String>), Finding> {
        let to = self.work.join("restore").join(id.to_string());
        let _ = std::fs::remove_dir_all(&to);
        let ids = id.to_string();
        let r = self.tool(&[
            "restore",
            "--target",
            &self.url,
            "--group",
            GROUP,
            "--point",
            &ids,
            "--to",
            to.to_str().unwrap_or_default(),
        ]);
        let restored = if r.status.success() {
            oracle::read_disks(&to).map_err(|e| format!("read the restore: {e}"))
        } else {
            Err(last_lines(&String::from_utf8_lossy(&r.stderr), 2))
        };
        let _ = std::fs::remove_dir_all(&to);
        let v = self.tool(&[
            "verify", "--target", &self.url, "--group", GROUP, "--point", &ids,
        ]);
        let verified = if v.status.success() {
            Ok(())
        } else {
            Err(last_lines(&String::from_utf8_lossy(&v.stderr), 2))
        };
        Ok((restored, verified))
    }

    /// For a qcow2 reference the guest's view (qemu-img convert) of the restored qcow2 is
    /// what the oracle compares; otherwise the files themselves.
    fn guest_view(&self, disks: &Disks, reference: &Reference) -> Result<Disks, Finding> {
        let Reference::Prefix { before, .. } = reference else {
            return Ok(disks.clone());
        };
        let mut out = Disks::new();
        for (name, bytes) in disks {
            let want_guest = before.get(name).is_some_and(|_| name.ends_with(".qcow2"));
            if !want_guest {
                out.insert(name.clone(), bytes.clone());
                continue;
            }
            let f = self.work.join("restore").join(format!("guest-{name}"));
            std::fs::write(&f, bytes).map_err(|e| e.to_string())?;
            let raw = qcow2_guest(&f)
                .map_err(|e| format!("restored {name} is not a readable qcow2: {e}"))?;
            let _ = std::fs::remove_file(&f);
            out.insert(name.clone(), raw);
        }
        Ok(out)
    }

    /// After the last action: store back, tracker mounted, one more sync that must commit
    /// (twice at most: a first one may still report what the faults did); then every point
    /// checked again, verify agreeing with restore.
    pub fn finish(&mut self) -> Result<(), Finding> {
        self.set_store_ro(false);
        self.outage_syncs = 0;
        self.mount()?;
        let mut last = String::new();
        for attempt in 0..2 {
            let out = self.run_sync(SyncHow::Plain);
            let reference = Reference::Exact(self.snapshot()?);
            self.after_sync(&out, &reference)?;
            if out.success {
                return self.sweep();
            }
            last = format!("attempt {attempt}: {}", last_lines(&out.stderr, 2));
        }
        Err(format!(
            "replication does not recover once the faults stop: {last}"
        ))
    }

    /// The digests point `id` restored to when the oracle checked it (None: not checked).
    pub fn checked_digests(&self, id: u64) -> Option<BTreeMap<String, (usize, String)>> {
        self.checked.get(&id).cloned()
    }

    /// The disk names of point `id`, from `points --json`.
    pub fn point_disk_names(&self, id: u64) -> Result<Vec<String>, Finding> {
        let o = self.tool(&["points", "--target", &self.url, "--group", GROUP, "--json"]);
        let v: serde_json::Value =
            serde_json::from_slice(&o.stdout).map_err(|e| format!("points --json: {e}"))?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["id"] == id)
            .flat_map(|p| p["disks"].as_array().cloned().unwrap_or_default())
            .filter_map(|d| d["name"].as_str().map(str::to_string))
            .collect())
    }

    /// Stops checking the points a prune removed.
    pub fn forget_points_not_in(&mut self, ids: &[u64]) {
        self.checked.retain(|id, _| ids.contains(id));
    }

    /// Every checked point restores as when it was checked (after a prune).
    pub fn recheck(&mut self) -> Result<(), Finding> {
        self.sweep()
    }

    fn sweep(&mut self) -> Result<(), Finding> {
        let checked = std::mem::take(&mut self.checked);
        for (id, want) in &checked {
            let (restored, verified) = self.restore_and_verify(*id)?;
            match (restored, verified) {
                (Ok(d), Ok(())) if &oracle::digests(&d) == want => self.check_mount(*id, want)?,
                (Ok(_), Ok(())) => return Err(format!("final sweep: point {id} now restores to other bytes than when it was committed")),
                (Err(e), Ok(())) => return Err(format!("final sweep: point {id}: verify all good, restore fails: {e}")),
                (Ok(_), Err(e)) => return Err(format!("final sweep: point {id}: restore works, verify fails: {e}")),
                (Err(e), Err(_)) if !self.objects_lost => return Err(format!("final sweep: point {id} no longer restores and no object was lost: {e}")),
                (Err(_), Err(_)) => {}
            }
        }
        self.checked = checked;
        Ok(())
    }

    /// A point that restores is served by `hrl-shipper mount` (read on demand from the
    /// store) with the same bytes, and unmounts cleanly (issue 11).
    fn check_mount(
        &self,
        id: u64,
        want: &BTreeMap<String, (usize, String)>,
    ) -> Result<(), Finding> {
        let m = self.work.join("point-mount");
        std::fs::create_dir_all(&m).map_err(|e| e.to_string())?;
        let (ids, ms) = (id.to_string(), m.display().to_string());
        let o = self.tool(&[
            "mount",
            "--target",
            &self.url,
            "--group",
            GROUP,
            "--point",
            &ids,
            "--read-only",
            &ms,
        ]);
        if !o.status.success() {
            return Err(format!(
                "point {id} restores but does not mount: {}",
                last_lines(&String::from_utf8_lossy(&o.stderr), 2)
            ));
        }
        let read = oracle::read_disks(&m);
        let u = self.tool(&["unmount", &ms]);
        if is_mounted(&m) {
            force_unmount(&m);
        }
        let read =
            read.map_err(|e| format!("point {id}: read through `hrl-shipper mount`: {e}"))?;
        if &oracle::digests(&read) != want {
            return Err(format!(
                "point {id}: `hrl-shipper mount` serves other bytes than its restore"
            ));
        }
        if !u.status.success() {
            return Err(format!(
                "point {id}: unmount failed: {}",
                last_lines(&String::from_utf8_lossy(&u.stderr), 2)
            ));
        }
        Ok(())
    }

    /// The disks now, read through the mount.
    pub fn snapshot(&self) -> Result<Disks, Finding> {
        oracle::read_disks(&self.dir).map_err(|e| format!("read the disks through the mount: {e}"))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.set_store_ro(false);
        if let Some(m) = self.mount.take() {
            drop(m);
        }
        if is_mounted(&self.dir) {
            force_unmount(&self.dir);
        }
        if let Some(fs) = self.fs_mount.take() {
            unmount_small_ext4(&fs);
        }
    }
}

/// A 512 MiB ext4 (sparse file, loop-mounted with autoclear) at `work/fs`; panics if it
/// cannot be made (the seed then fails with what went wrong).
fn small_ext4(work: &Path) -> PathBuf {
    let (img, at) = (work.join("fs.ext4"), work.join("fs"));
    std::fs::create_dir_all(&at).expect("create the small filesystem's mount point");
    let f = std::fs::File::create(&img).expect("create the small filesystem's image");
    f.set_len(512 << 20)
        .expect("size the small filesystem's image");
    let ok = |c: &mut Command| c.output().is_ok_and(|o| o.status.success());
    assert!(
        ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img)),
        "mkfs.ext4 {} failed",
        img.display()
    );
    assert!(
        ok(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&at)),
        "mount -o loop {} failed",
        img.display()
    );
    at
}

/// Unmounts the small ext4 (its loop device goes with it: autoclear).
fn unmount_small_ext4(at: &Path) {
    for _ in 0..50 {
        if !is_mounted(at) {
            return;
        }
        if Command::new("umount")
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(at).status();
}

/// Bind-mounts `store` read-only over itself, or removes that bind mount.
pub fn store_bind(store: &Path, ro: bool) {
    let run = |args: &[&str]| {
        let _ = Command::new("mount")
            .args(args)
            .arg(store)
            .arg(store)
            .stderr(Stdio::null())
            .status();
    };
    if ro {
        run(&["--bind"]);
        let _ = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(store)
            .stderr(Stdio::null())
            .status();
    } else {
        while is_mounted(store) {
            if !Command::new("umount")
                .arg(store)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(store).status();
            }
        }
    }
}

/// The guest's bytes of a qcow2 image.
pub fn qcow2_guest(image: &Path) -> Result<Vec<u8>, String> {
    let raw = image.with_extension("raw-guest");
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(last_lines(&String::from_utf8_lossy(&o.stderr), 2));
    }
    let b = std::fs::read(&raw).map_err(|e| e.to_string());
    let _ = std::fs::remove_file(&raw);
    b
}

pub fn last_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(n)..].join(" | ")
}

/// The name the tracker knows disk `id` by now (`was` when it knows none: gone or no mount).
fn name_now(now: &[(String, String)], id: &str, was: &str) -> String {
    now.iter()
        .find(|(i, _)| !id.is_empty() && i == id)
        .map(|(_, n)| n.clone())
        .unwrap_or_else(|| was.to_string())
}
