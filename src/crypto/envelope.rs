//! The sealed-object envelope (docs/encryption.md): a 36-byte header, then the plaintext in
//! segments of 2^`seg_log2` bytes (1 MiB), each XChaCha20-Poly1305 ciphertext + 16-byte tag.
//!
//! ```text
//! 0   8  magic "hrl-enc\0"
//! 8   1  version (1)
//! 9   1  object kind (ObjectKind as u8)
//! 10  1  segment size, log2 (20)
//! 11  1  reserved (0)
//! 12 24  nonce N (random, per object)
//! 36  …  segments: ciphertext || tag; every one full size but the last (which may be empty)
//! ```
//!
//! Segment `i` uses N with its last 5 bytes XORed with (i as u32 BE, 1 if last else 0), the
//! STREAM construction: segments cannot be reordered, dropped or cut off at a boundary (the
//! last one must carry the last flag). Every segment's associated data is the header's first
//! 12 bytes, the group and the object's key, so an object is refused under any other name,
//! kind, version or group. One writer and one reader exist per object, so large logs are
//! sealed and opened streaming, one segment in memory at a time.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use super::{CryptoError, ObjectKind};

pub const MAGIC: [u8; 8] = *b"hrl-enc\0";
pub const VERSION: u8 = 1;
/// Bytes before the first segment.
pub const HEADER_LEN: usize = 36;
/// Poly1305 tag after every segment.
pub const TAG_LEN: usize = 16;
/// The shortest envelope: a header and one empty segment.
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN;
/// Segment size the writer uses: 1 MiB (a default 256 KiB chunk is one segment).
pub const SEGMENT_LOG2: u8 = 20;
/// Segment sizes a reader accepts (4 KiB to 16 MiB): bounds the memory an object can demand.
const SEGMENT_LOG2_RANGE: std::ops::RangeInclusive<u8> = 12..=24;
const FIXED_LEN: usize = 12;

/// One object being sealed or opened: the cipher, its associated data and nonce.
pub(super) struct ObjectCtx<'a> {
    aead: &'a XChaCha20Poly1305,
    key: &'a str,
    ad: Vec<u8>,
    nonce: [u8; 24],
    seg: usize,
}

fn fixed_header(kind: ObjectKind, seg_log2: u8) -> [u8; FIXED_LEN] {
    let mut h = [0u8; FIXED_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8] = VERSION;
    h[9] = kind as u8;
    h[10] = seg_log2;
    h
}

fn associated_data(fixed: &[u8], group: &str, key: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(FIXED_LEN + 8 + group.len() + key.len());
    ad.extend_from_slice(fixed);
    ad.extend_from_slice(&(group.len() as u32).to_le_bytes());
    ad.extend_from_slice(group.as_bytes());
    ad.extend_from_slice(&(key.len() as u32).to_le_bytes());
    ad.extend_from_slice(key.as_bytes());
    ad
}

impl<'a> ObjectCtx<'a> {
    /// A new object: a fresh random nonce. Returns the context and the header to write first.
    pub(super) fn for_sealing(
        aead: &'a XChaCha20Poly1305,
        group: &str,
        key: &'a str,
        kind: ObjectKind,
    ) -> Result<(Self, [u8; HEADER_LEN]), CryptoError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| CryptoError::Random(e.to_string()))?;
        let fixed = fixed_header(kind, SEGMENT_LOG2);
        let mut header = [0u8; HEADER_LEN];
        header[..FIXED_LEN].copy_from_slice(&fixed);
        header[FIXED_LEN..].copy_from_slice(&nonce);
        let ctx = ObjectCtx {
            aead,
            key,
            ad: associated_data(&fixed, group, key),
            nonce,
            seg: 1 << SEGMENT_LOG2,
        };
        Ok((ctx, header))
    }

    /// Parses and checks a header read from the store (`header` is at least HEADER_LEN).
    pub(super) fn for_opening(
        aead: &'a XChaCha20Poly1305,
        group: &str,
        key: &'a str,
        kind: ObjectKind,
        header: &[u8],
    ) -> Result<Self, CryptoError> {
        let k = || key.to_string();
        if header[..8] != MAGIC {
            return Err(CryptoError::NotEncrypted { key: k() });
        }
        if header[8] != VERSION {
            return Err(CryptoError::UnsupportedVersion {
                key: k(),
                version: header[8],
                max: VERSION,
            });
        }
        if header[9] != kind as u8 {
            let found = ObjectKind::from_byte(header[9])
                .map_or_else(|| format!("unknown kind {}", header[9]), |f| f.to_string());
            return Err(CryptoError::WrongKind {
                key: k(),
                expected: kind,
                found,
            });
        }
        let seg_log2 = header[10];
        if !SEGMENT_LOG2_RANGE.contains(&seg_log2) {
            let why = "segment size out of range";
            return Err(CryptoError::BadHeader { key: k(), why });
        }
        if header[11] != 0 {
            let why = "reserved byte is not zero";
            return Err(CryptoError::BadHeader { key: k(), why });
        }
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&header[FIXED_LEN..HEADER_LEN]);
        Ok(ObjectCtx {
            aead,
            key,
            ad: associated_data(&header[..FIXED_LEN], group, key),
            nonce,
            seg: 1 << seg_log2,
        })
    }

    fn segment_nonce(&self, index: u64, last: bool) -> Result<XNonce, CryptoError> {
        let index = u32::try_from(index).map_err(|_| CryptoError::BadHeader {
            key: self.key.to_string(),
            why: "more than 2^32 segments",
        })?;
        let mut n = self.nonce;
        for (b, x) in n[19..23].iter_mut().zip(index.to_be_bytes()) {
            *b ^= x;
        }
        n[23] ^= u8::from(last);
        Ok(XNonce::from(n))
    }

    /// Encrypts one segment in place, returning its tag.
    fn seal_segment(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<Tag, CryptoError> {
        let nonce = self.segment_nonce(index, last)?;
        self.aead
            .encrypt_inout_detached(&nonce, &self.ad, buf.into())
            .map_err(|_| CryptoError::BadHeader {
                key: self.key.to_string(),
                why: "segment too long for the cipher",
            })
    }

    /// Decrypts one segment (ciphertext || tag) in place; returns the plaintext length.
    fn open_segment(&self, index: u64, last: bool, buf: &mut [u8]) -> Result<usize, CryptoError> {
        let refused = || CryptoError::Refused {
            key: self.key.to_string(),
        };
        let n = buf.len().checked_sub(TAG_LEN).ok_or_else(refused)?;
        let (ct, tag) = buf.split_at_mut(n);
        let tag = Tag::try_from(&*tag).map_err(|_| refused())?;
        let nonce = self.segment_nonce(index, last)?;
        self.aead
            .decrypt_inout_detached(&nonce, &self.ad, ct.into(), &tag)
            .map_err(|_| refused())?;
        Ok(n)
    }

    /// Seals a whole plaintext in memory.
    pub(super) fn seal_all(
        &self,
        header: &[u8; HEADER_LEN],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let segments = plaintext.len().div_ceil(self.seg).max(1);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + segments * TAG_LEN);
        out.extend_from_slice(header);
        let mut pieces = plaintext.chunks(self.seg).peekable();
        if pieces.peek().is_none() {
            let tag = self.seal_segment(0, true, &mut [])?;
            out.extend_from_slice(&tag);
        }
        let mut index = 0u64;
        while let Some(piece) = pieces.next() {
            let start = out.len();
            out.extend_from_slice(piece);
            let last = pieces.peek().is_none();
            let tag = self.seal_segment(index, last, &mut out[start..])?;
            out.extend_from_slice(&tag);
            index += 1;
        }
        Ok(out)
    }

    /// Opens the segments of a whole envelope (`body` is everything after the header).
    pub(super) fn open_all(&self, body: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let seg_len = self.seg + TAG_LEN;
        let segments = body.len().div_ceil(seg_len).max(1);
        if body.is_empty() {
            // No segment at all: a cut right after the header.
            return Err(CryptoError::Refused {
                key: self.key.to_string(),
            });
        }
        let mut out = Vec::with_capacity(body.len());
        for (index, piece) in body.chunks(seg_len).enumerate() {
            let start = out.len();
            out.extend_from_slice(piece);
            let last = index + 1 == segments;
            let n = self.open_segment(index as u64, last, &mut out[start..])?;
            out.truncate(start + n);
        }
        Ok(out)
    }
}

/// Seals everything written to it into `inner`, one segment at a time; [`SealWriter::finish`]
/// writes the last segment. Dropped unfinished, the object lacks its last segment and is
/// refused when opened (an interrupted upload never passes for a whole one).
pub struct SealWriter<'a, W: Write> {
    ctx: ObjectCtx<'a>,
    inner: W,
    buf: Vec<u8>,
    index: u64,
}

impl<'a, W: Write> SealWriter<'a, W> {
    pub(super) fn new(
        ctx: ObjectCtx<'a>,
        header: &[u8; HEADER_LEN],
        mut inner: W,
    ) -> io::Result<Self> {
        inner.write_all(header)?;
        let buf = Vec::with_capacity(ctx.seg + TAG_LEN);
        Ok(SealWriter {
            ctx,
            inner,
            buf,
            index: 0,
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        let tag = self
            .ctx
            .seal_segment(self.index, last, &mut self.buf)
            .map_err(io::Error::other)?;
        self.buf.extend_from_slice(&tag);
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals the last segment and returns the inner writer (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        // A full segment goes out only once more data follows it: the last one is sealed by
        // `finish`, with the last flag.
        if self.buf.len() == self.ctx.seg {
            self.emit(false)?;
        }
        let n = data.len().min(self.ctx.seg - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens an envelope read from `inner`, one segment at a time. Every byte it returns is
/// authenticated, but the object is whole only when `read` returns 0: an error (a
/// [`CryptoError`] inside the `io::Error`, see [`CryptoError::from_io`]) means the object was
/// refused, and whatever was read of it before must be discarded.
pub struct OpenReader<'a, R: Read> {
    aead: &'a XChaCha20Poly1305,
    group: String,
    key: &'a str,
    kind: ObjectKind,
    /// Set once the header is read and checked.
    ctx: Option<ObjectCtx<'a>>,
    inner: R,
    /// Raw bytes read ahead (up to one segment and one byte, to tell the last one).
    raw: Vec<u8>,
    /// Plaintext of the current segment, and how much of it was returned.
    plain: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<'a, R: Read> OpenReader<'a, R> {
    pub(super) fn new(
        aead: &'a XChaCha20Poly1305,
        group: &str,
        key: &'a str,
        kind: ObjectKind,
        inner: R,
    ) -> Self {
        OpenReader {
            aead,
            group: group.to_string(),
            key,
            kind,
            ctx: None,
            inner,
            raw: Vec::new(),
            plain: Vec::new(),
            pos: 0,
            index: 0,
            done: false,
        }
    }

    /// Reads into `raw` until it holds `want` bytes or the input ends. Room is made for
    /// one whole segment only after a first read found more than a small object.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        let missing = want.saturating_sub(self.raw.len());
        let first = (&mut self.inner)
            .take(missing.min(64 << 10) as u64)
            .read_to_end(&mut self.raw)?;
        if first == 0 || self.raw.len() >= want {
            return Ok(());
        }
        self.raw.reserve_exact(want - self.raw.len());
        let rest = want.saturating_sub(self.raw.len()) as u64;
        (&mut self.inner).take(rest).read_to_end(&mut self.raw)?;
        Ok(())
    }

    /// Reads and checks the header (the first call), or hands back the checked one.
    fn context(&mut self) -> Result<ObjectCtx<'a>, CryptoError> {
        if let Some(ctx) = self.ctx.take() {
            return Ok(ctx);
        }
        self.fill(MIN_LEN)?;
        if self.raw.len() < MIN_LEN {
            return Err(CryptoError::Truncated {
                key: self.key.to_string(),
                len: self.raw.len(),
                min: MIN_LEN,
            });
        }
        let ctx = ObjectCtx::for_opening(self.aead, &self.group, self.key, self.kind, &self.raw)?;
        self.raw.drain(..HEADER_LEN);
        Ok(ctx)
    }

    /// Decrypts the next segment into `plain`. Every path either opens one segment (its tag
    /// verified) or fails: none returns without a verified tag.
    fn next_segment(&mut self) -> Result<(), CryptoError> {
        let ctx = self.context()?;
        let seg_len = ctx.seg + TAG_LEN;
        let opened = self.open_next(&ctx, seg_len);
        self.ctx = Some(ctx);
        opened
    }

    fn open_next(&mut self, ctx: &ObjectCtx<'a>, seg_len: usize) -> Result<(), CryptoError> {
        self.fill(seg_len + 1)?;
        let last = self.raw.len() <= seg_len;
        let take = self.raw.len().min(seg_len);
        let rest = self.raw.split_off(take);
        let mut piece = std::mem::replace(&mut self.raw, rest);
        let n = ctx.open_segment(self.index, last, &mut piece)?;
        piece.truncate(n);
        self.plain = piece;
        self.pos = 0;
        self.index += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment().map_err(CryptoError::into_io)?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl CryptoError {
    /// Wraps the error for a `Read`/`Write` interface (an I/O error stays itself).
    pub fn into_io(self) -> io::Error {
        match self {
            CryptoError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }

    /// The `CryptoError` inside an `io::Error` from [`OpenReader`] or [`SealWriter`], if any.
    pub fn from_io(e: &io::Error) -> Option<&CryptoError> {
        e.get_ref()?.downcast_ref::<CryptoError>()
    }
}
