//! The typed errors of encryption at rest. Each message names the object or file and says
//! what to do: these reach the operator through the shipper's `anyhow` context unchanged.

use std::path::PathBuf;

use super::ObjectKind;

/// Why a sealed object was refused (or could not be sealed). Nothing of a refused object may
/// be used: its bytes are untrusted until `open` returns them.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "encrypted object {key} is truncated ({len} bytes, an hrl envelope has at least {min}): \
         the store lost part of it; nothing of it was used (restore another point, or resync \
         to write it again)"
    )]
    Truncated { key: String, len: usize, min: usize },
    #[error(
        "object {key} is not an hrl encrypted object (no hrl-enc header): the group is \
         encrypted, so this object was written without encryption or damaged; nothing of it \
         was used (resync to write it again)"
    )]
    NotEncrypted { key: String },
    #[error(
        "encrypted object {key} has envelope version {version}, this hrl reads up to {max}: \
         upgrade hrl to read it"
    )]
    UnsupportedVersion { key: String, version: u8, max: u8 },
    #[error(
        "encrypted object {key} holds a {found}, where a {expected} was expected: the store \
         was altered (an object put under another object's name); nothing of it was used"
    )]
    WrongKind {
        key: String,
        expected: ObjectKind,
        found: String,
    },
    #[error(
        "encrypted object {key} has a damaged header ({why}); nothing of it was used \
         (resync to write it again)"
    )]
    BadHeader { key: String, why: &'static str },
    #[error(
        "encrypted object {key} failed authentication: it was altered or truncated, stored \
         under another name, or sealed with another key; nothing of it was used. If every \
         object fails, the key is not this group's (compare its check value with the \
         group's record); otherwise the store is damaged: resync the disk"
    )]
    Refused { key: String },
    #[error(
        "the key does not match group {group}: its check value is {actual}, the store records \
         {recorded} for the group. Use the group's own key file (nothing was written or \
         restored)"
    )]
    WrongKey {
        group: String,
        recorded: String,
        actual: String,
    },
    #[error(
        "the group's encryption record (encryption.json) is damaged or was altered: {why}; \
         nothing was written or restored. Restore it from a copy, or ask whoever can write \
         the bucket"
    )]
    BadRecord { why: String },
    #[error("the operating system's random number generator failed: {0}; nothing was sealed")]
    Random(String),
    #[error("{0}: nothing of the object was used")]
    Io(#[from] std::io::Error),
}

/// Why a key file could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "key file {path} exists already; hrl never overwrites a key (everything sealed with it \
         would be lost): choose another path, or move the old file away yourself"
    )]
    Exists { path: PathBuf },
    #[error(
        "key file {path} is a symbolic link; hrl writes key files only as new regular files: \
         choose another path"
    )]
    Symlink { path: PathBuf },
    #[error(
        "key file {path} is readable or writable by others (mode {mode:04o}): run `chmod 600 \
         {path}` and check who may have copied it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} is damaged or not an hrl key file ({why}): use your backup copy of \
         the key file"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error(
        "key file {path} has format version {version}, this hrl reads up to {max}: upgrade hrl"
    )]
    UnsupportedVersion { path: PathBuf, version: u8, max: u8 },
    #[error("key file {path} is protected by a passphrase: give its passphrase")]
    PassphraseRequired { path: PathBuf },
    #[error(
        "wrong passphrase for key file {path} (the file itself is intact): give the \
         passphrase it was created with"
    )]
    WrongPassphrase { path: PathBuf },
    #[error(
        "key file {path}: an empty passphrase protects nothing: give a passphrase, or create \
         the key file without one (its 0600 mode protects it)"
    )]
    EmptyPassphrase { path: PathBuf },
    #[error("key file {path}: argon2id parameters refused: {why}")]
    BadKdfParams { path: PathBuf, why: String },
    #[error("the operating system's random number generator failed: {0}; no key file was written")]
    Random(String),
}
