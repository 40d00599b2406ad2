//! What each action kind does to the world. Each returns a one-line description of what it
//! did (for the failing seed's action list) or a finding.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::action::{Action, Kind};
use super::faults;
use super::oracle::{Reference, Write};
use super::rng::Rng;
use super::world::{qcow2_guest, store_bind, Finding, SyncHow, World};
use crate::tracker_common::is_mounted;

const MIB: u64 = 1 << 20;

/// Runs one action; syncs run the oracle on what they commit.
pub fn apply(w: &mut World, act: &Action) -> Result<String, Finding> {
    let mut rng = Rng::new(act.c);
    w.mount()?;
    match act.kind {
        Kind::Sync => sync(w, SyncHow::Plain).map(|_| "sync".into()),
        Kind::SyncResync => {
            let how = if act.a % 2 == 0 {
                SyncHow::Resync
            } else {
                SyncHow::ResyncNow
            };
            sync(w, how).map(|_| format!("{how:?}"))
        }
        Kind::KillShipper => {
            let how = match act.a % 5 {
                0 | 1 => SyncHow::KillAfter(act.b % 1500),
                2 => SyncHow::KillAt("after-upload", false),
                3 => SyncHow::KillAt("after-commit", false),
                _ => SyncHow::KillAt("mid-resync", true),
            };
            sync(w, how).map(|_| format!("{how:?}"))
        }
        Kind::Write => write(w, act, &mut rng, 0),
        Kind::WriteDirect => write(w, act, &mut rng, libc::O_DIRECT),
        Kind::WriteMmap => write_mmap(w, act, &mut rng),
        Kind::Grow | Kind::Shrink => resize(w, act),
        Kind::Qcow2Grow => qcow2_grow(w, act, &mut rng),
        Kind::Create => create(w, act, &mut rng),
        Kind::Delete => with_disk(w, act.a, |w, d| {
            std::fs::remove_file(w.path(d)).map_err(|e| format!("delete {d}: {e}"))?;
            Ok(format!("delete {d}"))
        }),
        Kind::Rename => with_disk(w, act.a, |w, d| {
            let to = w.fresh_name("img");
            std::fs::rename(w.path(d), w.path(&to)).map_err(|e| format!("rename {d} {to}: {e}"))?;
            Ok(format!("rename {d} -> {to}"))
        }),
        Kind::RenameOver => rename_over(w, act),
        Kind::Hardlink => with_disk(w, act.a, |w, d| {
            let to = w.fresh_name("img");
            let r = std::fs::hard_link(w.path(d), w.path(&to));
            Ok(format!("link {d} {to}: {r:?}"))
        }),
        Kind::Remount => {
            w.unmount()?;
            w.mount()?;
            Ok("remount".into())
        }
        Kind::SigtermBusy => sigterm_busy(w, act, &mut rng),
        Kind::KillTracker => kill_tracker(w, act, &mut rng),
        Kind::OfflineEdit
        | Kind::OfflineEditMtime
        | Kind::KillTrackerOfflineEdit
        | Kind::LoseBitmap => offline_edit(w, act, &mut rng),
        Kind::LoseActiveLog => lose_active_log(w, act, &mut rng),
        Kind::LoseState => {
            let _ = std::fs::remove_dir_all(&w.state);
            std::fs::create_dir_all(&w.state).map_err(|e| e.to_string())?;
            Ok("state dir deleted".into())
        }
        Kind::StoreOutage => {
            w.set_store_ro(true);
            w.outage_syncs = 1 + (act.a % 3) as u32;
            Ok(format!("store read-only for {} syncs", w.outage_syncs))
        }
        Kind::StoreFlap => store_flap(w, act),
        Kind::LoseObject => lose_object(w, act),
        Kind::SyncWhileWriting | Kind::SyncWhileGrowing => sync_while_writing(w, act, &mut rng),
        Kind::Qcow2DuringSync => qcow2_during_sync(w, act, &mut rng),
        Kind::FullFs => faults::full_fs(w, act, &mut rng),
        Kind::DeadMount => faults::dead_mount(w, act, &mut rng),
        Kind::FiftyPercent => faults::fifty_percent(w, act, &mut rng),
        Kind::BindAlias => faults::bind_alias(w, act, &mut rng),
        Kind::OddNames => faults::odd_names(w, act, &mut rng),
        Kind::JunkHrl => faults::junk_hrl(w, act, &mut rng),
        Kind::FdExhaust => faults::fd_exhaust(w, act, &mut rng),
        Kind::WorkdirLeak => faults::workdir_leak(w, act, &mut rng),
        Kind::Prune => prune(w, act),
        Kind::FailoverRoundTrip => super::roundtrip::failover_round_trip(w, act, &mut rng),
    }
}

/// A sync with writers quiesced: its points must equal the disks now.
pub fn sync_now(w: &mut World, how: SyncHow) -> Result<(), Finding> {
    sync(w, how)
}

fn sync(w: &mut World, how: SyncHow) -> Result<(), Finding> {
    let out = w.run_sync(how);
    let reference = Reference::Exact(w.snapshot()?);
    w.after_sync(&out, &reference)
}

fn with_disk(
    w: &mut World,
    r: u64,
    f: impl FnOnce(&mut World, &str) -> Result<String, Finding>,
) -> Result<String, Finding> {
    match w.pick(".img", r) {
        Some(d) => f(w, &d),
        None => Ok("(no disk)".into()),
    }
}

fn len_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A write of random data (up to 256 KiB, sometimes past the end); `flags` O_DIRECT makes
/// it 4 KiB-aligned.
fn write(w: &mut World, act: &Action, rng: &mut Rng, flags: i32) -> Result<String, Finding> {
    with_disk(w, act.a, |w, d| {
        let p = w.path(d);
        let size = len_of(&p).max(1);
        let (mut off, mut len) = (act.b % (size + 64 * 1024), 1 + rng.below(256 * 1024));
        if flags != 0 {
            off &= !4095;
            len = 4096 * (1 + len / 16384);
        }
        let data = rng.bytes(len as usize);
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(flags)
            .open(&p)
            .map_err(|e| format!("open {d} (flags {flags:#x}): {e}"))?;
        let r = if flags != 0 {
            aligned_write(&f, off, &data)
        } else {
            f.write_all_at(&data, off)
        };
        r.map_err(|e| format!("write {d} @{off}+{len}: {e}"))?;
        Ok(format!("write {d} @{off}+{len} flags {flags:#x}"))
    })
}

fn aligned_write(f: &std::fs::File, off: u64, data: &[u8]) -> std::io::Result<()> {
    let layout =
        std::alloc::Layout::from_size_align(data.len(), 4096).map_err(std::io::Error::other)?;
    // SAFETY: layout has a non-zero size (data is at least 4 KiB); freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err(std::io::Error::other("out of memory"));
    }
    // SAFETY: buf holds data.len() bytes we own.
    let s = unsafe { std::slice::from_raw_parts_mut(buf, data.len()) };
    s.copy_from_slice(data);
    let r = f.write_all_at(s, off);
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    r
}

/// Stores into a shared writable mapping of part of a disk, then msync.
fn write_mmap(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    with_disk(w, act.a, |w, d| {
        use std::os::fd::AsRawFd;
        let p = w.path(d);
        let size = len_of(&p);
        if size < 8192 {
            return Ok(format!("mmap {d}: too small"));
        }
        let off = (act.b % (size - 4096)) & !4095;
        let len = (1 + rng.below(64 * 1024)).min(size - off);
        let data = rng.bytes(len as usize);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map_err(|e| format!("open {d}: {e}"))?;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file, unmapped below.
        let m = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                off as i64,
            )
        };
        if m == libc::MAP_FAILED {
            return Err(format!("mmap {d}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: m maps len bytes, writable.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), m as *mut u8, len as usize);
            let rc = libc::msync(m, len as usize, libc::MS_SYNC);
            libc::munmap(m, len as usize);
            if rc != 0 {
                return Err(format!("msync {d}: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(format!("mmap write {d} @{off}+{len}"))
    })
}

fn resize(w: &mut World, act: &Action) -> Result<String, Finding> {
    with_disk(w, act.a, |w, d| {
        let p = w.path(d);
        let size = len_of(&p);
        let to = if act.kind == Kind::Grow {
            size + 1 + act.b % (4 * MIB)
        } else {
            act.b % size.max(1)
        };
        let f = OpenOptions::new()
            .write(true)
            .open(&p)
            .map_err(|e| e.to_string())?;
        f.set_len(to)
            .map_err(|e| format!("truncate {d} to {to}: {e}"))?;
        Ok(format!("truncate {d} {size} -> {to}"))
    })
}

fn create(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let name = w.fresh_name("img");
    let size = MIB + act.b % (6 * MIB);
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(w.path(&name))
        .map_err(|e| format!("create {name}: {e}"))?;
    f.set_len(size).map_err(|e| e.to_string())?;
    for _ in 0..1 + act.a % 4 {
        let off = rng.below(size);
        f.write_all_at(&rng.bytes(64 * 1024), off)
            .map_err(|e| e.to_string())?;
    }
    Ok(format!("create {name} ({size} B)"))
}

fn rename_over(w: &mut World, act: &Action) -> Result<String, Finding> {
    let d = w.disks(".img");
    if d.len() < 2 {
        return Ok("(fewer than 2 disks)".into());
    }
    let a = &d[(act.a % d.len() as u64) as usize];
    let b = &d[((act.a + 1 + act.b % (d.len() as u64 - 1)) % d.len() as u64) as usize];
    std::fs::rename(w.path(a), w.path(b)).map_err(|e| format!("rename {a} over {b}: {e}"))?;
    Ok(format!("rename {a} over {b}"))
}

/// Writes through the mount from a thread until it fails or `stop` is set (a VM writing).
fn spawn_writer(
    path: std::path::PathBuf,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let Ok(f) = OpenOptions::new().write(true).open(&path) else {
            return 0;
        };
        let size = len_of(&path).max(4096);
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < 10_000 {
            let off = rng.below(size) & !511;
            if f.write_all_at(&rng.bytes(4096), off).is_err() {
                break;
            }
            n += 1;
        }
        n
    })
}

/// kill -9 of the tracker while a writer runs, at a random moment; mount again.
fn kill_tracker(w: &mut World, act: &Action, _rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let t = spawn_writer(w.path(&d), act.c, Arc::clone(&stop));
    std::thread::sleep(Duration::from_millis(act.b % 300));
    w.kill_tracker();
    stop.store(true, Ordering::Relaxed);
    let n = t.join().unwrap_or(0);
    w.mount()?;
    Ok(format!(
        "kill -9 tracker after {} ms with a writer on {d} ({n} writes)",
        act.b % 300
    ))
}

/// SIGTERM while a disk is open (systemd stopping the tracker while a VM runs): the tracker
/// keeps serving, never detaching lazily, so a write at the path of a disk meanwhile and one
/// through the open descriptor are tracked; then the holder closes the disk (the VM shuts
/// down) and the tracker must exit cleanly (status 0) on its own. Mount again; the next
/// sync's point must hold both writes.
fn sigterm_busy(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let other = w.pick(".img", act.b).unwrap_or(d.clone());
    let held = OpenOptions::new()
        .write(true)
        .open(w.path(&d))
        .map_err(|e| e.to_string())?;
    let mut m = w.mount.take().expect("mounted");
    let mut child = m.child.take().expect("tracker child");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    // While the disk is held the tracker must keep serving (never a lazy detach).
    std::thread::sleep(Duration::from_millis(50 + act.c % 700));
    let early = child.try_wait().ok().flatten();
    let still_mounted = is_mounted(&w.dir);
    let off = rng.below(len_of(&w.path(&other)).max(1));
    let at_path = OpenOptions::new()
        .write(true)
        .open(w.path(&other))
        .and_then(|f| f.write_all_at(&rng.bytes(4096), off));
    let via_fd = held.write_all_at(&rng.bytes(4096), 0);
    drop(held);
    let mut status = None;
    for _ in 0..2000 {
        if let Some(st) = child.try_wait().ok().flatten() {
            status = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(m);
    if let Some(st) = early {
        return Err(format!(
            "the tracker exited ({st}) on SIGTERM while {d} was still open"
        ));
    }
    if !still_mounted {
        return Err(format!(
            "the mount was detached on SIGTERM while {d} was still open (the raw directory exposed)"
        ));
    }
    let Some(st) = status else {
        return Err(format!(
            "the tracker did not exit within 20 s of SIGTERM once {d} was closed"
        ));
    };
    if !st.success() {
        return Err(format!("the tracker stopped by SIGTERM exited with {st}"));
    }
    if let Err(e) = via_fd {
        return Err(format!(
            "a write through the open {d} while the tracker stopped: {e}"
        ));
    }
    w.mount()?;
    Ok(format!(
        "SIGTERM tracker with {d} open; write at path {other} @{off}: {at_path:?}; via the fd: ok; clean exit once closed"
    ))
}

/// Offline edits in the raw directory: plain, with size and mtime restored, after kill -9,
/// or with the bitmap moved away (and mtime restored).
fn offline_edit(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    let keep_mtime = matches!(act.kind, Kind::OfflineEditMtime | Kind::LoseBitmap);
    if act.kind == Kind::KillTrackerOfflineEdit {
        w.kill_tracker();
    } else {
        w.unmount()?;
    }
    let p = w.path(&d);
    let mut what = String::new();
    if act.kind == Kind::LoseBitmap {
        let bm = hrl::naming::bitmap_path(&p);
        // Aside on the directory's filesystem (a rename cannot cross to another one).
        let aside = w.dir.parent().unwrap_or(&w.work).join("aside");
        let _ = std::fs::create_dir_all(&aside);
        let r = std::fs::rename(&bm, aside.join(format!("{d}.hrl-bitmap")));
        what = format!("bitmap moved away ({r:?}), ");
    }
    let meta = std::fs::metadata(&p).map_err(|e| e.to_string())?;
    let size = meta.len().max(1);
    let len = if keep_mtime {
        (1 + rng.below(64 * 1024)).min(size)
    } else {
        1 + rng.below(64 * 1024)
    };
    let off = if keep_mtime {
        rng.below(size - len + 1)
    } else {
        rng.below(size + 4096)
    };
    let f = OpenOptions::new()
        .write(true)
        .open(&p)
        .map_err(|e| e.to_string())?;
    f.write_all_at(&rng.bytes(len as usize), off)
        .map_err(|e| e.to_string())?;
    if keep_mtime {
        let t = std::fs::FileTimes::new()
            .set_modified(meta.modified().map_err(|e| e.to_string())?)
            .set_accessed(meta.accessed().map_err(|e| e.to_string())?);
        f.set_times(t).map_err(|e| e.to_string())?;
    }
    drop(f);
    w.mount()?;
    Ok(format!(
        "{:?}: {what}offline write {d} @{off}+{len}",
        act.kind
    ))
}

/// Unmount, delete or truncate a disk's active log, mount, one tracked write.
fn lose_active_log(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let Some(d) = w.pick(".img", act.a) else {
        return Ok("(no disk)".into());
    };
    w.unmount()?;
    let log = hrl::naming::active_log_path(&w.path(&d));
    let how = if act.b % 2 == 0 {
        let r = std::fs::remove_file(&log);
        format!("deleted ({r:?})")
    } else {
        let to = len_of(&log) / 2;
        let r = OpenOptions::new()
            .write(true)
            .open(&log)
            .and_then(|f| f.set_len(to));
        format!("truncated to {to} ({r:?})")
    };
    w.mount()?;
    let p = w.path(&d);
    let off = rng.below(len_of(&p).max(1));
    OpenOptions::new()
        .write(true)
        .open(&p)
        .and_then(|f| f.write_all_at(&rng.bytes(4096), off))
        .map_err(|e| format!("write {d} after remount: {e}"))?;
    Ok(format!("active log of {d} {how}; write @{off}"))
}

/// A sync while another thread flips the store between read-only and writable.
fn store_flap(w: &mut World, act: &Action) -> Result<String, Finding> {
    let stop = Arc::new(AtomicBool::new(false));
    let (store, s2) = (w.store.clone(), Arc::clone(&stop));
    let period = 5 + act.b % 50;
    let t = std::thread::spawn(move || {
        let mut ro = false;
        while !s2.load(Ordering::Relaxed) {
            ro = !ro;
            store_bind(&store, ro);
            std::thread::sleep(Duration::from_millis(period));
        }
        if ro {
            store_bind(&store, false);
        }
    });
    let out = w.run_sync(SyncHow::Plain);
    stop.store(true, Ordering::Relaxed);
    let _ = t.join();
    let reference = Reference::Exact(w.snapshot()?);
    w.after_sync(&out, &reference)?;
    Ok(format!("sync while the store flaps every {period} ms"))
}

/// Deletes one object (chunk, log or base index) from the store.
/// A prune (killed at a stop point at times, then run again): the latest point stays, and
/// every point left restores to what it restored to when it was checked.
fn prune(w: &mut World, act: &Action) -> Result<String, Finding> {
    if w.store_ro {
        return Ok("(store read-only)".into());
    }
    let before = w.point_ids()?;
    let retention = if act.a % 2 == 0 { "0s" } else { "1h" };
    let args = [
        "prune",
        "--target",
        &w.url,
        "--group",
        super::world::GROUP,
        "--retention",
        retention,
        "--grace",
        "0s",
    ];
    let kill = match act.b % 3 {
        0 => Some("mid-merge"),
        1 => Some("mid-gc"),
        _ => None,
    };
    if let Some(at) = kill {
        // Reaches the stop point only when there is something to merge or collect.
        let marker = w.state.join(format!("stopped-at-{at}"));
        crate::common::kill9_if_it_reaches(w.cmd(&args), &marker, at, Duration::from_secs(60));
    }
    let out = w.tool(&args);
    if !out.status.success() && !w.objects_lost {
        return Err(format!(
            "prune failed with no object lost: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let after = w.point_ids()?;
    if !before.is_empty() && after.last() != before.last() {
        return Err(format!(
            "prune removed the latest point: {before:?} -> {after:?}"
        ));
    }
    w.forget_points_not_in(&after);
    w.recheck()?;
    Ok(format!(
        "prune --retention {retention}{}: points {before:?} -> {after:?}",
        kill.map(|k| format!(" (killed {k} first)"))
            .unwrap_or_default()
    ))
}

fn lose_object(w: &mut World, act: &Action) -> Result<String, Finding> {
    if w.store_ro {
        return Ok("(store read-only)".into());
    }
    let mut objs = Vec::new();
    collect_files(&w.store.join(super::world::GROUP), &mut objs);
    objs.retain(|p| !p.to_string_lossy().contains("/points/"));
    objs.sort();
    if objs.is_empty() {
        return Ok("(no objects)".into());
    }
    let o = &objs[(act.a % objs.len() as u64) as usize];
    std::fs::remove_file(o).map_err(|e| e.to_string())?;
    w.objects_lost = true;
    Ok(format!(
        "lost store object {}",
        o.strip_prefix(&w.store).unwrap_or(o).display()
    ))
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// A sync while a writer pwrites the disks (through the mount; `sync_while_growing` also past
/// their end): the point must be the disks before plus a prefix of the writes.
fn sync_while_writing(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let before = guest_snapshot(w)?;
    let disks: Vec<String> = before
        .keys()
        .filter(|n| n.ends_with(".img"))
        .cloned()
        .collect();
    if disks.is_empty() {
        return Ok("(no disk)".into());
    }
    let mut sizes: Vec<u64> = disks.iter().map(|d| before[d].len() as u64).collect();
    let n = 20 + act.a % 60;
    let mut writes = Vec::new();
    for _ in 0..n {
        let i = rng.below(disks.len() as u64) as usize;
        let mut len = 512 + rng.below(128 * 1024);
        let off = if act.kind == Kind::SyncWhileGrowing {
            rng.below(sizes[i] + 256 * 1024)
        } else {
            len = len.min(sizes[i]);
            rng.below(sizes[i] - len + 1)
        };
        sizes[i] = sizes[i].max(off + len);
        writes.push(Write {
            disk: disks[i].clone(),
            off,
            data: rng.bytes(len as usize),
        });
    }
    let (dir, ws, pause) = (w.dir.clone(), writes.clone(), act.b % 8);
    let t = std::thread::spawn(move || -> Result<(), String> {
        for wr in &ws {
            let f = OpenOptions::new()
                .write(true)
                .open(dir.join(&wr.disk))
                .map_err(|e| e.to_string())?;
            f.write_all_at(&wr.data, wr.off)
                .map_err(|e| format!("{}: {e}", wr.disk))?;
            std::thread::sleep(Duration::from_millis(pause));
        }
        Ok(())
    });
    let out = w.run_sync(SyncHow::Plain);
    t.join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("writer during sync: {e}"))?;
    w.after_sync(&out, &Reference::Prefix { before, writes })?;
    Ok(format!("sync while {n} writes (pause {pause} ms) ran"))
}

fn qcow2_disk(w: &mut World, r: u64) -> Result<String, Finding> {
    if let Some(q) = w.pick(".qcow2", r) {
        return Ok(q);
    }
    let q = w.fresh_name("qcow2");
    let o = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(w.path(&q))
        .arg("64M")
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "qemu-img create {q}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(q)
}

/// qemu-io commands that write random-pattern extents (guest offsets), growing the qcow2.
fn qemu_writes(rng: &mut Rng, n: u64, pause_ms: u64) -> (Vec<String>, Vec<(u64, u64, u8)>) {
    let mut cmds = Vec::new();
    let mut ws = Vec::new();
    for _ in 0..n {
        let off = rng.below(64) * MIB + rng.below(16) * 64 * 1024;
        let len = 64 * 1024 * (1 + rng.below(16));
        let len = len.min(64 * MIB - off);
        let pat = 1 + rng.below(254) as u8;
        cmds.push(format!("write -P {pat} {off} {len}"));
        if pause_ms > 0 {
            cmds.push(format!("sleep {pause_ms}"));
        }
        ws.push((off, len, pat));
    }
    (cmds, ws)
}

fn qemu_io(path: &Path, cmds: &[String]) -> Command {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2", "-t", "writethrough"]);
    for x in cmds {
        c.arg("-c").arg(x);
    }
    c.arg(path).stdout(std::process::Stdio::null());
    c
}

fn qcow2_grow(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let q = qcow2_disk(w, act.a)?;
    let (cmds, _) = qemu_writes(rng, 1 + act.b % 6, 0);
    let o = qemu_io(&w.path(&q), &cmds)
        .output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "qemu-io on {q}: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(format!("qemu-io {q}: {}", cmds.join("; ")))
}

/// A sync while qemu-io (writethrough) grows a qcow2: the point's guest view must be the
/// guest before plus a prefix of qemu-io's writes; the other disks as they are.
fn qcow2_during_sync(w: &mut World, act: &Action, rng: &mut Rng) -> Result<String, Finding> {
    let q = qcow2_disk(w, act.a)?;
    let before = guest_snapshot(w)?;
    let (cmds, ws) = qemu_writes(rng, 10 + act.b % 30, 1 + act.b % 5);
    let writes = ws
        .iter()
        .map(|&(off, len, pat)| Write {
            disk: q.clone(),
            off,
            data: vec![pat; len as usize],
        })
        .collect();
    let mut child = qemu_io(&w.path(&q), &cmds)
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = w.run_sync(SyncHow::Plain);
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("qemu-io on {q} during the sync failed: {st}"));
    }
    w.after_sync(&out, &Reference::Prefix { before, writes })?;
    Ok(format!(
        "sync while qemu-io wrote {} extents into {q}",
        ws.len()
    ))
}

/// The disks now, qcow2 disks as their guest's bytes (how a Prefix reference sees them).
fn guest_snapshot(w: &World) -> Result<super::oracle::Disks, Finding> {
    let mut d = w.snapshot()?;
    for (name, bytes) in d.iter_mut() {
        if name.ends_with(".qcow2") {
            *bytes = qcow2_guest(&w.path(name)).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(d)
}
