//! The marker of a prepared failover, `DIR/.hrl-prepared.json`: per disk, the point its
//! hidden file `.<disk id>.hrl-prepared` holds (disk id, generation, last sequence, chain
//! hash, size) and the file's stamp when that was written. A later pass fetches only the
//! logs after that point, so an entry must never claim what the file does not hold: each one
//! is authenticated (keyed blake3 under `$HRL_STATE_DIR/prepare.key`, over the group, the
//! store and the entry), and counts only when it authenticates, names this group and store,
//! and the file's stamp (device, inode, size, mtime, ctime) is unchanged. Anything else (an
//! edited, cut or foreign marker, a file written since) is ignored: the disk falls back to
//! the blake3 delta. An entry is removed durably before its file changes and written after.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The marker's file name in the directory.
pub const MARKER: &str = ".hrl-prepared.json";
/// The key's file name in the state directory.
pub const KEY_FILE: &str = "prepare.key";
const VERSION: u32 = 1;
/// Domain separation of the MAC input.
const CONTEXT: &str = "hrl prepared failover marker v1";

/// The hidden name a disk is prepared under.
pub fn prepared_name(disk_id: &str) -> String {
    format!(".{disk_id}.hrl-prepared")
}

/// Whether `name` is a prepared disk's hidden name (of any disk).
pub fn is_prepared_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".hrl-prepared"))
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What identifies a file's contents as unchanged since the entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of(path: &Path) -> Result<Stamp> {
        let md =
            std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Ok(Stamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            ctime_ns: ns(md.ctime(), md.ctime_nsec()),
        })
    }
}

/// One disk's prepared state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub point: u64,
    pub disk_id: String,
    pub generation: u64,
    pub last_seq: u64,
    pub chain_hash: String,
    pub size: u64,
    pub stamp: Stamp,
    /// Hex keyed blake3 of the group, the store and the fields above.
    #[serde(default)]
    pub mac: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    group: String,
    store: String,
    disks: Vec<Entry>,
}

/// The marker of one directory, for one group and store, with the key that signs it.
pub struct Marker {
    dir: PathBuf,
    group: String,
    store: String,
    state_dir: PathBuf,
    /// Read (or made) when first needed: a directory without a marker needs none.
    key: Option<[u8; 32]>,
    /// The entries that authenticate (the others are dropped at the next write).
    trusted: Vec<Entry>,
}

/// A store named the same however it was given (a path and its file:// URL alike).
pub fn store_identity(url: &str) -> String {
    let u = url.trim();
    let u = u.strip_prefix("file://").unwrap_or(u);
    u.trim_end_matches('/').to_string()
}

impl Marker {
    /// Reads `dir`'s marker (absent, unreadable or cut: no entries) with the key in
    /// `state_dir` (created 0600 if absent, once an entry is to be checked or written).
    pub fn load(dir: &Path, group: &str, store_url: &str, state_dir: &Path) -> Result<Marker> {
        let mut m = Marker {
            dir: dir.to_path_buf(),
            group: group.to_string(),
            store: store_identity(store_url),
            state_dir: state_dir.to_path_buf(),
            key: None,
            trusted: Vec::new(),
        };
        let path = dir.join(MARKER);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let file: File = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(marker = %path.display(), "the prepare marker does not parse ({e}); every disk falls back to the delta");
                return Ok(m);
            }
        };
        if file.version != VERSION || file.group != m.group || file.store != m.store {
            tracing::warn!(marker = %path.display(), group = %file.group, store = %file.store, "the prepare marker names another group or store; every disk falls back to the delta");
            return Ok(m);
        }
        m.key = Some(load_key(state_dir)?);
        for e in file.disks {
            // blake3::Hash compares in constant time.
            let given = blake3::Hash::from_hex(&e.mac).ok();
            if given.is_some() && m.mac(&e) == given {
                m.trusted.push(e);
            } else {
                tracing::warn!(disk_id = %e.disk_id, "a prepare marker entry does not authenticate; that disk falls back to the delta");
            }
        }
        Ok(m)
    }

    /// The entry of `disk_id` if it authenticates and its file is unchanged since.
    pub fn trusted(&self, disk_id: &str) -> Option<&Entry> {
        let e = self.trusted.iter().find(|e| e.disk_id == disk_id)?;
        let path = self.dir.join(prepared_name(disk_id));
        match Stamp::of(&path) {
            Ok(s) if s == e.stamp && s.size == e.size => Some(e),
            _ => {
                tracing::warn!(
                    disk_id,
                    "the prepared disk changed since its prepare; it falls back to the delta"
                );
                None
            }
        }
    }

    /// Removes `disk_id`'s entry, durably (before its file changes).
    pub fn forget(&mut self, disk_id: &str) -> Result<()> {
        let before = self.trusted.len();
        self.trusted.retain(|e| e.disk_id != disk_id);
        if before == self.trusted.len() && !self.dir.join(MARKER).exists() {
            return Ok(());
        }
        self.write()
    }

    /// Records that `disk_id`'s hidden file now holds `e`'s state (after it was synced).
    pub fn record(&mut self, point: u64, e: &hrl::store::DiskEntry) -> Result<()> {
        let path = self.dir.join(prepared_name(&e.disk_id));
        let stamp = Stamp::of(&path)?;
        let mut entry = Entry {
            point,
            disk_id: e.disk_id.clone(),
            generation: e.generation,
            last_seq: e.last_seq,
            chain_hash: e.last_chain_hash.clone(),
            size: stamp.size,
            stamp,
            mac: String::new(),
        };
        if self.key.is_none() {
            self.key = Some(load_key(&self.state_dir)?);
        }
        entry.mac = self
            .mac(&entry)
            .map(|h| h.to_hex().to_string())
            .unwrap_or_default();
        self.trusted.retain(|x| x.disk_id != e.disk_id);
        self.trusted.push(entry);
        self.write()
    }

    /// Removes the marker (the prepared disks got their final names).
    pub fn remove(self) -> Result<()> {
        let path = self.dir.join(MARKER);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }

    /// The entry's MAC (None without a key).
    fn mac(&self, e: &Entry) -> Option<blake3::Hash> {
        let input = serde_json::json!([
            CONTEXT,
            self.group,
            self.store,
            e.point,
            e.disk_id,
            e.generation,
            e.last_seq,
            e.chain_hash,
            e.size,
            e.stamp,
        ]);
        let bytes = serde_json::to_vec(&input).unwrap_or_default();
        self.key.as_ref().map(|k| blake3::keyed_hash(k, &bytes))
    }

    /// Writes the marker whole (temporary file, fsync, rename, fsync of the directory).
    fn write(&self) -> Result<()> {
        let file = File {
            version: VERSION,
            group: self.group.clone(),
            store: self.store.clone(),
            disks: self.trusted.clone(),
        };
        let path = self.dir.join(MARKER);
        let tmp = self.dir.join(format!("{MARKER}.tmp"));
        let bytes = serde_json::to_vec_pretty(&file).context("encode the prepare marker")?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        sync_dir(&self.dir)
    }
}

/// Makes the directory's entries (renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))
}

/// The key of this state directory's markers: 32 random bytes, created 0600 if absent.
fn load_key(state_dir: &Path) -> Result<[u8; 32]> {
    use std::io::Read;
    let path = state_dir.join(KEY_FILE);
    let read = |path: &Path| -> Result<[u8; 32]> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(k) => Ok(k),
            Err(_) => bail!(
                "{} is not a prepare key ({} bytes, not 32); remove it (a new one is made, and the disks prepared under the old one fall back to the delta)",
                path.display(),
                bytes.len()
            ),
        }
    };
    if path.exists() {
        return read(&path);
    }
    crate::private::create_dir(state_dir)
        .with_context(|| format!("create {}", state_dir.display()))?;
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .context("read random bytes for the prepare key")?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("write {}", path.display()))?;
            sync_dir(state_dir)?;
            Ok(key)
        }
        // Another run made it meanwhile.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(e).with_context(|| format!("create {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepared_names() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_prepared_name(&prepared_name(id)));
        assert!(!is_prepared_name(".x.hrl-prepared"));
        assert!(!is_prepared_name("disk.img"));
    }
}
