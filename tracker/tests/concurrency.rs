//! The write path under the I/O that VMs issue: many writers on one disk at once (buffered and
//! O_DIRECT, overlapping ranges, fsyncs) with seals in between, checked against a model and
//! against a replay of every sealed log; and fsync durability under kill -9.

#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use common::*;

const MIB: usize = 1 << 20;
const BLOCK: usize = 4096;

/// A 4 KiB-aligned buffer, as O_DIRECT needs.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn from(data: &[u8]) -> Aligned {
        let layout = Layout::from_size_align(data.len().max(BLOCK), BLOCK).unwrap();
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // SAFETY: ptr holds layout.size() >= data.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
        Aligned { ptr, layout }
    }
    fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr holds layout.size() initialized bytes until drop.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// One writer's step: a write somewhere in the shared (overlapping) region, and a write of
/// known content into the writer's own region, which the model tracks.
fn step(
    shared: &File,
    direct: &File,
    own: &mut [u8],
    own_off: usize,
    shared_len: usize,
    seed: u64,
) {
    let r = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    // Shared region: buffered (any length, unaligned) or O_DIRECT (aligned blocks).
    if r % 3 == 0 {
        let blocks = 1 + (r >> 8) as usize % 4;
        let off = ((r >> 16) as usize % (shared_len / BLOCK - blocks)) * BLOCK;
        let buf = Aligned::from(&pattern(seed, blocks * BLOCK));
        direct.write_all_at(buf.as_slice(), off as u64).unwrap();
    } else {
        let len = 1 + (r >> 8) as usize % 20_000;
        let off = (r >> 24) as usize % (shared_len - len);
        shared
            .write_all_at(&pattern(seed, len), off as u64)
            .unwrap();
    }
    // Own region: the model.
    let len = 1 + (r >> 32) as usize % 8192;
    let at = (r >> 40) as usize % (own.len() - len);
    let data = pattern(seed ^ 0xabc, len);
    shared.write_all_at(&data, (own_off + at) as u64).unwrap();
    own[at..at + len].copy_from_slice(&data);
    if r % 7 == 0 {
        shared.sync_data().unwrap();
    } else if r % 11 == 0 {
        direct.sync_all().unwrap();
    }
}

#[test]
fn parallel_writers_with_overlaps_and_seals_replay_to_the_image() {
    const WRITERS: usize = 8;
    const PHASES: usize = 4;
    const STEPS: usize = 60;
    const SHARED: usize = 2 * MIB;
    const OWN: usize = MIB;
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let size = SHARED + WRITERS * OWN;
    let initial = pattern(1, size);
    std::fs::write(dir.join("vm.img"), &initial).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join("vm.img"), &base).unwrap();

    std::fs::create_dir_all(tmp.path().join("mnt")).unwrap();
    let m = Mounted::separate(&dir, &tmp.path().join("mnt"), &tmp.path().join("run"));
    // Writers run in phases; in each, a seal cuts the log while they write, and at the end
    // of each they all stop: the logs sealed so far must then replay to the image exactly.
    let go = Arc::new(Barrier::new(WRITERS + 1));
    let models: Vec<Arc<Mutex<Vec<u8>>>> = (0..WRITERS)
        .map(|w| {
            let off = SHARED + w * OWN;
            Arc::new(Mutex::new(initial[off..off + OWN].to_vec()))
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let path = m.path("vm.img");
            let go = go.clone();
            let model = models[w].clone();
            std::thread::spawn(move || {
                let shared = OpenOptions::new().write(true).open(&path).unwrap();
                let direct = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .unwrap();
                for phase in 0..PHASES {
                    go.wait();
                    let mut own = model.lock().unwrap();
                    for s in 0..STEPS {
                        let seed = ((w * PHASES + phase) * STEPS + s) as u64 + 1;
                        step(&shared, &direct, &mut own, SHARED + w * OWN, SHARED, seed);
                    }
                    drop(own);
                    go.wait();
                }
            })
        })
        .collect();
    for phase in 0..PHASES {
        go.wait();
        m.seal();
        go.wait();
        m.seal();
        let image = std::fs::read(dir.join("vm.img")).unwrap();
        for (w, model) in models.iter().enumerate() {
            let off = SHARED + w * OWN;
            assert!(
                image[off..off + OWN] == model.lock().unwrap()[..],
                "phase {phase}: writer {w}'s own region differs from the model"
            );
        }
        assert_replay_equals(&base, &dir, "vm.img", &dir.join("vm.img"));
    }
    for w in writers {
        w.join().unwrap();
    }
    m.unmount();
}

/// fio, the real client: libaio O_DIRECT at queue depth 16, random 4 KiB writes with an
/// fsync every 16, while the log is sealed over and over; the sealed logs replay to the image.
#[test]
fn fio_queue_depth_16_with_seals_replays_to_the_image() {
    if Command::new("fio").arg("--version").output().is_err() {
        eprintln!("fio missing: skipped");
        return;
    }
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vm.img"), pattern(2, 16 * MIB)).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join("vm.img"), &base).unwrap();
    std::fs::create_dir_all(tmp.path().join("mnt")).unwrap();
    let m = Mounted::separate(&dir, &tmp.path().join("mnt"), &tmp.path().join("run"));
    let done = Arc::new(AtomicBool::new(false));
    let sealer = {
        let done = done.clone();
        let socket = m.socket();
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let r = request_at(&socket, &hrl::control::Request::Seal).unwrap();
                assert!(r.ok, "seal failed: {:?}", r.error);
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            n
        })
    };
    run(Command::new("fio")
        .args([
            "--name=qd16",
            "--rw=randrw",
            "--bs=4k",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=16",
            "--fsync=16",
            "--size=16M",
            "--io_size=24M",
            "--randrepeat=0",
            "--output-format=terse",
        ])
        .arg(format!("--filename={}", m.path("vm.img").display())));
    done.store(true, Ordering::Relaxed);
    let seals = sealer.join().unwrap();
    assert!(seals >= 1);
    m.seal();
    assert_replay_equals(&base, &dir, "vm.img", &dir.join("vm.img"));
    m.unmount();
}

/// kill -9 while writers fsync: every write whose fsync returned is in the image and in the
/// log after the restart (the recovered active log, sealed, replays it).
#[test]
fn every_acknowledged_fsync_survives_kill_9_in_log_and_image() {
    const WRITERS: usize = 4;
    const SLOT: usize = 8192;
    const SLOTS: usize = 256;
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let size = WRITERS * SLOTS * SLOT;
    std::fs::write(dir.join("vm.img"), vec![0u8; size]).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join("vm.img"), &base).unwrap();

    let m = Mounted::in_place(&dir, &run_dir);
    // Each writer fills its slots one by one, fsyncing each; acked[w] counts the slots
    // whose fsync returned.
    let acked: Vec<Arc<Mutex<usize>>> = (0..WRITERS).map(|_| Arc::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let path = m.path("vm.img");
            let acked = acked[w].clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(f) = OpenOptions::new().write(true).open(&path) else {
                    return;
                };
                for s in 0..SLOTS {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let off = ((w * SLOTS + s) * SLOT) as u64;
                    let data = pattern((w * SLOTS + s) as u64 + 1, SLOT);
                    if f.write_all_at(&data, off).is_err() || f.sync_data().is_err() {
                        return;
                    }
                    *acked.lock().unwrap() = s + 1;
                }
            })
        })
        .collect();
    // Let some fsyncs through, with a seal among them, then kill.
    while acked.iter().map(|a| *a.lock().unwrap()).sum::<usize>() < 40 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    m.seal();
    while acked.iter().map(|a| *a.lock().unwrap()).sum::<usize>() < 80 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let at_kill: Vec<usize> = acked.iter().map(|a| *a.lock().unwrap()).collect();
    m.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }

    let m = Mounted::in_place(&dir, &run_dir);
    m.seal();
    m.unmount();
    let image = std::fs::read(dir.join("vm.img")).unwrap();
    let out = scratch();
    let replayed = std::fs::read(replay(&base, &sealed_logs(&dir, "vm.img"), out.path())).unwrap();
    for (w, &n) in at_kill.iter().enumerate() {
        for s in 0..n {
            let off = (w * SLOTS + s) * SLOT;
            let data = pattern((w * SLOTS + s) as u64 + 1, SLOT);
            assert!(
                image[off..off + SLOT] == data[..],
                "writer {w} slot {s}: acknowledged by fsync, missing from the image"
            );
            assert!(
                replayed[off..off + SLOT] == data[..],
                "writer {w} slot {s}: acknowledged by fsync, missing from the logs"
            );
        }
    }
}

/// The content of block `b` of writer `w`'s region after its writes 1..=`v` (each write `n`
/// fills block `n % blocks` with a pattern whose first 8 bytes say `n`; 0: never written).
fn writer_block(w: u64, v: u64, b: u64, blocks: u64) -> Vec<u8> {
    let last = (1..=v).rev().find(|n| n % blocks == b);
    match last {
        None => vec![0; BLOCK],
        Some(n) => {
            let mut data = pattern((w << 32) | n, BLOCK);
            data[..8].copy_from_slice(&n.to_le_bytes());
            data
        }
    }
}

/// Four writers of one disk write at once (the kernel sends writes of one disk to the
/// tracker in parallel) while seals cut the log: the logs up to each seal must replay to one
/// state of each writer's region at the cut. That is, exactly its writes 1..=v for one v
/// (no later write without every earlier one), with every write that had returned before
/// the seal was asked for and none that started after it answered.
#[test]
fn parallel_writers_replay_to_a_cut_at_every_seal() {
    const WRITERS: u64 = 4;
    const BLOCKS: u64 = 2048;
    const SEALS: usize = 12;
    let region = BLOCKS as usize * BLOCK;
    let tmp = scratch();
    let dir = tmp.path().join("vms");
    std::fs::create_dir_all(&dir).unwrap();
    let size = WRITERS as usize * region;
    std::fs::write(dir.join("vm.img"), vec![0u8; size]).unwrap();
    let base = tmp.path().join("base.img");
    std::fs::copy(dir.join("vm.img"), &base).unwrap();
    std::fs::create_dir_all(tmp.path().join("mnt")).unwrap();
    let m = Mounted::separate(&dir, &tmp.path().join("mnt"), &tmp.path().join("run"));

    let stop = Arc::new(AtomicBool::new(false));
    // Per writer: the last write that returned, and the last one started.
    let done: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (path, stop) = (m.path("vm.img"), stop.clone());
            let (done, started) = (done.clone(), started.clone());
            std::thread::spawn(move || {
                let f = OpenOptions::new().write(true).open(&path).unwrap();
                let mut v = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    v += 1;
                    let b = v % BLOCKS;
                    started[w as usize].store(v, Ordering::SeqCst);
                    let off = w * region as u64 + b * BLOCK as u64;
                    f.write_all_at(&writer_block(w, v, b, BLOCKS), off).unwrap();
                    done[w as usize].store(v, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // For each seal: its log, and per writer the bounds of the cut.
    let mut cuts = Vec::new();
    for _ in 0..SEALS {
        std::thread::sleep(std::time::Duration::from_millis(40));
        let low: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let sealed = m.seal();
        let high: Vec<u64> = started.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        assert_eq!(sealed.len(), 1);
        cuts.push((dir.join(&sealed[0].log), low, high));
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let out = scratch();
    let mut logs = Vec::new();
    for (k, (log, low, high)) in cuts.into_iter().enumerate() {
        logs.push(log);
        let img = out.path().join("cut.img");
        std::fs::copy(&base, &img).unwrap();
        hrl::log::apply_logs(&logs, &img).expect("apply the logs up to the seal");
        let image = std::fs::read(&img).unwrap();
        for w in 0..WRITERS {
            let r = &image[w as usize * region..(w as usize + 1) * region];
            let v = r
                .chunks(BLOCK)
                .map(|c| u64::from_le_bytes(c[..8].try_into().unwrap()))
                .max()
                .unwrap();
            let (lo, hi) = (low[w as usize], high[w as usize]);
            assert!(
                lo <= v && v <= hi,
                "seal {k}: writer {w} at write {v}, outside the cut's bounds {lo}..={hi}"
            );
            for (b, c) in r.chunks(BLOCK).enumerate() {
                assert!(
                    c == writer_block(w, v, b as u64, BLOCKS).as_slice(),
                    "seal {k}: writer {w}'s block {b} is not its state after write {v}"
                );
            }
        }
    }
    m.seal();
    assert_replay_equals(&base, &dir, "vm.img", &dir.join("vm.img"));
    m.unmount();
}
