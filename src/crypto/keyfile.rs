//! The key file: one random 256-bit master key, stored plain or wrapped by a passphrase
//! (argon2id, parameters in the file). Format (docs/encryption.md), little-endian:
//!
//! ```text
//! 0   8  magic "hrl-key\0"
//! 8   1  version (1)
//! 9   1  protection: 0 plain, 1 argon2id passphrase
//! 10  2  reserved (0)
//! plain:     12 32 master key                         | 44 32 blake3 of bytes 0..44   (76 bytes)
//! argon2id:  12 4 memory KiB | 16 4 passes | 20 4 lanes | 24 16 salt | 40 24 nonce
//!            64 48 XChaCha20-Poly1305(KEK, master key), associated data bytes 0..40
//!            112 32 blake3 of bytes 0..112                                         (144 bytes)
//! ```
//!
//! The trailing checksum tells a damaged file (use the backup) from a wrong passphrase (the
//! checksum holds but the tag does not). The KEK is argon2id(passphrase, salt, parameters).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::KeyFileError;

pub const MAGIC: [u8; 8] = *b"hrl-key\0";
pub const VERSION: u8 = 1;
const PLAIN: u8 = 0;
const ARGON2ID: u8 = 1;
const PLAIN_LEN: usize = 76;
const WRAPPED_LEN: usize = 144;
/// Largest key file read: anything longer is not one (and is not read into memory).
const MAX_LEN: u64 = 4096;

/// The group's master key. Never printed (its `Debug` hides it), zeroed when dropped; the
/// store only ever sees keys derived from it ([`super::GroupCrypto`]).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// argon2id cost parameters, recorded in a wrapped key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes (parallelism).
    pub lanes: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane (RFC 9106's second recommendation with one lane: about a
    /// quarter second on one core; the key is unwrapped once per command).
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 1,
        }
    }
}

/// Largest parameters a key file may ask for (4 GiB, 64 passes, 64 lanes): a tampered file
/// cannot make the loader allocate without bound.
const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_PASSES: u32 = 64;
const MAX_LANES: u32 = 64;

impl KdfParams {
    fn argon2(&self) -> Result<argon2::Argon2<'static>, String> {
        if self.memory_kib > MAX_MEMORY_KIB || self.passes > MAX_PASSES || self.lanes > MAX_LANES {
            return Err(format!(
                "{self:?} exceeds the limits ({MAX_MEMORY_KIB} KiB, {MAX_PASSES} passes, {MAX_LANES} lanes)"
            ));
        }
        let params = argon2::Params::new(self.memory_kib, self.passes, self.lanes, Some(32))
            .map_err(|e| format!("{self:?}: {e}"))?;
        Ok(argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            params,
        ))
    }

    fn kek(&self, passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
        let mut kek = Zeroizing::new([0u8; 32]);
        self.argon2()?
            .hash_password_into(passphrase, salt, kek.as_mut())
            .map_err(|e| e.to_string())?;
        Ok(kek)
    }
}

/// How a new key file protects the key.
pub enum Protection<'a> {
    /// The key as it is: the file's permissions (0600) protect it.
    Plain,
    /// Wrapped with a key derived from a passphrase.
    Passphrase(&'a [u8], KdfParams),
}

fn random<const N: usize>() -> Result<[u8; N], KeyFileError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KeyFileError::Random(e.to_string()))?;
    Ok(b)
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Result<MasterKey, KeyFileError> {
        Ok(MasterKey(random()?))
    }

    /// The key bytes, for deriving subkeys only.
    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Writes a new key file at `path` (never over anything, never through a symlink), mode
    /// 0600, synced with its directory, and returns the key.
    pub fn create(path: &Path, protection: Protection<'_>) -> Result<MasterKey, KeyFileError> {
        let key = MasterKey::generate()?;
        let bytes = key.encode(path, protection)?;
        write_new(path, &bytes)?;
        Ok(key)
    }

    /// Loads the key file at `path`; `passphrase` is needed when the file is wrapped
    /// (otherwise [`KeyFileError::PassphraseRequired`]). The file must be a regular file
    /// nobody else may read.
    pub fn load(path: &Path, passphrase: Option<&[u8]>) -> Result<MasterKey, KeyFileError> {
        let bytes = read_key_file(path)?;
        MasterKey::decode(path, &bytes, passphrase)
    }

    /// The bytes of a key file holding this key.
    pub fn encode(
        &self,
        path: &Path,
        protection: Protection<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
        let mut out = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        match protection {
            Protection::Plain => {
                out.extend_from_slice(&[PLAIN, 0, 0]);
                out.extend_from_slice(&self.0);
            }
            Protection::Passphrase(passphrase, params) => {
                if passphrase.is_empty() {
                    return Err(KeyFileError::EmptyPassphrase {
                        path: path.to_path_buf(),
                    });
                }
                out.extend_from_slice(&[ARGON2ID, 0, 0]);
                for v in [params.memory_kib, params.passes, params.lanes] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&random::<16>()?);
                let nonce: [u8; 24] = random()?;
                out.extend_from_slice(&nonce);
                let kek = params.kek(passphrase, &out[24..40]).map_err(|why| {
                    KeyFileError::BadKdfParams {
                        path: path.to_path_buf(),
                        why,
                    }
                })?;
                let mut wrapped = Zeroizing::new(self.0);
                let tag = XChaCha20Poly1305::new(&(*kek).into())
                    .encrypt_inout_detached(
                        &XNonce::from(nonce),
                        &out[..40],
                        wrapped.as_mut_slice().into(),
                    )
                    .map_err(|_| KeyFileError::Random("key wrapping failed".into()))?;
                out.extend_from_slice(wrapped.as_slice());
                out.extend_from_slice(&tag);
            }
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        Ok(out)
    }

    /// Parses key file bytes (`path` only names the file in errors). Never panics on any input.
    pub fn decode(
        path: &Path,
        bytes: &[u8],
        passphrase: Option<&[u8]>,
    ) -> Result<MasterKey, KeyFileError> {
        let corrupt = |why: &str| KeyFileError::Corrupt {
            path: path.to_path_buf(),
            why: why.to_string(),
        };
        if bytes.len() < 12 || bytes[..8] != MAGIC {
            return Err(corrupt("no hrl-key header"));
        }
        if bytes[8] != VERSION {
            return Err(KeyFileError::UnsupportedVersion {
                path: path.to_path_buf(),
                version: bytes[8],
                max: VERSION,
            });
        }
        let want = match bytes[9] {
            PLAIN => PLAIN_LEN,
            ARGON2ID => WRAPPED_LEN,
            _ => return Err(corrupt("unknown protection")),
        };
        if bytes.len() != want {
            return Err(corrupt(&format!("{} bytes, expected {want}", bytes.len())));
        }
        let (body, sum) = bytes.split_at(want - 32);
        if blake3::hash(body).as_bytes()[..] != *sum {
            return Err(corrupt("checksum mismatch"));
        }
        if bytes[10..12] != [0, 0] {
            return Err(corrupt("reserved bytes are not zero"));
        }
        let mut key = MasterKey([0; 32]);
        if bytes[9] == PLAIN {
            key.0.copy_from_slice(&body[12..44]);
            return Ok(key);
        }
        let passphrase = passphrase.ok_or_else(|| KeyFileError::PassphraseRequired {
            path: path.to_path_buf(),
        })?;
        let word =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let params = KdfParams {
            memory_kib: word(12),
            passes: word(16),
            lanes: word(20),
        };
        let kek =
            params
                .kek(passphrase, &body[24..40])
                .map_err(|why| KeyFileError::BadKdfParams {
                    path: path.to_path_buf(),
                    why,
                })?;
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&body[40..64]);
        key.0.copy_from_slice(&body[64..96]);
        let tag = Tag::try_from(&body[96..112]).map_err(|_| corrupt("tag"))?;
        XChaCha20Poly1305::new(&(*kek).into())
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &body[..40],
                key.0.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| KeyFileError::WrongPassphrase {
                path: path.to_path_buf(),
            })?;
        Ok(key)
    }
}

/// Creates `path` with O_EXCL | O_NOFOLLOW, mode 0600, writes `bytes`, syncs the file and its
/// directory; removes the file again if anything fails.
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    let io = |op: &'static str| {
        move |source| KeyFileError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            // create_new reports a dangling or planted symlink as AlreadyExists too.
            std::io::ErrorKind::AlreadyExists if is_symlink(path) => KeyFileError::Symlink {
                path: path.to_path_buf(),
            },
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
                path: path.to_path_buf(),
            },
            _ => io("create")(e),
        })?;
    let written = (|| -> Result<(), KeyFileError> {
        // The umask may only narrow 0600; make sure it is exactly that.
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(io("chmod 0600"))?;
        file.write_all(bytes).map_err(io("write"))?;
        file.sync_all().map_err(io("fsync"))?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(io("fsync its directory"))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Reads a key file: a regular file (a symlink to one is fine: reading follows the operator's
/// own layout), at most [`MAX_LEN`] bytes, readable by its owner only.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let io = |op: &'static str| {
        move |source| KeyFileError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    };
    let file = File::open(path).map_err(io("open"))?;
    let md = file.metadata().map_err(io("stat"))?;
    if !md.file_type().is_file() {
        return Err(KeyFileError::Corrupt {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    if md.mode() & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode: md.mode() & 0o7777,
        });
    }
    // Room for the whole read up front: no reallocation leaves a copy of the key behind.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_LEN as usize + 1));
    file.take(MAX_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read"))?;
    Ok(bytes)
}
