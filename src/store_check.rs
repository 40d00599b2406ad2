//! Validation of what a store says before anything acts on it. Whoever can write to a bucket
//! (a leaked credential, a shared bucket, a compromised replica site) controls every byte of
//! a manifest; restore runs as root and turns names into files and sizes into allocations.
//! So every name, key, size and count decoded from the store is checked here, once, where the
//! manifest is decoded (docs/SECURITY.md).

use crate::store::{DiskEntry, PointManifest, StoreFormatError};

/// Longest disk file name accepted (the Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Largest disk a manifest may describe: 1 PiB.
pub const MAX_DISK_SIZE: u64 = 1 << 50;
/// Most blocks one chunk index may hold (4 GiB of digests).
pub const MAX_INDEX_BLOCKS: u64 = 1 << 27;
/// Most disks in one recovery point.
pub const MAX_DISKS: usize = 65_536;
/// Longest host name or store key accepted.
const MAX_TEXT_LEN: usize = 1024;

fn unsafe_field(what: String) -> StoreFormatError {
    StoreFormatError::Unsafe(what)
}

/// Checks that `name` is one plain path component that can be created beneath a directory:
/// not empty, not `.` or `..`, no `/`, no NUL, at most [`MAX_NAME_LEN`] bytes. (Control
/// characters are legal in file names, so a real disk may have them; output escapes them.)
pub fn check_disk_name(name: &str) -> Result<(), StoreFormatError> {
    let bad = |why: &str| unsafe_field(format!("disk name {name:?} {why}"));
    if name.is_empty() || name == "." || name == ".." {
        return Err(bad("is not a file name"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("is longer than 255 bytes"));
    }
    if name.contains('/') {
        return Err(bad("contains '/' (a disk name is one path component)"));
    }
    if name.contains('\0') {
        return Err(bad("contains NUL"));
    }
    Ok(())
}

fn check_hex(field: &str, value: &str, digits: usize) -> Result<(), StoreFormatError> {
    if value.len() == digits && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(unsafe_field(format!(
            "{field} {value:?} is not {digits} hex digits"
        )))
    }
}

/// A base index key must be a plain relative key inside the disk's own folder.
fn check_index_key(d: &DiskEntry) -> Result<(), StoreFormatError> {
    let key = &d.base.index_key;
    let inside = key.len() <= MAX_TEXT_LEN
        && key.starts_with(&format!("disks/{}/", d.disk_id))
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if inside {
        Ok(())
    } else {
        Err(unsafe_field(format!(
            "index key {key:?} of disk {:?} is not a key inside the disk's folder",
            d.name
        )))
    }
}

fn check_disk(d: &DiskEntry) -> Result<(), StoreFormatError> {
    check_disk_name(&d.name)?;
    check_hex("disk id", &d.disk_id, 32)?;
    check_hex("index hash", &d.base.index_hash, 64)?;
    check_hex("chain hash", &d.base.after_chain_hash, 64)?;
    check_hex("chain hash", &d.last_chain_hash, 64)?;
    check_index_key(d)?;
    crate::chunk::check_block_size(d.base.block_size)
        .map_err(|e| unsafe_field(format!("disk {:?}: {e}", d.name)))?;
    if d.disk_size > MAX_DISK_SIZE {
        return Err(unsafe_field(format!(
            "disk {:?} is {} bytes, more than the 1 PiB limit",
            d.name, d.disk_size
        )));
    }
    if d.disk_size.div_ceil(u64::from(d.base.block_size)) > MAX_INDEX_BLOCKS {
        return Err(unsafe_field(format!(
            "disk {:?} would need more than {MAX_INDEX_BLOCKS} index blocks",
            d.name
        )));
    }
    if d.last_seq < d.base.after_seq {
        return Err(unsafe_field(format!(
            "disk {:?} ends at log {} before its base (after log {})",
            d.name, d.last_seq, d.base.after_seq
        )));
    }
    Ok(())
}

/// Checks every field of a decoded manifest that restore, verify or a cycle acts on.
pub fn check_manifest(m: &PointManifest) -> Result<(), StoreFormatError> {
    if m.host.len() > MAX_TEXT_LEN {
        return Err(unsafe_field("host name is longer than 1024 bytes".into()));
    }
    if m.disks.len() > MAX_DISKS {
        return Err(unsafe_field(format!(
            "{} disks is more than the {MAX_DISKS} allowed",
            m.disks.len()
        )));
    }
    let mut names = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for d in &m.disks {
        check_disk(d)?;
        if !names.insert(d.name.as_str()) || !ids.insert(d.disk_id.to_ascii_lowercase()) {
            return Err(unsafe_field(format!(
                "disk {:?} appears twice in the point",
                d.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_names_are_one_plain_component() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/../../tmp/x/pwned.img",
            "a\0b",
            &"x".repeat(256),
        ] {
            assert!(check_disk_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "d.img",
            "..d.img",
            "disk 0.vhdx",
            "a\x1b[31mb",
            &"x".repeat(255),
        ] {
            assert!(check_disk_name(good).is_ok(), "{good:?} refused");
        }
    }
}
