//! Fuzzes the decoders of what a store holds: recovery-point manifests and chunk indexes.
//! The store is not trusted (docs/SECURITY.md), so checked: no panic, no unbounded
//! allocation; an accepted manifest has only safe disk names and keys and round-trips; an
//! accepted index is consistent and round-trips. Random bytes rarely get past JSON parsing or
//! the index checksum, so most inputs fill a valid manifest's fields or build a valid index
//! that is then damaged where the input says.
#![no_main]

use hrl::chunk::ChunkIndex;
use hrl::store::PointManifest;
use hrl::store_check::{check_disk_name, MAX_DISK_SIZE};
use libfuzzer_sys::fuzz_target;

#[path = "damage.rs"]
mod damage;
use damage::{damage, u64_from};


/// A manifest whose first disk's name, index key and sizes come from the input.
fn templated(data: &[u8]) -> Vec<u8> {
    let (nums, rest) = data.split_at(data.len().min(16));
    let text = String::from_utf8_lossy(rest);
    let (name, key) = text.split_once('|').unwrap_or((&text, "base.idx"));
    let id = "ab".repeat(16);
    let h = "00".repeat(32);
    let v = serde_json::json!({
        "version": 1, "id": 1, "time_ns": 1, "seal_id": 1, "committed_ns": 1, "host": "h",
        "disks": [{
            "name": name, "disk_id": id, "generation": 1,
            "disk_size": u64_from(nums),
            "base": {"index_key": format!("disks/{id}/{key}"), "index_hash": h,
                     "block_size": 1u32 << (u64_from(&nums[nums.len().min(8)..]) % 32),
                     "after_seq": 0, "after_chain_hash": h},
            "last_seq": 0, "last_chain_hash": h
        }]
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn check_manifest(bytes: &[u8]) {
    let Ok(m) = PointManifest::from_json(bytes) else {
        return;
    };
    for d in &m.disks {
        assert!(check_disk_name(&d.name).is_ok(), "unsafe name accepted");
        assert!(!d.name.contains('/') && d.name != ".." && d.name != ".");
        assert!(d.disk_size <= MAX_DISK_SIZE);
        assert!(!d.base.index_key.split('/').any(|p| p == ".." || p.is_empty()));
    }
    assert_eq!(PointManifest::from_json(&m.to_json()).ok(), Some(m));
}

fn check_index(bytes: &[u8]) {
    let Ok(idx) = ChunkIndex::decode(bytes) else {
        return;
    };
    assert_eq!(
        idx.digests.len() as u64,
        ChunkIndex::block_count(idx.disk_size, idx.block_size)
    );
    assert_eq!(ChunkIndex::decode(&idx.encode()).ok(), Some(idx));
}

/// A valid index built from the input, then cut or bit-flipped where it says.
fn damaged_index(data: &[u8]) -> Vec<u8> {
    let (ctl, rest) = data.split_at(data.len().min(8));
    let blocks = rest.len() / 8 % 64;
    let idx = ChunkIndex {
        block_size: 4096,
        disk_size: blocks as u64 * 4096 - (u64_from(ctl) % 4096).min(blocks as u64 * 4096),
        digests: rest
            .chunks(8)
            .take(blocks)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect(),
    };
    let mut bytes = idx.encode();
    damage(&mut bytes, ctl);
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => check_manifest(rest),
        1 => check_manifest(&templated(rest)),
        2 => check_index(rest),
        _ => check_index(&damaged_index(rest)),
    }
});
