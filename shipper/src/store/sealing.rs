//! Encryption at rest in the store layer (docs/encryption.md). A [`GroupStore`] given a key
//! seals every object it writes and opens every object it reads, bound to the object's key
//! and kind (`ObjectKind::of_key`); the group's plain `encryption.json` says whether the group
//! is encrypted. That record is checked once per store, before the first object is read or
//! written: an encrypted group refuses to run without its key or with another, a plain group
//! with points refuses a key, and a new group given a key gets its record before anything else.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use hrl::crypto::{CryptoError, EncryptionRecord, GroupCrypto, MasterKey, ObjectKind, RECORD_KEY};

use super::{GroupStore, Op, Put, StoreError, StoreResult};

/// Objects up to this size are sealed or opened on the calling thread; larger ones on a
/// blocking worker (CPU work, off the async threads).
const INLINE_MAX: usize = 64 << 10;

/// The key a store was given, and whether the group's record was checked against it.
#[derive(Debug, Default)]
pub(super) struct Keying {
    given: Option<Arc<GroupCrypto>>,
    checked: OnceLock<()>,
}

impl GroupStore {
    /// This store with `key` (None: a plain group). Every object it then writes is sealed and
    /// every object it reads opened with the group's keys; the group's record is checked
    /// before the first of them.
    pub fn with_key(mut self, key: Option<&MasterKey>) -> GroupStore {
        let given = key.map(|k| Arc::new(GroupCrypto::new(k, &self.group)));
        self.keying = Arc::new(Keying {
            given,
            checked: OnceLock::new(),
        });
        self
    }

    /// The group's keys when the store was given a key (chunk names, sealing).
    pub fn crypto(&self) -> Option<&Arc<GroupCrypto>> {
        self.keying.given.as_ref()
    }

    /// The refusal of a key, or of its absence, before anything is written or restored.
    fn key_error(&self, why: String) -> StoreError {
        StoreError::Encryption {
            group: self.group.clone(),
            url: self.target.url.clone(),
            why,
        }
    }

    /// Checks the group's record against the key given, once per store. With a key and no
    /// record: a group without points gets its record when `write` (create-if-absent; a
    /// record another writer put first is checked), one with points is plain and refuses it.
    pub(super) async fn check_keying(&self, write: bool) -> StoreResult<()> {
        if self.keying.checked.get().is_some() {
            return Ok(());
        }
        let given = self.keying.given.clone();
        match (self.read_record().await?, given) {
            (Some(_), None) => return Err(self.key_error(
                "the group is encrypted (it has encryption.json): give its key file with --key FILE (encryption_key in the config); nothing was written or restored".into(),
            )),
            (Some(r), Some(c)) => self.verify(&c, &r)?,
            (None, None) => {}
            (None, Some(c)) => {
                if !super::manifests::list_ids(self).await?.is_empty() {
                    return Err(self.key_error(
                        "the group is not encrypted (it has recovery points and no encryption.json), and a group is encrypted or not from its first point: --key is refused, nothing was written or restored. Replicate encrypted into a new group (--group NAME), or drop --key".into(),
                    ));
                }
                if !write {
                    // Nothing to read yet; the first write records the key.
                    return Ok(());
                }
                if self.has_any_object().await? {
                    return Err(self.key_error(format!(
                        "the group holds objects written without a key (an earlier run without --key that committed no point), so it is not encrypted: --key is refused, nothing was written. Replicate encrypted into a new group (--group NAME), or delete {} first",
                        self.path("")
                    )));
                }
                let put = self
                    .put_raw(RECORD_KEY, c.record().to_json())
                    .await?;
                if put == Put::Existed {
                    let r = self.read_record().await?;
                    let r = r.ok_or_else(|| self.damaged("encryption record", RECORD_KEY, "it vanished just after another writer created it"))?;
                    self.verify(&c, &r)?;
                } else {
                    tracing::info!(group = %self.group, check = %c.check_value_hex(), "group encrypted from its first point");
                }
            }
        }
        let _ = self.keying.checked.set(());
        Ok(())
    }

    fn verify(&self, c: &GroupCrypto, r: &EncryptionRecord) -> StoreResult<()> {
        c.verify_check_value(&r.check)
            .map_err(|e| self.key_error(e.to_string()))
    }

    async fn read_record(&self) -> StoreResult<Option<EncryptionRecord>> {
        match self.get_raw(RECORD_KEY).await {
            Ok(b) => EncryptionRecord::from_json(&b)
                .map(Some)
                .map_err(|e| self.key_error(e.to_string())),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The kind sealed at `key`; a key of no known kind is never sealed by guess.
    fn kind_of(&self, key: &str) -> StoreResult<ObjectKind> {
        ObjectKind::of_key(key).ok_or_else(|| {
            StoreError::local(
                Op::Put,
                self.path(key).as_ref(),
                &self.target.url,
                format!("internal: no sealed object kind for key {key:?} (add it to ObjectKind::of_key)"),
            )
        })
    }

    /// A refused object: damaged (Critical), its bytes never used.
    pub(super) fn refused(&self, key: &str, e: &CryptoError) -> StoreError {
        let what = ObjectKind::of_key(key).map_or("object".to_string(), |k| k.to_string());
        self.damaged(what, key, e.to_string())
    }

    /// What is stored for the plaintext `plain` of `key`: sealed when the group is encrypted
    /// (the record checked first), `plain` itself otherwise.
    pub async fn seal(&self, key: &str, plain: Vec<u8>) -> StoreResult<Vec<u8>> {
        self.check_keying(true).await?;
        let Some(c) = self.crypto().cloned() else {
            return Ok(plain);
        };
        let kind = self.kind_of(key)?;
        let k = key.to_string();
        let sealed = if plain.len() <= INLINE_MAX {
            c.seal(&k, kind, &plain)
        } else {
            tokio::task::spawn_blocking(move || c.seal(&k, kind, &plain))
                .await
                .map_err(|e| self.local(Op::Put, &self.path(key), e))?
        };
        sealed.map_err(|e| self.local(Op::Put, &self.path(key), e))
    }

    /// The plaintext of the stored bytes of `key` (opened when the group is encrypted).
    pub async fn open(&self, key: &str, stored: Vec<u8>) -> StoreResult<Vec<u8>> {
        let Some(c) = self.crypto().cloned() else {
            return Ok(stored);
        };
        let kind = self.kind_of(key)?;
        let k = key.to_string();
        let opened = if stored.len() <= INLINE_MAX {
            c.open(&k, kind, &stored)
        } else {
            tokio::task::spawn_blocking(move || c.open(&k, kind, &stored))
                .await
                .map_err(|e| self.local(Op::Get, &self.path(key), e))?
        };
        opened.map_err(|e| self.refused(key, &e))
    }
}

/// Seals the file `input` into `output` as object `key` (streaming; blocking).
pub(super) fn seal_file(
    c: &GroupCrypto,
    key: &str,
    input: &Path,
    output: &Path,
) -> std::io::Result<()> {
    let kind = ObjectKind::of_key(key).ok_or_else(|| {
        std::io::Error::other(format!("internal: no sealed object kind for key {key:?}"))
    })?;
    let mut r = std::io::BufReader::new(std::fs::File::open(input)?);
    let out = std::io::BufWriter::new(std::fs::File::create(output)?);
    let mut w = c
        .seal_writer(key, kind, out)
        .map_err(std::io::Error::other)?;
    std::io::copy(&mut r, &mut w)?;
    w.finish()?.flush()
}

/// A reader of the plaintext of `input` (the stored bytes of `key`): itself for a plain
/// group, opened streaming for an encrypted one (a `CryptoError` inside its `io::Error`s).
pub(super) fn open_reader<'a, R: std::io::BufRead + 'a>(
    c: Option<&'a GroupCrypto>,
    key: &'a str,
    input: R,
) -> std::io::Result<Box<dyn Read + 'a>> {
    let Some(c) = c else {
        return Ok(Box::new(input));
    };
    let kind = ObjectKind::of_key(key).ok_or_else(|| {
        std::io::Error::other(format!("internal: no sealed object kind for key {key:?}"))
    })?;
    Ok(Box::new(c.open_reader(key, kind, input)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, key: Option<&MasterKey>) -> GroupStore {
        let t = super::super::target::open(&dir.display().to_string()).unwrap();
        GroupStore::new(t, "g").unwrap().with_key(key)
    }

    /// Sealing is not deterministic: `put_new`'s "the store kept my write" test compares
    /// plaintexts, so a retry that sealed the same manifest again is still this write's.
    #[tokio::test]
    async fn put_new_compares_plaintexts_and_the_record_comes_first() {
        let tmp = tempfile::tempdir().unwrap();
        let key = MasterKey::generate().unwrap();
        let s = store(tmp.path(), Some(&key));
        let k = hrl::store::point_key(1);
        assert_eq!(
            s.put_immutable(&k, b"m1".to_vec()).await.unwrap(),
            Put::Created
        );
        let stored = std::fs::read(tmp.path().join("g").join(&k)).unwrap();
        assert!(stored.starts_with(b"hrl-enc\0"));
        assert!(tmp.path().join("g").join(RECORD_KEY).exists());
        assert_eq!(s.put_new(&k, b"m1".to_vec()).await.unwrap(), Put::Created);
        assert_eq!(s.put_new(&k, b"m2".to_vec()).await.unwrap(), Put::Existed);
        assert_eq!(s.get(&k).await.unwrap(), b"m1");
        // A plain store of the same group refuses to read it; another key too.
        let plain = store(tmp.path(), None);
        assert!(matches!(
            plain.get(&k).await,
            Err(StoreError::Encryption { .. })
        ));
        let other = store(tmp.path(), Some(&MasterKey::generate().unwrap()));
        let e = other.get(&k).await.unwrap_err().to_string();
        assert!(e.contains("does not match group"), "{e}");
    }

    /// A group an earlier plain run wrote to (no point yet) is plain: a key is refused
    /// before anything is written, so no plaintext object is left beside sealed ones.
    #[tokio::test]
    async fn a_key_is_refused_for_a_group_holding_plain_objects() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = store(tmp.path(), None);
        plain
            .put_immutable("owner.json", b"{}".to_vec())
            .await
            .unwrap();
        let keyed = store(tmp.path(), Some(&MasterKey::generate().unwrap()));
        let e = keyed
            .put_immutable("chunks/ab/abab", b"x".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Encryption { .. }), "{e}");
        assert!(!tmp.path().join("g").join(RECORD_KEY).exists());
        assert!(!tmp.path().join("g/chunks").exists());
    }
}
