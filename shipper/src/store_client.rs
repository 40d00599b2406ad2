//! A group's view of a target: immutable put-if-absent objects, zstd, listing.

use anyhow::{anyhow, Context, Result};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::target::Target;

/// zstd level for chunks and logs: fast, and most of the gain.
const ZSTD_LEVEL: i32 = 3;

/// The objects of one protection group in a target.
#[derive(Clone, Debug)]
pub struct GroupStore {
    pub target: Target,
    pub group: String,
    root: StorePath,
}

/// What a put of an immutable object did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    /// An object with that key was there already (same content by construction).
    Existed,
}

impl GroupStore {
    pub fn new(target: Target, group: &str) -> Result<GroupStore> {
        if group.is_empty() || group.contains('/') || group.starts_with('.') {
            anyhow::bail!("group name {group:?} is not valid: use a non-empty name without '/' that does not start with '.'");
        }
        let root = target.prefix.child(group);
        Ok(GroupStore {
            target,
            group: group.to_string(),
            root,
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

    /// Writes `bytes` at `key` unless an object is there already. Uses conditional create
    /// where the store has it; where it does not, checks first (objects are immutable and
    /// content-named, so a race writes the same bytes).
    pub async fn put_immutable(&self, key: &str, bytes: Vec<u8>) -> Result<Put> {
        let path = self.path(key);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store()
            .put_opts(&path, PutPayload::from(bytes.clone()), opts)
            .await
        {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Existed),
            Err(object_store::Error::NotImplemented)
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.exists(key).await? {
                    return Ok(Put::Existed);
                }
                self.store()
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .with_context(|| format!("put {path} in {}", self.target.url))?;
                Ok(Put::Created)
            }
            Err(e) => Err(anyhow!(e).context(format!("put {path} in {}", self.target.url))),
        }
    }

    /// Uploads a local file at `key` unless an object is there already; large files go up
    /// in parts, streamed (a multipart upload is not conditional, which is fine for
    /// immutable, deterministic content).
    pub async fn put_file_immutable(&self, key: &str, file: &std::path::Path) -> Result<Put> {
        const SINGLE_PUT_MAX: u64 = 32 << 20;
        const PART: usize = 16 << 20;
        let len = std::fs::metadata(file)
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        if len <= SINGLE_PUT_MAX {
            let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
            return self.put_immutable(key, bytes).await;
        }
        if self.exists(key).await? {
            return Ok(Put::Existed);
        }
        let path = self.path(key);
        let mut upload = self
            .store()
            .put_multipart(&path)
            .await
            .with_context(|| format!("start upload of {path} to {}", self.target.url))?;
        let done = match Self::send_parts(upload.as_mut(), file, PART).await {
            Ok(()) => upload
                .complete()
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            // The parts sent so far would stay in the bucket (stored and billed, never
            // visible) until aborted; a retry starts a new upload.
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%path, "cannot abort the interrupted multipart upload (a bucket lifecycle rule for incomplete uploads removes it): {abort}");
            }
            return Err(e.context(format!("upload {path} to {}", self.target.url)));
        }
        Ok(Put::Created)
    }

    /// Streams `file` into `upload`, `part` bytes a part, up to 4 parts in flight.
    async fn send_parts(
        upload: &mut dyn object_store::MultipartUpload,
        file: &std::path::Path,
        part: usize,
    ) -> Result<()> {
        use futures::StreamExt;
        use std::io::Read;
        let f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
        let mut f = std::io::BufReader::new(f);
        let mut in_flight = futures::stream::FuturesUnordered::new();
        loop {
            let mut buf = Vec::with_capacity(part);
            let n = (&mut f)
                .take(part as u64)
                .read_to_end(&mut buf)
                .with_context(|| format!("read {}", file.display()))?;
            if n == 0 {
                break;
            }
            while in_flight.len() >= 4 {
                if let Some(r) = in_flight.next().await {
                    r?;
                }
            }
            in_flight.push(upload.put_part(PutPayload::from(buf)));
        }
        while let Some(r) = in_flight.next().await {
            r?;
        }
        Ok(())
    }

    /// Writes an object that must not exist yet (a recovery-point manifest). Returns
    /// `Existed` if another writer committed that key first. When the object there holds
    /// exactly `bytes`, it is this write's own (the store kept it but the reply was lost,
    /// and the retry found it): `Created`. A manifest names its commit instant in ns and its
    /// host, so another writer's never has the same bytes.
    pub async fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<Put> {
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

    pub async fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        match self.store().head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("head {path} in {}", self.target.url))),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        let r = self
            .store()
            .get(&path)
            .await
            .with_context(|| format!("get {path} from {}", self.target.url))?;
        let b = r
            .bytes()
            .await
            .with_context(|| format!("read {path} from {}", self.target.url))?;
        Ok(b.to_vec())
    }

    /// Downloads a zstd-compressed object into `dest`, decompressing as it streams (logs can
    /// be large).
    pub async fn get_zstd_to_file(&self, key: &str, dest: &std::path::Path) -> Result<u64> {
        use futures::StreamExt;
        let path = self.path(key);
        let r = self
            .store()
            .get(&path)
            .await
            .with_context(|| format!("get {path} from {}", self.target.url))?;
        let compressed = dest.with_extension("zst-part");
        let mut out = tokio::fs::File::create(&compressed)
            .await
            .with_context(|| format!("create {}", compressed.display()))?;
        let mut stream = r.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("read {path} from {}", self.target.url))?;
            tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                .await
                .with_context(|| format!("write {}", compressed.display()))?;
        }
        // A tokio file may still hold the last write: flush before reading it back.
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .with_context(|| format!("write {}", compressed.display()))?;
        drop(out);
        let (src, dst) = (compressed.clone(), dest.to_path_buf());
        let what = format!(
            "object {path} in {} is damaged (not valid zstd); the store is corrupt",
            self.target.url
        );
        let n = tokio::task::spawn_blocking(move || -> Result<u64> {
            let input =
                std::fs::File::open(&src).with_context(|| format!("open {}", src.display()))?;
            let mut dec = zstd::stream::Decoder::new(input).context("zstd decoder")?;
            let mut output =
                std::fs::File::create(&dst).with_context(|| format!("create {}", dst.display()))?;
            std::io::copy(&mut dec, &mut output).context(what)
        })
        .await
        .context("decompress worker failed")?;
        let _ = std::fs::remove_file(&compressed);
        n
    }

    /// Names (last path part) of the objects directly or indirectly under `dir`.
    pub async fn list_names(&self, dir: &str) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let prefix = self.path(dir);
        let metas: Vec<_> = self
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .with_context(|| format!("list {prefix} in {}", self.target.url))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }
}

/// zstd-compresses a file into another, streaming (logs can be large).
pub fn compress_file(input: &std::path::Path, output: &std::path::Path) -> Result<u64> {
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
pub fn compress(data: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, ZSTD_LEVEL).context("zstd compression failed")
}
