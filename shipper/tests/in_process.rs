//! A replication cycle driven in-process: the shipper's library against
//! `object_store::memory::InMemory`, and a stand-in tracker (tests/common's, speaking the
//! control protocol) reached through the cycle's `Tracker` trait. No mount, no spawned
//! shipper, no root: the cycle, the store layer and restore run in this test's process.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use common::FakeTracker;
use hrl_shipper::recover::restore::restore_point;
use hrl_shipper::replicate::cycle::{run_cycle_with, CycleReport, Protected};
use hrl_shipper::replicate::tracker::TrackerClient;
use hrl_shipper::service::status::{DirStatus, DiskState};
use hrl_shipper::store::target::Target;
use hrl_shipper::store::GroupStore;

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

async fn cycle(p: &Protected, status: &Mutex<DirStatus>, run: &Path) -> CycleReport {
    let socket = hrl::control::socket_path_in(run, &p.dir);
    let tracker = TrackerClient::connect_socket(&p.dir, socket).await.unwrap();
    run_cycle_with(p, status, Some(Box::new(tracker)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_against_an_in_memory_store_restores_every_point() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, run, state) = (
        tmp.path().join("vm"),
        tmp.path().join("run"),
        tmp.path().join("state"),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let fake = FakeTracker::start(&dir, &run);
    fake.add_disk("d.img", 1 << 20);
    fake.write("d.img", 70_000, &data(1, 5000));
    let target = Target {
        store: Arc::new(object_store::memory::InMemory::new()),
        prefix: object_store::path::Path::default(),
        url: "memory:///".into(),
    };
    let store = GroupStore::new(target, "vm").unwrap();
    let p = Protected {
        dir: dir.clone(),
        store: store.clone(),
        chunk_size: 64 << 10,
        state_dir: state,
        force_resync: false,
        resync_now: false,
        resync_window: None,
        progress_bar: false,
        reconcile: false,
        app: None,
    };
    let status = Mutex::new(DirStatus::new(&dir, "vm", "memory:///"));

    let first = cycle(&p, &status, &run).await;
    assert_eq!(first.point_id, 1);
    assert_eq!(first.base_copies.len(), 1, "a new disk gets a base copy");
    let image_1 = std::fs::read(dir.join("d.img")).unwrap();

    fake.write("d.img", 300_000, &data(2, 70_000));
    let second = cycle(&p, &status, &run).await;
    assert_eq!(second.point_id, 2);
    assert!(second.base_copies.is_empty(), "{second:?}");
    assert!(second.logs_shipped >= 1, "{second:?}");
    let image_2 = std::fs::read(dir.join("d.img")).unwrap();
    assert_eq!(fake.pending_count(), 0, "shipped logs are acked");
    {
        let s = status.lock().unwrap();
        assert_eq!(s.last_point_id, Some(2));
        assert_eq!(s.disks[0].state, DiskState::Replicating);
    }

    for (id, image) in [(1, image_1), (2, image_2)] {
        let m = hrl_shipper::store::manifests::get(&store, id)
            .await
            .unwrap();
        let to = tmp.path().join(format!("restored-{id}"));
        restore_point(&store, &m, &to).await.unwrap();
        assert!(
            std::fs::read(to.join("d.img")).unwrap() == image,
            "point {id}"
        );
    }
}
