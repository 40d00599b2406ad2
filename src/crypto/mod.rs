//! Client-side encryption at rest (docs/encryption.md): the store learns nothing of the
//! disks and cannot confirm that a known block is present.
//!
//! - [`keyfile`]: the master key and its file (plain, or wrapped by a passphrase with
//!   argon2id);
//! - [`GroupCrypto`]: the keys of one group, derived from the master key and the group's
//!   name — keyed chunk names, the sealing of every object, and the key-check value the
//!   group's record holds so a wrong key is refused before anything is written or restored;
//! - [`record`]: the group's plain `encryption.json` (encrypted, how, the key's check value);
//! - [`envelope`]: the sealed-object format (XChaCha20-Poly1305 in 1 MiB segments, bound to
//!   the group, the object's key, its kind and the format version).
//!
//! The store layer compresses, then seals; opens, then decompresses and checks the chunk's
//! name against [`GroupCrypto::chunk_name`] of the plaintext.

pub mod envelope;
mod error;
pub mod keyfile;
pub mod record;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};

use chacha20poly1305::{KeyInit, XChaCha20Poly1305};
use zeroize::Zeroizing;

use crate::chunk::{is_zero, ZERO_DIGEST};
use crate::Digest;

pub use envelope::{OpenReader, SealWriter};
pub use error::{CryptoError, KeyFileError};
pub use keyfile::{KdfParams, MasterKey, Protection};
pub use record::{EncryptionRecord, RECORD_KEY};

/// blake3 `derive_key` contexts, one per purpose (never reused for another).
const CONTEXT_CHUNK_NAMES: &str = "hrl 2026-12-02 group chunk-name key v1";
const CONTEXT_SEALING: &str = "hrl 2026-12-02 group object-sealing key v1";
const CONTEXT_CHECK: &str = "hrl 2026-12-02 group key-check key v1";
/// The fixed label whose keyed hash is the key-check value.
const CHECK_LABEL: &[u8] = b"hrl key check value v1";

/// What an object is; sealed into its envelope and its associated data, so one kind of
/// object is never accepted as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    /// One compressed block (`chunks/…`).
    Chunk = 1,
    /// A base copy's chunk index (`…/base.idx`).
    BaseIndex = 2,
    /// A compressed, coalesced log (`…/logs/…`).
    Log = 3,
    /// A recovery-point manifest (`points/…`).
    Manifest = 4,
    /// The group's owner record (`owner.json`).
    Owner = 5,
    /// A lease on a point (`leases/…`).
    Lease = 6,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 6] = [
        ObjectKind::Chunk,
        ObjectKind::BaseIndex,
        ObjectKind::Log,
        ObjectKind::Manifest,
        ObjectKind::Owner,
        ObjectKind::Lease,
    ];

    pub fn from_byte(b: u8) -> Option<ObjectKind> {
        ObjectKind::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The kind of the object stored at `key` (relative to the group, as
    /// [`crate::store`] names them); `None` for a key of no sealed kind (the plain
    /// [`RECORD_KEY`], or a key this version does not know: never sealed as a guess).
    pub fn of_key(key: &str) -> Option<ObjectKind> {
        if key.starts_with("chunks/") {
            Some(ObjectKind::Chunk)
        } else if key.starts_with("points/") && key.ends_with(".json") {
            Some(ObjectKind::Manifest)
        } else if key == "owner.json" || (key.starts_with("owner/") && key.ends_with(".json")) {
            Some(ObjectKind::Owner)
        } else if key.starts_with("leases/") {
            Some(ObjectKind::Lease)
        } else if !key.starts_with("disks/") {
            None
        } else if key.ends_with("/base.idx") {
            Some(ObjectKind::BaseIndex)
        } else if key.contains("/logs/") {
            Some(ObjectKind::Log)
        } else {
            None
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Chunk => "chunk",
            ObjectKind::BaseIndex => "base index",
            ObjectKind::Log => "log",
            ObjectKind::Manifest => "recovery-point manifest",
            ObjectKind::Owner => "owner record",
            ObjectKind::Lease => "lease",
        })
    }
}

/// The keys of one encrypted group. Made once per group from the master key; cheap to use
/// from many threads (`&self` everywhere). Subkeys are zeroed when it is dropped.
pub struct GroupCrypto {
    group: String,
    name_key: Zeroizing<[u8; 32]>,
    aead: XChaCha20Poly1305,
    check: Digest,
}

impl std::fmt::Debug for GroupCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCrypto")
            .field("group", &self.group)
            .field("check_value", &self.check_value_hex())
            .finish_non_exhaustive()
    }
}

/// A subkey for `context`, from the master key and the group's name (so two groups sharing
/// a key file share no subkey: their chunk names cannot be matched with each other).
fn derive(context: &str, master: &MasterKey, group: &str) -> Zeroizing<[u8; 32]> {
    let mut material = Zeroizing::new(Vec::with_capacity(32 + group.len()));
    material.extend_from_slice(master.bytes());
    material.extend_from_slice(group.as_bytes());
    Zeroizing::new(blake3::derive_key(context, &material))
}

impl GroupCrypto {
    /// The keys of group `group` (the group's name in the store, without the prefix: a
    /// bucket can be moved, a group cannot be renamed).
    pub fn new(master: &MasterKey, group: &str) -> GroupCrypto {
        let name_key = derive(CONTEXT_CHUNK_NAMES, master, group);
        let seal_key = derive(CONTEXT_SEALING, master, group);
        let check_key = derive(CONTEXT_CHECK, master, group);
        GroupCrypto {
            group: group.to_string(),
            name_key,
            aead: XChaCha20Poly1305::new(&(*seal_key).into()),
            check: *blake3::keyed_hash(&check_key, CHECK_LABEL).as_bytes(),
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The name of a block in this group: blake3 keyed with the group's naming key, so equal
    /// blocks still share one chunk, but a name says nothing of the block and the store
    /// cannot compute the name of a block it knows. All-zero blocks keep [`ZERO_DIGEST`]
    /// (never stored), as [`crate::chunk::block_digest`] does.
    pub fn chunk_name(&self, block: &[u8]) -> Digest {
        if is_zero(block) {
            ZERO_DIGEST
        } else {
            *blake3::keyed_hash(&self.name_key, block).as_bytes()
        }
    }

    /// The key-check value: a keyed hash of a fixed label under a key derived for this
    /// purpose only. The group's record keeps it; it identifies the key without revealing
    /// anything of it or of the other subkeys.
    pub fn check_value(&self) -> Digest {
        self.check
    }

    pub fn check_value_hex(&self) -> String {
        crate::to_hex(&self.check)
    }

    /// Refuses a key whose check value is not the one the group records (hex).
    pub fn verify_check_value(&self, recorded_hex: &str) -> Result<(), CryptoError> {
        let ok =
            crate::from_hex::<32>(recorded_hex).is_some_and(|r| constant_time_eq(&r, &self.check));
        if ok {
            return Ok(());
        }
        Err(CryptoError::WrongKey {
            group: self.group.clone(),
            recorded: recorded_hex.to_string(),
            actual: self.check_value_hex(),
        })
    }

    /// The record an encrypted group keeps at [`RECORD_KEY`] (written with its first point).
    pub fn record(&self) -> EncryptionRecord {
        EncryptionRecord {
            version: record::RECORD_VERSION,
            scheme: record::SCHEME.into(),
            chunk_names: record::CHUNK_NAMES.into(),
            check: self.check_value_hex(),
        }
    }

    /// Seals `plaintext` (already compressed) as the object `key` of kind `kind`; `key` is
    /// the object's key within the group (e.g. `points/…json`), exactly as it is stored.
    pub fn seal(
        &self,
        key: &str,
        kind: ObjectKind,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (ctx, header) = envelope::ObjectCtx::for_sealing(&self.aead, &self.group, key, kind)?;
        ctx.seal_all(&header, plaintext)
    }

    /// Opens the object `key` of kind `kind`: its plaintext, or an error if anything in it
    /// was changed, cut or moved, or it was sealed with another key.
    pub fn open(&self, key: &str, kind: ObjectKind, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < envelope::MIN_LEN {
            if sealed.len() < 8 || sealed[..8] != envelope::MAGIC {
                return Err(CryptoError::NotEncrypted { key: key.into() });
            }
            return Err(CryptoError::Truncated {
                key: key.into(),
                len: sealed.len(),
                min: envelope::MIN_LEN,
            });
        }
        let ctx = envelope::ObjectCtx::for_opening(&self.aead, &self.group, key, kind, sealed)?;
        ctx.open_all(&sealed[envelope::HEADER_LEN..])
    }

    /// A writer that seals what is written to it into `inner` (large logs, streamed);
    /// call [`SealWriter::finish`] at the end.
    pub fn seal_writer<'a, W: Write>(
        &'a self,
        key: &'a str,
        kind: ObjectKind,
        inner: W,
    ) -> Result<SealWriter<'a, W>, CryptoError> {
        let (ctx, header) = envelope::ObjectCtx::for_sealing(&self.aead, &self.group, key, kind)?;
        Ok(SealWriter::new(ctx, &header, inner)?)
    }

    /// A reader of the plaintext of the sealed object read from `inner`, streamed.
    pub fn open_reader<'a, R: Read>(
        &'a self,
        key: &'a str,
        kind: ObjectKind,
        inner: R,
    ) -> OpenReader<'a, R> {
        OpenReader::new(&self.aead, &self.group, key, kind, inner)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
