//! Fuzzes the .hrl reader. Random bytes rarely get past the header checksum, so most inputs
//! are turned into a valid log first (ops decoded from the input), then damaged where the
//! input says (a cut, a flipped bit) before reading. Checked: no panic; only verified records
//! come out; a log that verifies as sealed replays, and so does its coalesced form, to the
//! same image.
#![no_main]

use hrl::log::{apply_logs, coalesce, verify_sealed, LogHeader, LogReader, LogWriter};
use libfuzzer_sys::fuzz_target;

#[path = "damage.rs"]
mod damage;
use damage::{damage, u64_from};

fn scratch() -> std::path::PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    std::path::PathBuf::from(format!("{base}/hrl-fuzz-{}", std::process::id()))
}


/// Builds a sealed log from the input: each 8-byte group is one op.
fn build(path: &std::path::Path, ops: &[u8]) {
    let _ = std::fs::remove_file(path);
    let Ok(mut w) = LogWriter::create(path, &LogHeader::new([1; 16], 1, 1, 1 << 16, [0; 32]))
    else {
        return;
    };
    for op in ops.chunks(8) {
        let v = u64_from(op);
        let off = (v >> 8) % (1 << 16);
        let len = (v >> 32) % 5000 + 1;
        let _ = match op[0] % 6 {
            0 | 1 => w.append_write(off, &vec![op[0]; len as usize]),
            2 => w.append_truncate(off),
            3 => w.append_zero(off, len),
            4 => w.append_punch(off, len),
            _ => w.append_flush(),
        };
    }
    let _ = w.seal();
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let dir = scratch();
    let _ = std::fs::create_dir_all(&dir);
    let log = dir.join("in.hrl");
    if data[0] & 1 == 0 {
        // Raw bytes as a whole file.
        let _ = std::fs::write(&log, &data[1..]);
    } else {
        // A valid log, then damaged: data[1..9] picks the damage, the rest are ops.
        let (ctl, ops) = data[1..].split_at(data.len().saturating_sub(1).min(8));
        build(&log, ops);
        if let Ok(mut bytes) = std::fs::read(&log) {
            damage(&mut bytes, ctl);
            let _ = std::fs::write(&log, &bytes);
        }
    }
    if let Ok(reader) = LogReader::open(&log) {
        for record in reader {
            if record.is_err() {
                break;
            }
        }
    }
    if verify_sealed(&log, None).is_ok() {
        let a = dir.join("a.img");
        let b = dir.join("b.img");
        let merged = dir.join("merged.hrl");
        for p in [&a, &b, &merged] {
            let _ = std::fs::remove_file(p);
        }
        apply_logs(&[&log], &a).expect("a verified log must apply");
        coalesce(&[&log], &merged).expect("a verified log must coalesce");
        apply_logs(&[&merged], &b).expect("a coalesced log must apply");
        assert_eq!(
            std::fs::read(&a).ok(),
            std::fs::read(&b).ok(),
            "coalesced log replays differently"
        );
    }
});
