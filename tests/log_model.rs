//! Property tests of the log against a reference model (as mountpoint-s3's reftests do):
//! random writes / truncates / zeroes / punches applied to an in-memory file and, through a
//! sealed log and `apply_logs`, to a real file give identical bytes and sizes; the coalesced
//! log gives the same result with no more records.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use hrl::log::{apply_logs, coalesce, verify_sealed, LogHeader, LogReader, LogWriter, Record};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, byte: u8 },
    Truncate { size: u64 },
    Zero { offset: u64, len: u64 },
    Punch { offset: u64, len: u64 },
    Flush,
}

const SPACE: u64 = 256 * 1024;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SPACE, 1usize..40_000, any::<u8>()).prop_map(|(offset, len, byte)| Op::Write { offset, len, byte }),
        1 => (0..SPACE).prop_map(|size| Op::Truncate { size }),
        1 => (0..SPACE, 1..70_000u64).prop_map(|(offset, len)| Op::Zero { offset, len }),
        1 => (0..SPACE, 1..70_000u64).prop_map(|(offset, len)| Op::Punch { offset, len }),
        1 => Just(Op::Flush),
    ]
}

/// The reference model: what each operation means for a file's bytes and size.
fn model_apply(file: &mut Vec<u8>, op: &Op) {
    match *op {
        Op::Write { offset, len, byte } => {
            let end = offset as usize + len;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[offset as usize..end].fill(byte);
        }
        Op::Truncate { size } => file.resize(size as usize, 0),
        Op::Zero { offset, len } | Op::Punch { offset, len } => {
            let start = (offset as usize).min(file.len());
            let end = ((offset + len) as usize).min(file.len());
            file[start..end].fill(0);
        }
        Op::Flush => {}
    }
}

fn log_op(w: &mut LogWriter, op: &Op) {
    match *op {
        Op::Write { offset, len, byte } => w.append_write(offset, &vec![byte; len]).unwrap(),
        Op::Truncate { size } => w.append_truncate(size).unwrap(),
        Op::Zero { offset, len } => w.append_zero(offset, len).unwrap(),
        Op::Punch { offset, len } => w.append_punch(offset, len).unwrap(),
        Op::Flush => w.append_flush().unwrap(),
    }
}

fn count_records(p: &Path) -> usize {
    LogReader::open(p)
        .unwrap()
        .map(|r| r.unwrap())
        .filter(|r| !matches!(r, Record::Seal(_)))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn log_apply_and_coalesce_match_the_model(
        base_len in 0..SPACE,
        base_byte in any::<u8>(),
        batches in prop::collection::vec(prop::collection::vec(op(), 0..12), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = vec![base_byte; base_len as usize];
        let mut model = base.clone();
        let mut logs = Vec::new();
        let mut prev = [0u8; 32];
        for (i, ops) in batches.iter().enumerate() {
            let path = dir.path().join(format!("d.img.{}.hrl", i + 1));
            let mut w = LogWriter::create(&path, &LogHeader::new([1; 16], 1, i as u64 + 1, base_len, prev)).unwrap();
            for op in ops {
                model_apply(&mut model, op);
                log_op(&mut w, op);
            }
            w.seal().unwrap();
            prev = verify_sealed(&path, None).unwrap().chain_hash();
            logs.push(path);
        }

        let replayed = dir.path().join("replayed.img");
        std::fs::write(&replayed, &base).unwrap();
        let summary = apply_logs(&logs, &replayed).unwrap();
        let got = std::fs::read(&replayed).unwrap();
        prop_assert_eq!(got.len(), model.len());
        prop_assert!(got == model, "replayed image differs from the model");
        prop_assert_eq!(summary.final_size, model.len() as u64);

        // Coalescing all logs into one keeps the effect and the chain.
        let merged = dir.path().join("merged.hrl");
        coalesce(&logs, &merged).unwrap();
        let v = verify_sealed(&merged, Some(&[0; 32])).unwrap();
        prop_assert_eq!(v.chain_hash(), prev);
        let total: usize = logs.iter().map(|p| count_records(p)).sum();
        // Each change can at most split one earlier extent in two: a bound on the records.
        prop_assert!(count_records(&merged) <= 2 * total + 3, "coalescing added records");
        let orig_bytes: u64 = logs.iter().map(|p| verify_sealed(p, None).unwrap().seal.payload_bytes).sum();
        prop_assert!(v.seal.payload_bytes <= orig_bytes + 1, "coalescing added data");
        let via_merged = dir.path().join("merged.img");
        std::fs::write(&via_merged, &base).unwrap();
        apply_logs(&[&merged], &via_merged).unwrap();
        prop_assert!(std::fs::read(&via_merged).unwrap() == model, "coalesced log differs from the model");
    }
}

/// Ten writes to the same block ship once after coalescing.
#[test]
fn coalescing_ships_a_rewritten_block_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.1.hrl");
    let mut w = LogWriter::create(&log, &LogHeader::new([1; 16], 1, 1, 1 << 20, [0; 32])).unwrap();
    for i in 0..10u8 {
        w.append_write(8192, &[i; 4096]).unwrap();
    }
    w.seal().unwrap();
    let out = dir.path().join("c.hrl");
    let info = coalesce(&[&log], &out).unwrap();
    assert_eq!(info.records, 1);
    assert_eq!(info.payload_bytes, 4096);
    let recs: Vec<Record> = LogReader::open(&out).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(
        recs[0],
        Record::Write {
            offset: 8192,
            data: vec![9; 4096]
        }
    );
}

/// Punched ranges stay holes in the replayed image.
#[test]
fn replay_keeps_images_sparse() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.1.hrl");
    let mut w = LogWriter::create(&log, &LogHeader::new([1; 16], 1, 1, 0, [0; 32])).unwrap();
    w.append_write(0, &vec![7u8; 8 << 20]).unwrap();
    w.append_punch(0, 8 << 20).unwrap();
    w.append_truncate(64 << 20).unwrap();
    w.seal().unwrap();
    let img = dir.path().join("img");
    apply_logs(&[&log], &img).unwrap();
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 64 << 20);
    assert!(
        md.blocks() * 512 < (1 << 20),
        "image is not sparse: {} bytes allocated",
        md.blocks() * 512
    );
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
}
