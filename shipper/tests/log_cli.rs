//! The `hrl-shipper log …` tools, run as a user would run them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hrl::log::{verify_sealed, LogHeader, LogWriter};

fn shipper(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hrl-shipper"))
        .args(args)
        .output()
        .expect("run hrl-shipper")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Three chained logs of one disk: returns their paths.
fn chain(dir: &Path) -> Vec<PathBuf> {
    let mut prev = [0u8; 32];
    let mut out = vec![];
    for seq in 1..=3u64 {
        let p = dir.join(format!("disk.img.{seq}.hrl"));
        let mut w = LogWriter::create(&p, &LogHeader::new([4; 16], 1, seq, 1 << 20, prev)).unwrap();
        w.append_write(seq * 1000, format!("log {seq}").as_bytes())
            .unwrap();
        w.append_truncate(200_000 + seq).unwrap();
        w.seal().unwrap();
        prev = verify_sealed(&p, None).unwrap().chain_hash();
        out.push(p);
    }
    out
}

#[test]
fn inspect_verify_apply() {
    let dir = tempfile::tempdir().unwrap();
    let logs = chain(dir.path());

    let o = shipper(&["log", "inspect", "--json", &s(&logs[1])]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sequence"], 2);
    assert_eq!(v["records"], 2);
    assert_eq!(v["end"], "sealed");
    assert_eq!(v["counts"]["write_bytes"], 5);

    let o = shipper(&["log", "verify", &s(&logs[0])]);
    assert!(o.status.success(), "{}", text(&o));
    let first_hash = verify_sealed(&logs[0], None).unwrap().chain_hash();
    let hex = hrl::to_hex(&first_hash);
    let o = shipper(&["log", "verify", &s(&logs[1]), "--prev-hash", &hex]);
    assert!(o.status.success(), "{}", text(&o));
    let o = shipper(&["log", "verify", &s(&logs[2]), "--prev-hash", &hex]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken chain"), "{}", text(&o));

    // Out of order or with a gap: refused, and the image is left as it was.
    let img = dir.path().join("disk.img");
    std::fs::write(&img, b"untouched").unwrap();
    let o = shipper(&["log", "apply", &s(&logs[0]), &s(&logs[2]), "--to", &s(&img)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("broken chain"), "{}", text(&o));
    assert_eq!(std::fs::read(&img).unwrap(), b"untouched");
    let o = shipper(&["log", "apply", &s(&logs[1]), &s(&logs[0]), "--to", &s(&img)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(std::fs::read(&img).unwrap(), b"untouched");

    let o = shipper(&[
        "log",
        "apply",
        &s(&logs[0]),
        &s(&logs[1]),
        &s(&logs[2]),
        "--to",
        &s(&img),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let got = std::fs::read(&img).unwrap();
    assert_eq!(got.len(), 200_003);
    assert_eq!(&got[..9], b"untouched");
    assert_eq!(&got[1000..1005], b"log 1");
    assert_eq!(&got[3000..3005], b"log 3");
}

#[test]
fn corrupt_and_truncated_logs_name_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let logs = chain(dir.path());
    let mut bytes = std::fs::read(&logs[0]).unwrap();
    bytes[4096 + 64 + 2] ^= 0x10; // inside the first record's payload
    let bad = dir.path().join("bad.hrl");
    std::fs::write(&bad, &bytes).unwrap();
    let o = shipper(&["log", "verify", &s(&bad)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("at byte 4096"), "{}", text(&o));
    assert!(text(&o).contains("checksum"), "{}", text(&o));

    let cut = dir.path().join("cut.hrl");
    std::fs::write(&cut, &std::fs::read(&logs[0]).unwrap()[..4096 + 60]).unwrap();
    let o = shipper(&["log", "verify", &s(&cut)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("not sealed"), "{}", text(&o));
    let o = shipper(&["log", "inspect", &s(&cut)]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("torn at byte 4096"), "{}", text(&o));

    let o = shipper(&["log", "verify", "/nonexistent/x.hrl"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/x.hrl"), "{}", text(&o));
    let o = shipper(&["log", "verify", &s(&logs[0]), "--prev-hash", "xyz"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("64 hex digits"), "{}", text(&o));
}
