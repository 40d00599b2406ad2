//! Restore against a byte model: a base (data, zero blocks) and a chain of 1–40 sealed logs
//! (overlapping writes, zero, punch, truncate) put into a real local store object by object,
//! restored by `restore_point`; the restored disk must equal the same records replayed onto
//! a byte vector, every page that reads as zero must be a hole (SEEK_DATA), damage found
//! mid-restore must leave the directory without the disk, and a chunk the logs overwrite
//! whole is never fetched.

#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use hrl::chunk::ZERO_DIGEST;
use hrl::log::{LogHeader, LogWriter};
use hrl::store::{BaseRef, DiskEntry, FileAttrs, PointManifest};
use hrl_shipper::recover::restore::restore_point;
use hrl_shipper::store::chunks::ChunkStore;
use hrl_shipper::store::GroupStore;
use proptest::prelude::*;

/// Chunk size of the bases here: one filesystem page, so that every page the model reads as
/// zero can be checked to be a hole.
const CHUNK: u32 = 4096;
const PAGE: u64 = 4096;
const DISK_ID: [u8; 16] = [0x5a; 16];

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: u64, seed: u8 },
    Zero { offset: u64, len: u64 },
    Punch { offset: u64, len: u64 },
    Truncate { size: u64 },
}

/// The test's own replay: what each record does to a byte vector (docs/hrl-format.md).
fn replay(image: &mut Vec<u8>, op: &Op) {
    match *op {
        Op::Write { offset, len, seed } => {
            let end = (offset + len) as usize;
            if image.len() < end {
                image.resize(end, 0);
            }
            image[offset as usize..end].copy_from_slice(&payload(offset, len, seed));
        }
        Op::Zero { offset, len } | Op::Punch { offset, len } => {
            let s = (offset as usize).min(image.len());
            let e = ((offset + len) as usize).min(image.len());
            image[s..e].fill(0);
        }
        Op::Truncate { size } => image.resize(size as usize, 0),
    }
}

/// Bytes of a write: seed 0 writes zeros (what a guest zeroing blocks writes), any other
/// pseudo-random bytes of its position and seed, none zero (so no two blocks are alike).
fn payload(offset: u64, len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| match seed {
            0 => 0,
            s => {
                let x = (offset + i) ^ (u64::from(s) << 40);
                (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 | 1
            }
        })
        .collect()
}

/// A group in a local store directory, a disk's base put into it and a chain of logs.
struct Built {
    tmp: tempfile::TempDir,
    store: GroupStore,
    point: PointManifest,
    /// The disk as the logs leave it.
    expected: Vec<u8>,
}

impl Built {
    fn store_dir(&self) -> PathBuf {
        self.tmp.path().join("store").join("g")
    }
    /// The stored object at `key`.
    fn object(&self, key: &str) -> PathBuf {
        self.store_dir().join(key)
    }
    fn entry(&self) -> &DiskEntry {
        &self.point.disks[0]
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Puts `base` (chunked by [`CHUNK`]) and one sealed log per element of `logs` into a new
/// local store, and returns the point naming them.
fn build(rt: &tokio::runtime::Runtime, base: &[u8], logs: &[Vec<Op>]) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let target =
        hrl_shipper::store::target::open(&tmp.path().join("store").display().to_string()).unwrap();
    let store = GroupStore::new(target, "g").unwrap();
    let disk_id = hrl::to_hex(&DISK_ID);
    let base_path = tmp.path().join("base.img");
    let f = std::fs::File::create(&base_path).unwrap();
    f.set_len(base.len() as u64).unwrap();
    for (i, block) in base.chunks(CHUNK as usize).enumerate() {
        if !hrl::chunk::is_zero(block) {
            std::os::unix::fs::FileExt::write_all_at(&f, block, i as u64 * u64::from(CHUNK))
                .unwrap();
        }
    }
    drop(f);
    let index = hrl::chunk::hash_file(&base_path, CHUNK).unwrap();
    let index_key = hrl::store::base_key(&disk_id, 1, 0);
    let index_hash = rt.block_on(async {
        let chunks = ChunkStore::new(&store);
        for block in base.chunks(CHUNK as usize) {
            chunks.insert(block).await.unwrap();
        }
        hrl_shipper::store::index::put_index(&store, &index_key, &index)
            .await
            .unwrap()
    });
    let mut expected = base.to_vec();
    let mut prev = [0u8; 32];
    let logs_dir = tmp.path().join("logs");
    std::fs::create_dir_all(&logs_dir).unwrap();
    for (n, ops) in logs.iter().enumerate() {
        let seq = n as u64 + 1;
        let path = logs_dir.join(format!("{seq}.hrl"));
        let header = LogHeader::new(DISK_ID, 1, seq, expected.len() as u64, prev);
        let mut w = LogWriter::create(&path, &header).unwrap();
        for op in ops {
            match *op {
                Op::Write { offset, len, seed } => {
                    w.append_write(offset, &payload(offset, len, seed)).unwrap()
                }
                Op::Zero { offset, len } => w.append_zero(offset, len).unwrap(),
                Op::Punch { offset, len } => w.append_punch(offset, len).unwrap(),
                Op::Truncate { size } => w.append_truncate(size).unwrap(),
            }
            replay(&mut expected, op);
        }
        w.append_flush().unwrap();
        prev = w.seal().unwrap().hash;
        let zst = path.with_extension("zst");
        hrl_shipper::store::compress_file(&path, &zst).unwrap();
        let key = hrl::store::log_key(&disk_id, 1, seq, seq);
        rt.block_on(store.put_file_immutable(&key, &zst)).unwrap();
    }
    let entry = DiskEntry {
        name: "d.img".into(),
        disk_id,
        generation: 1,
        disk_size: expected.len() as u64,
        base: BaseRef {
            index_key,
            index_hash,
            block_size: CHUNK,
            after_seq: 0,
            after_chain_hash: hrl::to_hex(&[0u8; 32]),
        },
        last_seq: logs.len() as u64,
        last_chain_hash: hrl::to_hex(&prev),
        file: Some(FileAttrs {
            mode: 0o640,
            // SAFETY: plain getters.
            uid: unsafe { libc::getuid() },
            gid: unsafe { libc::getgid() },
        }),
        carried_from: None,
    };
    let point = PointManifest {
        version: hrl::store::MANIFEST_VERSION,
        id: 1,
        time_ns: 1,
        seal_id: 1,
        committed_ns: 1,
        host: "test".into(),
        epoch: None,
        disks: vec![entry],
        kind: None,
    };
    Built {
        tmp,
        store,
        point,
        expected,
    }
}

/// Restores the point into a new directory `name` beside the store.
fn restore(rt: &tokio::runtime::Runtime, b: &Built, name: &str) -> (PathBuf, anyhow::Result<()>) {
    let to = b.tmp.path().join(name);
    let r = rt
        .block_on(restore_point(&b.store, &b.point, &to))
        .map(|_| ());
    (to, r)
}

/// Whether the page at `offset` of `file` is a hole (no data from it to its end).
fn is_hole(file: &std::fs::File, offset: u64) -> bool {
    // SAFETY: lseek on an open descriptor.
    let data = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    if data < 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    data as u64 >= offset + PAGE
}

/// The restored disk holds exactly `expected`, and each whole page of it that reads as
/// zero is a hole.
fn check_restored(disk: &Path, expected: &[u8]) -> Result<(), TestCaseError> {
    let got = std::fs::read(disk).unwrap();
    prop_assert_eq!(got.len(), expected.len(), "size");
    let differs = got.iter().zip(expected).position(|(a, b)| a != b);
    prop_assert!(
        differs.is_none(),
        "restored disk differs from the model at byte {:?}",
        differs
    );
    let f = std::fs::File::open(disk).unwrap();
    for (p, page) in expected.chunks_exact(PAGE as usize).enumerate() {
        if hrl::chunk::is_zero(page) {
            prop_assert!(
                is_hole(&f, p as u64 * PAGE),
                "page {} reads as zero but was written",
                p
            );
        }
    }
    Ok(())
}

/// The directory holds nothing of the disk: no disk, no partial file, no log copies.
fn assert_nothing_left(to: &Path) {
    let left: Vec<_> = std::fs::read_dir(to)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "a failed restore left {left:?} in {}",
        to.display()
    );
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    let at = 0..size + 3 * PAGE;
    let len = prop_oneof![1u64..200, 1u64..3 * PAGE, Just(PAGE), Just(2 * PAGE)];
    prop_oneof![
        6 => (at.clone(), len.clone(), 0u8..8).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => (at.clone(), len.clone()).prop_map(|(offset, len)| Op::Zero { offset, len }),
        2 => (at.clone(), len).prop_map(|(offset, len)| Op::Punch { offset, len }),
        1 => at.prop_map(|size| Op::Truncate { size }),
    ]
}

/// A base of up to 12 pages: each page data, zeros, or half of each.
fn base_image() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(0u8..4, 0..12), 0u64..PAGE).prop_map(|(pages, tail)| {
        let mut v = Vec::new();
        for (i, kind) in pages.iter().enumerate() {
            let data = payload(i as u64 * PAGE, PAGE, 200);
            match kind {
                0 => v.extend(std::iter::repeat_n(0u8, PAGE as usize)),
                1 => {
                    v.extend_from_slice(&data[..PAGE as usize / 2]);
                    v.extend(std::iter::repeat_n(0u8, PAGE as usize / 2));
                }
                _ => v.extend_from_slice(&data),
            }
        }
        let start = v.len() as u64;
        v.extend_from_slice(&payload(start, tail, 201));
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// The restored disk is the base with every log replayed, and stays sparse.
    #[test]
    fn restore_equals_the_replayed_model(
        base in base_image(),
        logs in proptest::collection::vec(proptest::collection::vec(op(12 * PAGE), 1..6), 1..=40),
    ) {
        let rt = runtime();
        let b = build(&rt, &base, &logs);
        let (to, r) = restore(&rt, &b, "r");
        prop_assert!(r.is_ok(), "restore failed: {:#}", r.unwrap_err());
        check_restored(&to.join("d.img"), &b.expected)?;
    }
}

/// Many blocks, so that damage at the end is found after the writer wrote the first ones.
fn big_point(rt: &tokio::runtime::Runtime) -> Built {
    let base: Vec<u8> = (0..300).flat_map(|i| payload(i * PAGE, PAGE, 7)).collect();
    let logs: Vec<Vec<Op>> = (0..5)
        .map(|i| {
            vec![Op::Write {
                offset: i * 40 * PAGE + 100,
                len: 3 * PAGE,
                seed: 3,
            }]
        })
        .collect();
    build(rt, &base, &logs)
}

/// A chunk flipped in the store (the last block's: found while the first ones are written)
/// fails the restore as damaged and leaves the directory without the disk.
#[test]
fn a_damaged_chunk_mid_restore_leaves_no_disk() {
    let rt = runtime();
    let b = big_point(&rt);
    let (to, r) = restore(&rt, &b, "good");
    r.unwrap();
    check_restored(&to.join("d.img"), &b.expected).unwrap();
    let index = hrl::chunk::ChunkIndex::decode(
        &std::fs::read(b.object(&b.entry().base.index_key)).unwrap(),
    )
    .unwrap();
    let last = index.digests.last().unwrap();
    let chunk = b.object(&hrl::store::chunk_key(last));
    let mut bytes = std::fs::read(&chunk).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x40;
    std::fs::write(&chunk, &bytes).unwrap();
    let (to, r) = restore(&rt, &b, "bad");
    let e = format!("{:#}", r.unwrap_err());
    assert!(
        e.contains("damaged") && e.contains(&hrl::to_hex(last)),
        "{e}"
    );
    assert_nothing_left(&to);
}

/// A log flipped in the store fails the restore as damaged, naming the log, and leaves the
/// directory without the disk.
#[test]
fn a_damaged_log_leaves_no_disk() {
    // Inside the compressed payload of the write record (a 4 KiB header precedes it).
    restore_with_a_damaged_log_fails(4, |bytes| {
        let n = bytes.len();
        bytes[n / 2] ^= 0x01;
    });
}

/// Log `seq` of the big point's disk changed in the store by `damage`: the restore fails as
/// damaged, naming that log, and leaves no disk behind.
fn restore_with_a_damaged_log_fails(seq: u64, damage: impl FnOnce(&mut Vec<u8>)) {
    let rt = runtime();
    let b = big_point(&rt);
    let key = hrl::store::log_key(&b.entry().disk_id, 1, seq, seq);
    let log = b.object(&key);
    let mut bytes = std::fs::read(&log).unwrap();
    damage(&mut bytes);
    std::fs::write(&log, &bytes).unwrap();
    let (to, r) = restore(&rt, &b, "bad");
    let e = format!("{:#}", r.unwrap_err());
    let name = key.rsplit('/').next().unwrap();
    assert!(e.contains("damaged") && e.contains(name), "{e}");
    assert_nothing_left(&to);
}

/// A base chunk that the logs overwrite whole is not needed: restore never fetches it (here
/// it is gone from the store, and the restore still succeeds).
#[test]
fn a_chunk_the_logs_overwrite_whole_is_never_fetched() {
    let rt = runtime();
    let base: Vec<u8> = (0..8).flat_map(|i| payload(i * PAGE, PAGE, 9)).collect();
    let logs = vec![
        vec![Op::Write {
            offset: 2 * PAGE - 10,
            len: PAGE + 20,
            seed: 4,
        }],
        vec![Op::Write {
            offset: 2 * PAGE + 5,
            len: 2 * PAGE,
            seed: 5,
        }],
    ];
    let b = build(&rt, &base, &logs);
    let index = hrl::chunk::hash_file(&b.tmp.path().join("base.img"), CHUNK).unwrap();
    let covered = index.digests[2];
    assert_ne!(covered, ZERO_DIGEST);
    std::fs::remove_file(b.object(&hrl::store::chunk_key(&covered))).unwrap();
    let (to, r) = restore(&rt, &b, "r");
    r.unwrap();
    check_restored(&to.join("d.img"), &b.expected).unwrap();
}

/// An all-zero disk (a base of zero blocks, logs that write and punch zeros) restores as
/// one hole: nothing allocated.
#[test]
fn an_all_zero_disk_restores_as_a_hole() {
    let rt = runtime();
    let base = vec![0u8; 64 * PAGE as usize];
    let logs = vec![
        vec![Op::Write {
            offset: 3 * PAGE,
            len: 5 * PAGE,
            seed: 0,
        }],
        vec![
            Op::Punch {
                offset: 0,
                len: PAGE,
            },
            Op::Write {
                offset: 60 * PAGE,
                len: 8 * PAGE,
                seed: 0,
            },
        ],
    ];
    let b = build(&rt, &base, &logs);
    let (to, r) = restore(&rt, &b, "r");
    r.unwrap();
    let disk = to.join("d.img");
    check_restored(&disk, &b.expected).unwrap();
    assert_eq!(b.expected.len() as u64, 68 * PAGE);
    let f = std::fs::File::open(&disk).unwrap();
    assert!(is_hole(&f, 0), "an all-zero disk has data");
    assert_eq!(testkit::allocated(&disk), 0, "an all-zero disk has blocks");
}

/// A log cut short in the store (its compressed stream ends early) fails the restore, which
/// keeps small logs in memory, as damaged, naming the log, and leaves no disk behind.
#[test]
fn a_truncated_log_leaves_no_disk() {
    restore_with_a_damaged_log_fails(2, |bytes| bytes.truncate(bytes.len() / 2));
}

/// Logs are kept in memory up to the limits asked for, each at most `each` bytes and the
/// chain at most `total` (then files); a chain of both kinds verifies and folds alike.
#[test]
fn logs_past_the_memory_limits_go_to_files() {
    use hrl_shipper::store::logs::{load_disk, LogMemory};
    let rt = runtime();
    let b = big_point(&rt);
    let dir = b.tmp.path().join("scratch");
    // Which logs were kept in memory, and the largest log's bytes.
    let pattern = |memory: LogMemory, dir: &Path| {
        let d = rt
            .block_on(load_disk(&b.store, b.entry(), dir, memory))
            .unwrap();
        assert_eq!(d.model.size(), b.expected.len() as u64);
        let mut largest = 0;
        for l in &d.logs {
            assert_eq!(
                l.path().exists(),
                !l.is_in_memory(),
                "{}",
                l.path().display()
            );
            largest = largest.max(l.len().unwrap());
        }
        (
            d.logs.iter().map(|l| l.is_in_memory()).collect::<Vec<_>>(),
            largest,
        )
    };
    let (all, one) = pattern(LogMemory::RESTORE, &dir.join("a"));
    assert_eq!(all, vec![true; 5]);
    assert_eq!(pattern(LogMemory::NONE, &dir.join("b")).0, vec![false; 5]);
    let small = LogMemory {
        each: one - 1,
        total: u64::MAX,
    };
    assert_eq!(pattern(small, &dir.join("c")).0, vec![false; 5]);
    // Room for two logs: the first two downloads take it, the rest go to files.
    let two = LogMemory {
        each: one,
        total: 2 * one,
    };
    let p = pattern(two, &dir.join("d")).0;
    assert_eq!(p, vec![true, true, false, false, false]);
}

/// A log larger than the most a restore keeps in memory is restored from a scratch file.
#[test]
fn a_log_larger_than_the_memory_limit_restores() {
    use hrl_shipper::store::logs::{load_disk, LogMemory, LOG_IN_MEMORY_MAX};
    let rt = runtime();
    let base: Vec<u8> = (0..16).flat_map(|i| payload(i * PAGE, PAGE, 7)).collect();
    let len = LOG_IN_MEMORY_MAX + PAGE;
    let logs = vec![
        vec![Op::Write {
            offset: 2 * PAGE,
            len,
            seed: 5,
        }],
        vec![Op::Write {
            offset: PAGE + 10,
            len: 100,
            seed: 9,
        }],
    ];
    let b = build(&rt, &base, &logs);
    let d = rt
        .block_on(load_disk(
            &b.store,
            b.entry(),
            &b.tmp.path().join("s"),
            LogMemory::RESTORE,
        ))
        .unwrap();
    let kept: Vec<bool> = d.logs.iter().map(|l| l.is_in_memory()).collect();
    assert_eq!(kept, vec![false, true]);
    let (to, r) = restore(&rt, &b, "r");
    r.unwrap();
    check_restored(&to.join("d.img"), &b.expected).unwrap();
}
