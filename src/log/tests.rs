//! Unit tests of the log layer: round trips, torn tails, bit flips, the chain.

use super::*;
use std::path::{Path, PathBuf};

fn header(seq: u64, prev: crate::Digest) -> LogHeader {
    LogHeader::new([9; 16], 1, seq, 1 << 20, prev)
}

fn sample_log(path: &Path, seq: u64, prev: crate::Digest) -> VerifiedLog {
    let mut w = LogWriter::create(path, &header(seq, prev)).unwrap();
    w.append_write(4096, &vec![0xab; 5000]).unwrap();
    w.append_truncate(100_000).unwrap();
    w.append_zero(10, 20).unwrap();
    w.append_punch(8192, 4096).unwrap();
    w.append_flush().unwrap();
    w.append_write(0, b"first bytes").unwrap();
    w.append_rename("new.img").unwrap();
    w.seal().unwrap();
    verify_sealed(path, Some(&prev)).unwrap()
}

fn records(path: &Path) -> (Vec<Record>, LogEnd) {
    let mut r = LogReader::open(path).unwrap();
    let mut out = Vec::new();
    while let Some(e) = r.next_entry() {
        match e {
            Ok((_, rec)) => out.push(rec),
            Err(_) => break,
        }
    }
    (out, r.end().clone())
}

#[test]
fn round_trip_and_seal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.1.hrl");
    let v = sample_log(&p, 1, [0; 32]);
    assert_eq!(v.seal.records, 7);
    assert_eq!(v.seal.payload_bytes, 5011);
    let (recs, end) = records(&p);
    assert_eq!(recs.len(), 8);
    assert_eq!(
        recs[0],
        Record::Write {
            offset: 4096,
            data: vec![0xab; 5000]
        }
    );
    assert_eq!(
        recs[6],
        Record::Rename {
            name: "new.img".into()
        }
    );
    assert!(matches!(end, LogEnd::Sealed { .. }));
    assert_eq!(v.header.state, LogState::Sealed);
}

#[test]
fn torn_tail_at_every_offset_yields_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("full.hrl");
    sample_log(&p, 1, [0; 32]);
    let bytes = std::fs::read(&p).unwrap();
    let (all, _) = records(&p);
    // Byte offsets where each record ends.
    let mut ends = vec![];
    let mut r = LogReader::open(&p).unwrap();
    while let Some(Ok((meta, rec))) = r.next_entry() {
        let plen = match &rec {
            Record::Write { data, .. } => data.len(),
            Record::Rename { name } => name.len(),
            Record::Seal(_) => 32,
            _ => 0,
        };
        ends.push(meta.offset + RECORD_HEADER_LEN + plen as u64);
    }
    let cut_path = dir.path().join("cut.hrl");
    for cut in HEADER_LEN as usize..bytes.len() {
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let (got, end) = records(&cut_path);
        let complete = ends.iter().filter(|&&e| e <= cut as u64).count();
        assert_eq!(got.len(), complete, "cut at {cut}");
        assert_eq!(&got[..], &all[..complete]);
        let expected_end = ends
            .iter()
            .copied()
            .filter(|&e| e <= cut as u64)
            .max()
            .unwrap_or(HEADER_LEN);
        match end {
            LogEnd::Torn { offset, .. } => assert_eq!(offset, expected_end, "cut at {cut}"),
            LogEnd::Clean { offset } => assert_eq!(offset as usize, cut),
            LogEnd::Sealed { .. } => panic!("a cut log cannot be sealed"),
        }
        let err = verify_sealed(&cut_path, None).unwrap_err();
        assert!(
            matches!(err, LogError::NotSealed { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn every_bit_flip_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("full.hrl");
    let mut w = LogWriter::create(&p, &header(1, [0; 32])).unwrap();
    w.append_write(0, b"abcdefgh").unwrap();
    w.append_truncate(77).unwrap();
    w.seal().unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let f = dir.path().join("flipped.hrl");
    // Header bytes that are checksummed, then every bit of every record.
    let positions = (0..300usize)
        .chain(4000..4096)
        .chain(HEADER_LEN as usize..bytes.len());
    for byte in positions {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[byte] ^= 1 << bit;
            std::fs::write(&f, &b).unwrap();
            assert!(
                verify_sealed(&f, None).is_err(),
                "flip of bit {bit} in byte {byte} went unnoticed"
            );
        }
    }
}

#[test]
fn chain_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let l1 = dir.path().join("d.1.hrl");
    let l2 = dir.path().join("d.2.hrl");
    let l3 = dir.path().join("d.3.hrl");
    let v1 = sample_log(&l1, 1, [0; 32]);
    let v2 = sample_log(&l2, 2, v1.chain_hash());
    sample_log(&l3, 3, v2.chain_hash());
    let img = dir.path().join("img");
    apply_logs(&[&l1, &l2, &l3], &img).unwrap();

    let e = apply_logs(&[&l1, &l3], &dir.path().join("x")).unwrap_err();
    assert!(matches!(e, LogError::ChainBroken { .. }), "{e}");
    let e = apply_logs(&[&l2, &l1], &dir.path().join("y")).unwrap_err();
    assert!(matches!(e, LogError::ChainBroken { .. }), "{e}");
    assert!(
        !dir.path().join("x").exists()
            || std::fs::metadata(dir.path().join("x")).unwrap().len() == 0
    );
    // The first log must follow the given previous hash.
    let e = apply_logs_after(&[&l2], &dir.path().join("z"), Some(&[1; 32])).unwrap_err();
    assert!(matches!(e, LogError::ChainBroken { .. }), "{e}");
}

#[test]
fn reopen_cuts_torn_tail_and_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.hrl");
    let mut w = LogWriter::create(&p, &header(5, [3; 32])).unwrap();
    w.append_write(0, b"kept").unwrap();
    w.append_write(100, b"torn").unwrap();
    drop(w);
    let len = std::fs::metadata(&p).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(len - 2).unwrap();
    let (mut w, rec) = LogWriter::open_append(&p).unwrap();
    assert_eq!(rec.records, 1);
    assert_eq!(rec.torn_at, Some(HEADER_LEN + RECORD_HEADER_LEN + 4));
    assert!(!rec.was_clean);
    w.append_write(8, b"after").unwrap();
    w.close_clean().unwrap();
    let (w, rec) = LogWriter::open_append(&p).unwrap();
    assert!(rec.was_clean);
    assert_eq!(rec.torn_at, None);
    w.seal().unwrap();
    let (recs, _) = records(&p);
    assert_eq!(
        recs[0],
        Record::Write {
            offset: 0,
            data: b"kept".to_vec()
        }
    );
    assert_eq!(
        recs[1],
        Record::Write {
            offset: 8,
            data: b"after".to_vec()
        }
    );
    assert!(matches!(
        LogWriter::open_append(&p),
        Err(LogError::AlreadySealed { .. })
    ));
}

#[test]
fn seal_hash_preview_matches_seal() {
    let dir = tempfile::tempdir().unwrap();
    let p: PathBuf = dir.path().join("a.hrl");
    let mut w = LogWriter::create(&p, &header(1, [0; 32])).unwrap();
    w.append_write(0, b"x").unwrap();
    let preview = w.seal_hash();
    assert_eq!(w.seal().unwrap().hash, preview);
}

#[test]
fn a_sync_writes_zeros_ahead_that_a_reopen_cuts_as_no_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.hrl");
    let mut w = LogWriter::create(&p, &header(1, [0; 32])).unwrap();
    w.append_write(0, b"synced").unwrap();
    w.append_flush().unwrap();
    w.sync().unwrap();
    let len = w.len();
    let file_len = std::fs::metadata(&p).unwrap().len();
    assert!(
        file_len >= len + super::commit::PREFILL_LOW,
        "zeros ahead: file {file_len}, log {len}"
    );
    // Appends after the sync go into the zeros; the file does not grow.
    w.append_write(4096, &[7; 4096]).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), file_len);
    let len = w.len();
    // The tracker is killed here: the log ends in zeros.
    drop(w);
    let (w, rec) = LogWriter::open_append(&p).unwrap();
    assert_eq!(rec.torn_at, None, "zeros ahead are no torn tail");
    assert_eq!(rec.records, 3);
    assert_eq!(w.len(), len);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), len, "zeros cut");
    drop(w);
}

#[test]
fn a_record_torn_over_the_zeros_ahead_is_still_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.hrl");
    let mut w = LogWriter::create(&p, &header(1, [0; 32])).unwrap();
    w.append_write(0, b"kept").unwrap();
    w.sync().unwrap();
    let torn_at = w.len();
    drop(w);
    // Half a record header where the zeros were.
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[1, 2, 3, 4, 5], torn_at + 9).unwrap();
    let (_, rec) = LogWriter::open_append(&p).unwrap();
    assert_eq!(rec.torn_at, Some(torn_at));
    assert_eq!(rec.records, 1);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), torn_at);
}

#[test]
fn seal_and_clean_close_leave_no_zeros_behind() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.hrl");
    let mut w = LogWriter::create(&p, &header(1, [0; 32])).unwrap();
    w.append_write(0, b"one").unwrap();
    w.sync().unwrap();
    w.append_write(3, b"two").unwrap();
    let len = w.len();
    w.close_clean().unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().len(), len);
    let (mut w, rec) = LogWriter::open_append(&p).unwrap();
    assert!(rec.was_clean && rec.torn_at.is_none());
    w.append_write(6, b"three").unwrap();
    w.sync().unwrap();
    w.seal().unwrap();
    let v = verify_sealed(&p, None).unwrap();
    assert_eq!(v.seal.records, 3);
    assert_eq!(v.file_len, std::fs::metadata(&p).unwrap().len());
}

/// Many writers append under one lock (as the tracker's disk lock orders them) and wait for
/// their sync points without it: every record a writer saw acknowledged is in the log, in
/// order, and the log stays valid.
#[test]
fn concurrent_sync_points_cover_every_acknowledged_record() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.img.hrl");
    let w = Arc::new(Mutex::new(
        LogWriter::create(&p, &header(1, [0; 32])).unwrap(),
    ));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let point = {
                        let mut w = w.lock().unwrap();
                        w.append_write((t * 50 + i) * 8, &(t * 1000 + i).to_le_bytes())
                            .unwrap();
                        w.append_flush().unwrap();
                        w.sync_point()
                    };
                    point.wait().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let w = Arc::into_inner(w).unwrap().into_inner().unwrap();
    w.seal().unwrap();
    let (recs, end) = records(&p);
    assert!(matches!(end, LogEnd::Sealed { .. }));
    let writes: Vec<_> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Write { offset, data } => Some((*offset, data.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(writes.len(), 400);
    for t in 0..8u64 {
        let mine: Vec<u64> = writes
            .iter()
            .filter(|(off, _)| off / 8 / 50 == t)
            .map(|(_, d)| u64::from_le_bytes(d[..8].try_into().unwrap()))
            .collect();
        let want: Vec<u64> = (0..50).map(|i| t * 1000 + i).collect();
        assert_eq!(mine, want, "writer {t}'s records in its order");
    }
}
