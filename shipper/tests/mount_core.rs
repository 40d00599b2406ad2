//! The mount's core (no FUSE, no root) against a reference model: points made by real
//! cycles (a stand-in tracker, an in-memory store: base with holes, then several logs),
//! each restored in full by `restore_point`; random reads through `MountCore` must equal the
//! restored bytes, and random writes go to the overlay (the reference: the restored bytes
//! with the same writes applied) while the store stays as it was.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use hrl_shipper::mount::{CoreOptions, MountCore};
use hrl_shipper::recover::restore::restore_point;
use hrl_shipper::replicate::cycle::{run_cycle_with, Protected};
use hrl_shipper::replicate::tracker::TrackerClient;
use hrl_shipper::service::status::DirStatus;
use hrl_shipper::store::target::Target;
use hrl_shipper::store::GroupStore;
use proptest::prelude::*;
use testkit::FakeTracker;

const DISK: u64 = 3 << 20;
const CHUNK: u32 = 64 << 10;

struct Fixture {
    rt: tokio::runtime::Runtime,
    store: GroupStore,
    memory: Arc<object_store::memory::InMemory>,
    /// (point id, restored image) per point.
    restored: Vec<(u64, PathBuf)>,
    tmp: tempfile::TempDir,
    _fake: FakeTracker,
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    testkit::pattern(seed, len)
}

/// Four points: a base (data at scattered places, holes between), then three rounds of
/// writes: small, straddling chunks, overwriting earlier log data.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (dir, run) = (tmp.path().join("vm"), tmp.path().join("run"));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = FakeTracker::start(&dir, &run);
        fake.add_disk("d.img", DISK);
        fake.write("d.img", 0, &bytes(1, 100_000));
        fake.write("d.img", 1 << 20, &bytes(2, 64 << 10));
        let memory = Arc::new(object_store::memory::InMemory::new());
        let target = Target {
            store: memory.clone(),
            prefix: object_store::path::Path::default(),
            url: "memory:///".into(),
        };
        let store = GroupStore::new(target, "vm").unwrap();
        let p = Protected {
            dir: dir.clone(),
            store: store.clone(),
            chunk_size: CHUNK,
            state_dir: tmp.path().join("state"),
            force_resync: false,
            resync_now: false,
            resync_window: None,
            progress_bar: false,
            reconcile: false,
            app: None,
        };
        let status = Mutex::new(DirStatus::new(&dir, "vm", "memory:///"));
        let rounds: [&[(u64, usize)]; 4] = [
            &[],
            &[(5000, 10), (200_000, 4096)],
            &[(CHUNK as u64 - 100, 300), (2 << 20, 200_000), (5000, 3)],
            &[(1_000_000, 150_000), (2 << 20, 5), (DISK - 7, 7)],
        ];
        let mut restored = Vec::new();
        for (round, writes) in rounds.iter().enumerate() {
            for (k, &(off, len)) in writes.iter().enumerate() {
                fake.write("d.img", off, &bytes(100 + (round * 10 + k) as u64, len));
            }
            let report = rt.block_on(async {
                let socket = hrl::control::socket_path_in(&run, &p.dir);
                let t = TrackerClient::connect_socket(&p.dir, socket).await.unwrap();
                run_cycle_with(&p, &status, Some(Box::new(t)))
                    .await
                    .unwrap()
            });
            let to = tmp.path().join(format!("restored-{}", report.point_id));
            rt.block_on(async {
                let m = hrl_shipper::store::manifests::get(&store, report.point_id)
                    .await
                    .unwrap();
                restore_point(&store, &m, &to).await.unwrap();
            });
            restored.push((report.point_id, to.join("d.img")));
        }
        Fixture {
            rt,
            store,
            memory,
            restored,
            tmp,
            _fake: fake,
        }
    })
}

fn open(f: &Fixture, point: u64, scratch: &Path, read_only: bool) -> MountCore {
    std::fs::create_dir_all(scratch).unwrap();
    f.rt.block_on(async {
        let m = hrl_shipper::store::manifests::get(&f.store, point)
            .await
            .unwrap();
        let opts = CoreOptions {
            read_only,
            cache_bytes: 4 * u64::from(CHUNK),
            prefetch_bytes: 2 * u64::from(CHUNK),
        };
        MountCore::open(&f.store, m, scratch, opts).await.unwrap()
    })
}

/// Every object of the store with its bytes.
fn store_contents(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    f.rt.block_on(async {
        let metas: Vec<_> = f.memory.list(None).try_collect().await.unwrap();
        let mut out = Vec::new();
        for m in metas {
            let b = f
                .memory
                .get(&m.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.push((m.location.to_string(), b.to_vec()));
        }
        out.sort();
        out
    })
}

#[test]
fn the_fixture_has_a_base_and_several_logs() {
    let f = fixture();
    assert_eq!(f.restored.len(), 4);
    let m =
        f.rt.block_on(hrl_shipper::store::manifests::get(&f.store, 4))
            .unwrap();
    let d = &m.disks[0];
    assert!(
        d.last_seq >= d.base.after_seq + 3,
        "three logs over the base: {d:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random reads of any point through the core equal the full restore of that point.
    #[test]
    fn reads_equal_a_full_restore(point in 0usize..4,
                                  reads in proptest::collection::vec((0u64..DISK + 10_000, 1u64..300_000), 1..12)) {
        let f = fixture();
        let (id, image) = &f.restored[point];
        let want = std::fs::read(image).unwrap();
        let scratch = tempfile::tempdir_in(f.tmp.path()).unwrap();
        let core = open(f, *id, scratch.path(), true);
        for (off, len) in reads {
            let got = f.rt.block_on(core.read(0, off, len)).unwrap();
            let s = (off as usize).min(want.len());
            let e = ((off + len) as usize).min(want.len());
            prop_assert!(got == want[s..e], "point {} read {}+{}", id, off, len);
        }
    }

    /// Writes land in the overlay: reads return the restored point with the writes applied,
    /// and the store is unchanged.
    #[test]
    fn writes_go_to_the_overlay(writes in proptest::collection::vec((0u64..DISK - 1, 1usize..20_000), 1..8),
                                reads in proptest::collection::vec((0u64..DISK, 1u64..200_000), 1..8)) {
        let f = fixture();
        let before = store_contents(f);
        let (id, image) = &f.restored[3];
        let mut model = std::fs::read(image).unwrap();
        let scratch = tempfile::tempdir_in(f.tmp.path()).unwrap();
        let core = open(f, *id, scratch.path(), false);
        for (n, (off, len)) in writes.into_iter().enumerate() {
            let len = len.min((DISK - off) as usize);
            let data = bytes(7000 + n as u64, len);
            prop_assert_eq!(f.rt.block_on(core.write(0, off, &data)).unwrap(), len);
            model[off as usize..off as usize + len].copy_from_slice(&data);
        }
        for (off, len) in reads {
            let got = f.rt.block_on(core.read(0, off, len)).unwrap();
            let e = ((off + len) as usize).min(model.len());
            prop_assert!(got == model[off as usize..e], "read {}+{}", off, len);
        }
        let whole = f.rt.block_on(core.read(0, 0, DISK)).unwrap();
        prop_assert!(whole == model);
        prop_assert!(store_contents(f) == before, "the store changed");
    }
}

#[test]
fn a_read_only_core_refuses_writes_and_past_the_end_is_refused() {
    let f = fixture();
    let scratch = tempfile::tempdir_in(f.tmp.path()).unwrap();
    let ro = open(f, 4, &scratch.path().join("ro"), true);
    let err = f.rt.block_on(ro.write(0, 0, b"x")).unwrap_err();
    assert_eq!(err.errno(), libc::EROFS);
    let rw = open(f, 4, &scratch.path().join("rw"), false);
    let err = f.rt.block_on(rw.write(0, DISK - 1, b"xy")).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
}

#[test]
fn one_small_read_fetches_one_chunk_and_a_second_pass_hits_the_cache() {
    let f = fixture();
    let scratch = tempfile::tempdir_in(f.tmp.path()).unwrap();
    let core = open(f, 1, scratch.path(), true);
    let fetched = || {
        core.blocks
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    f.rt.block_on(core.read(0, (1 << 20) + 4096, 4096)).unwrap();
    assert_eq!(fetched(), 1, "one 4 KiB read fetches one chunk");
    f.rt.block_on(core.read(0, (1 << 20) + 8192, 4096)).unwrap();
    assert_eq!(fetched(), 1, "the same chunk again comes from the cache");
    // A hole needs nothing from the store.
    f.rt.block_on(core.read(0, 2_800_000, 4096)).unwrap();
    assert_eq!(fetched(), 1);
}
