//! The only code that talks to `object_store`. A [`GroupStore`] is one protection group's
//! view of a target: immutable put-if-absent objects, zstd, listing; every failure is one
//! typed [`StoreError`]. On top of it, small named stores in the spirit of pbs-datastore:
//! [`chunks::ChunkStore`] (content-addressed blocks), [`index::fetch_base_index`]
//! (hash-checked), [`logs::fetch_chain`] (the shipped logs after a base) and
//! [`manifests`] (recovery points: list, get, commit-if-absent) and [`owners`] (a group's
//! owner records, one per epoch, created if absent). Given a key ([`GroupStore::with_key`]),
//! it seals and opens every object ([`sealing`]).

pub mod bandwidth;
pub mod chunks;
pub mod error;
pub mod http;
pub mod index;
pub mod leases;
pub mod logs;
pub mod manifests;
pub mod owners;
pub mod sealing;
pub mod target;
pub mod tests;
pub mod usage;

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

pub use error::{Op, StoreError};
use target::Target;

/// zstd level for chunks and logs: fast, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// The objects of one protection group in a target.
#[derive(Clone, Debug)]
pub struct GroupStore {
    pub target: Target,
    pub group: String,
    root: StorePath,
    keying: Arc<sealing::Keying>,
}

/// What a put of an immutable object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// An object with that key was there already (same content by construction).
    Existed,
}

impl GroupStore {
    pub fn new(target: Target, group: &str) -> anyhow::Result<GroupStore> {
        if group.is_empty() || group.contains('/') || group.starts_with('.') {
            anyhow::bail!("group name {group:?} is not valid: use a non-empty name without '/' that does not start with '.'");
        }
        let root = target.prefix.child(group);
        Ok(GroupStore {
            target,
            group: group.to_string(),
            root,
            keying: Arc::default(),
        })
    }

    /// Full store path of a key relative to the group.
    pub fn path(&self, key: &str) -> StorePath {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    fn store(&self) -> &dyn ObjectStore {
        self.target.store.as_ref()
    }

    /// The typed error of a failed `op` on `path`.
    fn err(&self, op: Op, path: &StorePath, e: object_store::Error) -> StoreError {
        StoreError::from_store(op, path.as_ref(), &self.target.url, e)
    }

    /// A local error (scratch file, worker) while moving `path`.
    fn local(&self, op: Op, path: &StorePath, e: impl std::fmt::Display) -> StoreError {
        StoreError::local(op, path.as_ref(), &self.target.url, e.to_string())
    }

    /// A damaged object.
    pub fn damaged(
        &self,
        what: impl Into<String>,
        key: &str,
        why: impl Into<String>,
    ) -> StoreError {
        StoreError::Damaged {
            what: what.into(),
            path: self.path(key).to_string(),
            why: why.into(),
        }
    }

    /// Writes `bytes` (the plaintext: sealed first in an encrypted group) at `key` unless an
    /// object is there already.
    pub async fn put_immutable(&self, key: &str, bytes: Vec<u8>) -> StoreResult<Put> {
        let stored = self.seal(key, bytes).await?;
        self.put_raw(key, stored).await
    }

    /// Writes bytes already as stored ([`GroupStore::seal`]) at `key` unless an object is
    /// there already.
    pub async fn put_stored(&self, key: &str, stored: Vec<u8>) -> StoreResult<Put> {
        self.check_keying(true).await?;
        self.put_raw(key, stored).await
    }

    /// Writes `bytes` as they are at `key` unless an object is there already. Uses
    /// conditional create where the store has it; where it does not, checks first (objects
    /// are immutable and content-named, so a race writes the same content).
    async fn put_raw(&self, key: &str, bytes: Vec<u8>) -> StoreResult<Put> {
        let path = self.path(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let payload = PutPayload::from(bytes);
        match self.store().put_opts(&path, payload.clone(), opts).await {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Existed),
            Err(object_store::Error::NotImplemented)
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.exists(key).await? {
                    return Ok(Put::Existed);
                }
                self.store()
                    .put(&path, payload)
                    .await
                    .map_err(|e| self.err(Op::Put, &path, e))?;
                Ok(Put::Created)
            }
            Err(e) => Err(self.err(Op::Put, &path, e)),
        }
    }

    /// Uploads a local file (the plaintext: sealed into a scratch file beside it first in an
    /// encrypted group) at `key` unless an object is there already.
    pub async fn put_file_immutable(&self, key: &str, file: &std::path::Path) -> StoreResult<Put> {
        self.check_keying(true).await?;
        let Some(c) = self.crypto().cloned() else {
            return self.put_file_raw(key, file).await;
        };
        let sealed = file.with_extension("sealed");
        let (k, input, output) = (key.to_string(), file.to_path_buf(), sealed.clone());
        tokio::task::spawn_blocking(move || sealing::seal_file(&c, &k, &input, &output))
            .await
            .map_err(|e| self.local(Op::Put, &self.path(key), e))?
            .map_err(|e| {
                self.local(
                    Op::Put,
                    &self.path(key),
                    format!("seal {}: {e}", file.display()),
                )
            })?;
        let put = self.put_file_raw(key, &sealed).await;
        let _ = std::fs::remove_file(&sealed);
        put
    }

    /// Uploads a local file as it is; large files go up in parts, streamed (a multipart
    /// upload is not conditional, which is fine for immutable content).
    async fn put_file_raw(&self, key: &str, file: &std::path::Path) -> StoreResult<Put> {
        const SINGLE_PUT_MAX: u64 = 32 << 20;
        const PART: usize = 16 << 20;
        let path = self.path(key);
        let len = std::fs::metadata(file)
            .map_err(|e| self.local(Op::Put, &path, format!("stat {}: {e}", file.display())))?
            .len();
        if len <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(file)
                .map_err(|e| self.local(Op::Put, &path, format!("read {}: {e}", file.display())))?;
            return self.put_raw(key, bytes).await;
        }
        if self.exists(key).await? {
            return Ok(Put::Existed);
        }
        let mut upload = self
            .store()
            .put_multipart(&path)
            .await
            .map_err(|e| self.err(Op::Put, &path, e))?;
        let done = match self.send_parts(upload.as_mut(), &path, file, PART).await {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(|e| self.err(Op::Put, &path, e)),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            // The parts sent so far would stay in the bucket (stored and billed, never
            // visible) until aborted; a retry starts a new upload.
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%path, "cannot abort the interrupted multipart upload (a bucket lifecycle rule for incomplete uploads removes it): {abort}");
            }
            return Err(e);
        }
        Ok(Put::Created)
    }

    /// Streams `file` into `upload`, `part` bytes a part, up to 4 parts in flight.
    async fn send_parts(
        &self,
        upload: &mut dyn object_store::MultipartUpload,
        path: &StorePath,
        file: &std::path::Path,
        part: usize,
    ) -> StoreResult<()> {
        use futures::StreamExt;
        use std::io::Read;
        let read_err =
            |e: std::io::Error| self.local(Op::Put, path, format!("read {}: {e}", file.display()));
        let f = std::fs::File::open(file).map_err(read_err)?;
        let mut f = std::io::BufReader::new(f);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            let mut buf = Vec::with_capacity(part);
            let n = (&mut f)
                .take(part as u64)
                .read_to_end(&mut buf)
                .map_err(read_err)?;
            if n == 0 {
                break;
            }
            while in_flight.len() >= 4 {
                if let Some(r) = in_flight.next().await {
                    let r: object_store::Result<()> = r;
                    r.map_err(|e| self.err(Op::Put, path, e))?;
                }
            }
            in_flight.push(upload.put_part(PutPayload::from(buf)));
        }
        while let Some(r) = in_flight.next().await {
            let r: object_store::Result<()> = r;
            r.map_err(|e| self.err(Op::Put, path, e))?;
        }
        Ok(())
    }

    /// Writes an object that must not exist yet (a recovery-point manifest). Returns
    /// `Existed` if another writer committed that key first. When the object there holds
    /// exactly `bytes`, it is this write's own (the store kept it but the reply was lost,
    /// and the retry found it): `Created`. A manifest names its commit instant in ns and its
    /// host, so another writer's never has the same bytes. In an encrypted group the
    /// plaintexts are compared (sealing is not deterministic).
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> StoreResult<Put> {
        match self.put_immutable(key, bytes.clone()).await? {
            Put::Created => Ok(Put::Created),
            Put::Existed => {
                if self.get(key).await? == bytes {
                    tracing::info!(key, "the store kept this write before its reply was lost");
                    Ok(Put::Created)
                } else {
                    Ok(Put::Existed)
                }
            }
        }
    }

    /// Replaces the object at `key`: a log a fenced owner left under a key this owner's
    /// chain needs (`replicate::ship`), a manifest retention moved onto a merged base, a
    /// lease, collection's own record; chunks, indexes and logs are otherwise immutable.
    pub async fn put_overwrite(&self, key: &str, bytes: Vec<u8>) -> StoreResult<()> {
        let stored = self.seal(key, bytes).await?;
        let path = self.path(key);
        self.store()
            .put(&path, PutPayload::from(stored))
            .await
            .map_err(|e| self.err(Op::Put, &path, e))?;
        Ok(())
    }

    /// Deletes the object at `key` (gone already is fine): the logs a fenced owner left
    /// after the point a takeover continues from (`recover::failover`), what retention
    /// expires or collects (`retain`), and leases.
    pub async fn delete(&self, key: &str) -> StoreResult<()> {
        let path = self.path(key);
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(Op::Delete, &path, e)),
        }
    }

    pub async fn exists(&self, key: &str) -> StoreResult<bool> {
        let path = self.path(key);
        match self.store().head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err(Op::Head, &path, e)),
        }
    }

    /// The plaintext of `key` (opened, in an encrypted group: a refused object is
    /// [`StoreError::Damaged`]).
    pub async fn get(&self, key: &str) -> StoreResult<Vec<u8>> {
        let stored = self.get_stored(key).await?;
        self.open(key, stored).await
    }

    /// The bytes of `key` as stored (sealed, in an encrypted group).
    pub async fn get_stored(&self, key: &str) -> StoreResult<Vec<u8>> {
        self.check_keying(false).await?;
        self.get_raw(key).await
    }

    async fn get_raw(&self, key: &str) -> StoreResult<Vec<u8>> {
        // `Vec::from` takes a `Bytes` made from a `Vec` back without a copy.
        self.get_raw_then(key, Vec::from).await
    }

    /// `f` of the bytes of `key` as stored, run off the async threads: for a local store's
    /// object in the same blocking task as the read of its file (restore reads every chunk
    /// of a disk this way: one hand-off per chunk, not one for the read and one for `f`).
    pub async fn get_stored_then<T, F>(&self, key: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&[u8]) -> T + Send + 'static,
    {
        self.check_keying(false).await?;
        self.get_raw_then(key, move |b| f(&b)).await
    }

    /// `f` of the body of `key` as the store client returned it, with no keying check (the
    /// keying record itself is read this way), off the async threads. A local store's file
    /// is read with one `read` of its size ([`read_range`]) in the task that runs `f`.
    async fn get_raw_then<T, F>(&self, key: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(bytes::Bytes) -> T + Send + 'static,
    {
        let (path, r) = self.open_get(key).await?;
        let range = r.range.clone();
        let worker = |e: tokio::task::JoinError| {
            self.local(Op::Get, &path, format!("read worker failed: {e}"))
        };
        match r.payload {
            object_store::GetResultPayload::File(file, local) => {
                let done = tokio::task::spawn_blocking(move || {
                    read_range(&file, range).map(|b| f(bytes::Bytes::from(b)))
                })
                .await
                .map_err(worker)?;
                done.map_err(|e| self.read_error(&path, &local, e))
            }
            payload => {
                let body = object_store::GetResult { payload, ..r }
                    .bytes()
                    .await
                    .map_err(|e| self.err(Op::Get, &path, e))?;
                tokio::task::spawn_blocking(move || f(body))
                    .await
                    .map_err(worker)
            }
        }
    }

    /// A failed read of a local store's file, as the store client would report it.
    fn read_error(
        &self,
        path: &StorePath,
        local: &std::path::Path,
        e: std::io::Error,
    ) -> StoreError {
        let source = format!("read {}: {e}", local.display()).into();
        self.err(
            Op::Get,
            path,
            object_store::Error::Generic {
                store: "LocalFileSystem",
                source,
            },
        )
    }

    /// Starts the GET of `key` (the body is read by the caller).
    async fn open_get(&self, key: &str) -> StoreResult<(StorePath, object_store::GetResult)> {
        let path = self.path(key);
        let r = self
            .store()
            .get(&path)
            .await
            .map_err(|e| self.err(Op::Get, &path, e))?;
        Ok((path, r))
    }

    /// Downloads a zstd-compressed object into `dest`, opening (encrypted group) and
    /// decompressing as it streams (logs can be large).
    pub async fn get_zstd_to_file(&self, key: &str, dest: &std::path::Path) -> StoreResult<u64> {
        match self.get_zstd(key, dest, 0).await? {
            Fetched::File(n) => Ok(n),
            Fetched::Memory(b) => Err(self.local(
                Op::Get,
                &self.path(key),
                format!(
                    "internal: {} bytes kept in memory, not written to {}",
                    b.len(),
                    dest.display()
                ),
            )),
        }
    }

    /// A zstd-compressed object, opened (encrypted group) and decompressed: kept in memory
    /// when it decompresses to at most `limit` bytes (0: never), else streamed into `dest`
    /// (a huge log is never held whole). A local store's object is read straight from its
    /// file; a remote one of at most `limit` stored bytes is downloaded into memory, a
    /// larger one streams through a scratch copy beside `dest`.
    pub async fn get_zstd(
        &self,
        key: &str,
        dest: &std::path::Path,
        limit: u64,
    ) -> StoreResult<Fetched> {
        use futures::StreamExt;
        self.check_keying(false).await?;
        let (path, r) = self.open_get(key).await?;
        let range = r.range.clone();
        let (crypto, k, dst) = (self.crypto().cloned(), key.to_string(), dest.to_path_buf());
        let local = |what: &str, p: &std::path::Path, e: std::io::Error| {
            self.local(Op::Get, &path, format!("{what} {}: {e}", p.display()))
        };
        let decoded = match r.payload {
            object_store::GetResultPayload::File(mut input, _) => {
                tokio::task::spawn_blocking(move || {
                    use std::io::{Read, Seek};
                    input
                        .seek(std::io::SeekFrom::Start(range.start))
                        .map_err(|e| (false, e))?;
                    let bounded = input.take(range.end - range.start);
                    let buffered = std::io::BufReader::with_capacity(1 << 20, bounded);
                    decode(crypto.as_deref(), &k, buffered, limit, &dst)
                })
                .await
            }
            payload if limit > 0 && r.meta.size <= limit => {
                let body = object_store::GetResult { payload, ..r }
                    .bytes()
                    .await
                    .map_err(|e| self.err(Op::Get, &path, e))?;
                tokio::task::spawn_blocking(move || {
                    decode(
                        crypto.as_deref(),
                        &k,
                        std::io::Cursor::new(body),
                        limit,
                        &dst,
                    )
                })
                .await
            }
            payload => {
                let compressed = dest.with_extension("zst-part");
                let mut out = tokio::fs::File::create(&compressed)
                    .await
                    .map_err(|e| local("create", &compressed, e))?;
                let mut stream = object_store::GetResult { payload, ..r }.into_stream();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| self.err(Op::Get, &path, e))?;
                    tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                        .await
                        .map_err(|e| local("write", &compressed, e))?;
                }
                // A tokio file may still hold the last write: flush before reading it back.
                tokio::io::AsyncWriteExt::flush(&mut out)
                    .await
                    .map_err(|e| local("write", &compressed, e))?;
                drop(out);
                let src = compressed.clone();
                let n = tokio::task::spawn_blocking(move || {
                    let input = std::fs::File::open(&src).map_err(|e| (false, e))?;
                    let buffered = std::io::BufReader::with_capacity(1 << 20, input);
                    decode(crypto.as_deref(), &k, buffered, 0, &dst)
                })
                .await;
                let _ = std::fs::remove_file(&compressed);
                n
            }
        };
        let decoded = decoded
            .map_err(|e| self.local(Op::Get, &path, format!("decompress worker failed: {e}")))?;
        decoded.map_err(
            |(damage, e)| match (hrl::crypto::CryptoError::from_io(&e), damage) {
                // Refused by the opener: whatever was written to `dest` is discarded by the caller.
                (Some(c), _) => self.refused(key, c),
                (None, true) => self.damaged("object", key, format!("not valid zstd: {e}")),
                (None, false) => local("decompress into", dest, e),
            },
        )
    }

    /// Whether the group holds any object at all (stops at the first one listed).
    pub async fn has_any_object(&self) -> StoreResult<bool> {
        use futures::StreamExt;
        let mut objects = self.store().list(Some(&self.root));
        match objects.next().await {
            None => Ok(false),
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(self.err(Op::List, &self.root, e)),
        }
    }

    /// Names (last path part) of the objects directly or indirectly under `dir`.
    pub async fn list_names(&self, dir: &str) -> StoreResult<Vec<String>> {
        Ok(self
            .list_meta(dir)
            .await?
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }
}

/// An object of a group as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the group (`chunks/ab/ab..`, `disks/..`).
    pub key: String,
    pub size: u64,
    /// Last write, ns since the Unix epoch (the store's clock).
    pub modified_ns: u64,
}

/// ns since the Unix epoch of a listing's or HEAD's timestamp (0 before 1970 or past 2262).
macro_rules! to_ns {
    ($t:expr) => {
        $t.timestamp_nanos_opt().map_or(0, |n| n.max(0) as u64)
    };
}

impl GroupStore {
    /// Every object under `dir` (relative to the group), with size and write time: what
    /// retention's collection weighs.
    pub async fn list_objects(&self, dir: &str) -> StoreResult<Vec<ObjectInfo>> {
        let root = format!("{}/", self.root.as_ref());
        Ok(self
            .list_meta(dir)
            .await?
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let key = full.strip_prefix(root.as_str()).unwrap_or(full).to_string();
                ObjectInfo {
                    key,
                    size: m.size,
                    modified_ns: to_ns!(m.last_modified),
                }
            })
            .collect())
    }

    /// The listing of every object under `dir` (relative to the group).
    async fn list_meta(&self, dir: &str) -> StoreResult<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        let prefix = self.path(dir);
        self.store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(Op::List, &prefix, e))
    }

    /// When `key` was last written (HEAD), `None` if it is gone: collection checks again
    /// just before it deletes.
    pub async fn modified_ns(&self, key: &str) -> StoreResult<Option<u64>> {
        let path = self.path(key);
        match self.store().head(&path).await {
            Ok(m) => Ok(Some(to_ns!(m.last_modified))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(Op::Head, &path, e)),
        }
    }
}

/// Where [`GroupStore::get_zstd`] put an object.
#[derive(Debug)]
pub enum Fetched {
    /// Its plaintext, decompressed, in memory.
    Memory(Vec<u8>),
    /// Written to the file asked for: this many bytes.
    File(u64),
}

/// Opens (with `crypto`) and decompresses the stored bytes of `key` from `input`: into
/// memory while they stay within `limit` bytes, else (and all of it when `limit` is 0) into
/// `dest`. An error says whether it comes from the stored bytes (`true`: damage) or from
/// here.
fn decode<R: std::io::BufRead>(
    crypto: Option<&hrl::crypto::GroupCrypto>,
    key: &str,
    input: R,
    limit: u64,
    dest: &std::path::Path,
) -> Result<Fetched, (bool, std::io::Error)> {
    use std::io::{Read, Write};
    let plain = sealing::open_reader(crypto, key, input).map_err(|e| (false, e))?;
    let mut dec = zstd::stream::Decoder::new(plain).map_err(|e| (true, e))?;
    let mut head = Vec::new();
    if limit > 0 {
        (&mut dec)
            .take(limit.saturating_add(1))
            .read_to_end(&mut head)
            .map_err(|e| (is_stream_damage(&e), e))?;
        if head.len() as u64 <= limit {
            return Ok(Fetched::Memory(head));
        }
    }
    let mut output = std::fs::File::create(dest).map_err(|e| (false, e))?;
    output.write_all(&head).map_err(|e| (false, e))?;
    let rest = std::io::copy(&mut dec, &mut output).map_err(|e| (is_stream_damage(&e), e))?;
    Ok(Fetched::File(head.len() as u64 + rest))
}

/// `range` of `file`, read with one `read` of its whole length into a buffer of that size
/// (not zeroed first): the kernel sees one request per object (read-ahead covers it), not
/// reads growing from 8 KiB as object_store's reader makes them.
fn read_range(file: &std::fs::File, range: std::ops::Range<u64>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let len = usize::try_from(range.end - range.start).map_err(std::io::Error::other)?;
    let mut reader = file;
    reader.seek(std::io::SeekFrom::Start(range.start))?;
    let mut buf = Vec::with_capacity(len);
    // `&File` reads to its end in one call sized by the file's length; `take` bounds a range.
    if range.end >= file.metadata()?.len() {
        reader.read_to_end(&mut buf)?;
    } else {
        reader.take(len as u64).read_to_end(&mut buf)?;
    }
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("read {} bytes of {len}", buf.len()),
        ));
    }
    Ok(buf)
}

/// Whether an error of a zstd stream copy comes from the compressed bytes (the decoder
/// reports bad input as these kinds) rather than from writing the output.
fn is_stream_damage(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{InvalidData, Other, UnexpectedEof};
    matches!(e.kind(), InvalidData | Other | UnexpectedEof)
}

/// zstd-compresses a file into another, streaming (logs can be large).
pub fn compress_file(input: &std::path::Path, output: &std::path::Path) -> anyhow::Result<u64> {
    use anyhow::Context;
    let mut r = std::io::BufReader::new(
        std::fs::File::open(input).with_context(|| format!("open {}", input.display()))?,
    );
    let out =
        std::fs::File::create(output).with_context(|| format!("create {}", output.display()))?;
    let mut enc = zstd::stream::Encoder::new(out, ZSTD_LEVEL).context("zstd encoder")?;
    std::io::copy(&mut r, &mut enc).with_context(|| format!("compress {}", input.display()))?;
    let out = enc.finish().context("finish zstd stream")?;
    Ok(out
        .metadata()
        .with_context(|| format!("stat {}", output.display()))?
        .len())
}

/// zstd-compresses a buffer.
pub fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL)
}
