//! The group's encryption record, `<group>/encryption.json`: the one object of an encrypted
//! group that is not sealed (it must be read before the key is known good). It says the
//! group is encrypted, how, and with which key (its check value, never the key). Written
//! create-if-absent before any other object of the group's first point; read and checked by
//! every command before it writes or restores anything.

use serde::{Deserialize, Serialize};

use super::CryptoError;

/// Key of the record, relative to the group.
pub const RECORD_KEY: &str = "encryption.json";
pub const RECORD_VERSION: u32 = 1;
/// The sealing scheme of this version (docs/encryption.md).
pub const SCHEME: &str = "xchacha20poly1305-stream";
/// How chunks are named.
pub const CHUNK_NAMES: &str = "blake3-keyed";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionRecord {
    pub version: u32,
    pub scheme: String,
    pub chunk_names: String,
    /// [`super::GroupCrypto::check_value_hex`] of the group's key.
    pub check: String,
}

impl EncryptionRecord {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Parses and checks a record read from the store (untrusted): this version's scheme,
    /// a check value of 64 hex digits.
    pub fn from_json(bytes: &[u8]) -> Result<EncryptionRecord, CryptoError> {
        let bad = |why: String| CryptoError::BadRecord { why };
        let r: EncryptionRecord =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a record: {e}")))?;
        if r.version != RECORD_VERSION {
            return Err(bad(format!(
                "version {} (this hrl reads {RECORD_VERSION}: upgrade hrl if it is newer)",
                r.version
            )));
        }
        if r.scheme != SCHEME || r.chunk_names != CHUNK_NAMES {
            return Err(bad(format!(
                "unknown scheme {:?} / chunk names {:?}",
                r.scheme, r.chunk_names
            )));
        }
        if crate::from_hex::<32>(&r.check).is_none() {
            return Err(bad("check value is not 64 hex digits".into()));
        }
        Ok(r)
    }
}
