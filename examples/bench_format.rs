//! Benchmark of the format layer (run by scripts/bench-format): log append throughput for
//! 4 KiB and 1 MiB records into a file in the page cache, and blake3 chunk hashing of a
//! 1 GiB file, on one core and on all cores. Prints a table; asserts nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hrl::chunk::{block_digest, hash_file};
use hrl::log::{LogHeader, LogWriter};

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn append(dir: &Path, record: usize, total: u64) -> f64 {
    let path = dir.join(format!("bench-{record}.hrl"));
    let _ = std::fs::remove_file(&path);
    let data: Vec<u8> = (0..record).map(|i| (i * 31 % 251) as u8).collect();
    let mut w = LogWriter::create(&path, &LogHeader::new([1; 16], 1, 1, 1 << 40, [0; 32]))
        .expect("create log");
    let n = total / record as u64;
    let t = Instant::now();
    for i in 0..n {
        w.append_write(i * record as u64, &data).expect("append");
    }
    let secs = t.elapsed().as_secs_f64();
    drop(w);
    let _ = std::fs::remove_file(&path);
    gbps(n * record as u64, secs)
}

/// The same bytes written with plain positioned writes: what the page cache itself allows.
fn plain_writes(dir: &Path, record: usize, total: u64) -> f64 {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!("bench-plain-{record}"));
    let _ = std::fs::remove_file(&path);
    let data: Vec<u8> = (0..record).map(|i| (i * 31 % 251) as u8).collect();
    let f = std::fs::File::create(&path).expect("create file");
    let n = total / record as u64;
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&data, i * record as u64).expect("write");
    }
    let secs = t.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    gbps(n * record as u64, secs)
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm"));
    println!(
        "hrl format benchmark in {} ({} cores)",
        dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<44} {:>10}", "case", "GB/s");
    // Warm up the page cache and the allocator once.
    append(&dir, 1 << 20, 256 << 20);
    for (label, record, total) in [
        ("4 KiB", 4096usize, 1u64 << 30),
        ("1 MiB", 1 << 20, 2 << 30),
    ] {
        let plain = plain_writes(&dir, record, total);
        let log = append(&dir, record, total);
        println!(
            "{:<44} {:>10.2}",
            format!("plain pwrite, {label} writes"),
            plain
        );
        println!(
            "{:<44} {:>10.2}   ({:.2}x plain)",
            format!("log append, {label} records"),
            log,
            log / plain
        );
    }

    let img = dir.join("bench-1g.img");
    {
        let mut f = std::fs::File::create(&img).expect("create image");
        let mut block: Vec<u8> = (0..(1 << 20))
            .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for i in 0..1024u32 {
            block[..4].copy_from_slice(&i.to_le_bytes());
            f.write_all(&block).expect("write image");
        }
    }
    let data = std::fs::read(&img).expect("read image");
    let t = Instant::now();
    let mut sink = 0u8;
    for b in data.chunks(64 << 10) {
        sink ^= block_digest(b)[0];
    }
    let one = gbps(data.len() as u64, t.elapsed().as_secs_f64());
    println!(
        "{:<44} {:>10.2}   (digest byte {sink})",
        "blake3 64 KiB blocks, 1 core, in memory", one
    );
    drop(data);
    for bs in [64 << 10, 1 << 20] {
        let t = Instant::now();
        let idx = hash_file(&img, bs).expect("hash file");
        let all = gbps(idx.disk_size, t.elapsed().as_secs_f64());
        println!(
            "{:<44} {:>10.2}",
            format!("hash_file 1 GiB, {} KiB blocks, all cores", bs >> 10),
            all
        );
    }
    let _ = std::fs::remove_file(&img);
}
