//! Byte layout of the `.hrl` log (see docs/hrl-format.md): the 4 KiB header and the 64-byte
//! record header. Pure encoding and decoding; no I/O.

use crate::Digest;

/// First bytes of every log.
pub const MAGIC: [u8; 8] = *b"hrl-log\0";
/// Format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Size of the header block; records start here.
pub const HEADER_LEN: u64 = 4096;
/// The part of the header that never changes after creation; the seal hash covers it.
pub const HEADER_IMMUTABLE_LEN: usize = 256;
/// Offset of the state byte (open / closed / sealed), rewritten in place.
const STATE_OFFSET: usize = 256;
/// Offset of the header checksum: blake3 of bytes `0..HEADER_CHECKSUM_OFFSET`.
const HEADER_CHECKSUM_OFFSET: usize = 4064;
/// Size of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: u64 = 64;
/// Largest payload a record may carry; longer writes are split into several records.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Header flag: this log was produced by coalescing (see [`LogHeader::coalesced_from`]).
const FLAG_COALESCED: u16 = 1;

/// Lifecycle state kept in the header (cf. MS-HRL's end-of-log marker, zero while open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogState {
    /// Being appended to, or the writer died: the tail may be torn.
    Open,
    /// The writer closed it cleanly (clean unmount); appending may resume.
    Closed,
    /// Ends with a verified seal record; immutable.
    Sealed,
}

impl LogState {
    fn to_byte(self) -> u8 {
        match self {
            LogState::Open => 0,
            LogState::Closed => 1,
            LogState::Sealed => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(LogState::Open),
            1 => Some(LogState::Closed),
            2 => Some(LogState::Sealed),
            _ => None,
        }
    }
}

/// The log header: which disk, which place in its chain, and the state of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHeader {
    /// Random id given to a disk when tracking starts; stays across renames.
    pub disk_id: [u8; 16],
    /// Bumped when a disk's replication starts over (recreated disk, new base).
    pub generation: u64,
    /// Position of this log in the disk's chain (the last one it covers, if coalesced).
    pub sequence: u64,
    /// First sequence this log covers (equals `sequence` unless coalesced from several).
    pub first_sequence: u64,
    /// Tracking block size (bitmap extent), informational for readers.
    pub block_size: u32,
    /// Disk size when the log was opened.
    pub disk_size: u64,
    /// Creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// Chain hash of the previous log of this disk; all zero for the first log of a generation.
    pub prev_hash: Digest,
    /// For a coalesced log: the chain hash of the last log it replaces; the next log names
    /// that hash, so a coalesced log keeps the chain. All zero for an original log.
    pub coalesced_from: Digest,
    pub state: LogState,
}

impl LogHeader {
    /// A header for a new, open log.
    pub fn new(
        disk_id: [u8; 16],
        generation: u64,
        sequence: u64,
        disk_size: u64,
        prev_hash: Digest,
    ) -> Self {
        LogHeader {
            disk_id,
            generation,
            sequence,
            first_sequence: sequence,
            block_size: 64 * 1024,
            disk_size,
            created_ns: crate::now_ns(),
            prev_hash,
            coalesced_from: [0; 32],
            state: LogState::Open,
        }
    }

    pub fn is_coalesced(&self) -> bool {
        self.coalesced_from != [0; 32]
    }

    /// Encodes the full 4 KiB header block, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.is_coalesced() {
            FLAG_COALESCED
        } else {
            0
        };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..32].copy_from_slice(&self.disk_id);
        b[32..40].copy_from_slice(&self.generation.to_le_bytes());
        b[40..48].copy_from_slice(&self.sequence.to_le_bytes());
        b[48..56].copy_from_slice(&self.disk_size.to_le_bytes());
        b[56..64].copy_from_slice(&self.created_ns.to_le_bytes());
        b[64..96].copy_from_slice(&self.prev_hash);
        b[96..128].copy_from_slice(&self.coalesced_from);
        b[128..136].copy_from_slice(&self.first_sequence.to_le_bytes());
        b[STATE_OFFSET] = self.state.to_byte();
        let sum = blake3::hash(&b[..HEADER_CHECKSUM_OFFSET]);
        b[HEADER_CHECKSUM_OFFSET..HEADER_CHECKSUM_OFFSET + 32].copy_from_slice(sum.as_bytes());
        b
    }

    /// Decodes and checks a header block; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < HEADER_LEN as usize {
            return Err(format!(
                "header is {} bytes, expected {HEADER_LEN}",
                b.len()
            ));
        }
        if b[0..8] != MAGIC {
            return Err("bad magic: this is not an .hrl log".into());
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(format!(
                "format version {version} is not supported (this build reads {VERSION})"
            ));
        }
        let sum = blake3::hash(&b[..HEADER_CHECKSUM_OFFSET]);
        if sum.as_bytes()[..] != b[HEADER_CHECKSUM_OFFSET..HEADER_CHECKSUM_OFFSET + 32] {
            return Err("header checksum mismatch: the header is corrupt".into());
        }
        let flags = u16::from_le_bytes([b[10], b[11]]);
        let state = LogState::from_byte(b[STATE_OFFSET])
            .ok_or_else(|| format!("unknown state byte {}", b[STATE_OFFSET]))?;
        let h = LogHeader {
            block_size: u32_at(b, 12),
            disk_id: b[16..32].try_into().map_err(|_| "short disk id")?,
            generation: u64_at(b, 32),
            sequence: u64_at(b, 40),
            disk_size: u64_at(b, 48),
            created_ns: u64_at(b, 56),
            prev_hash: b[64..96].try_into().map_err(|_| "short prev hash")?,
            coalesced_from: b[96..128].try_into().map_err(|_| "short coalesced hash")?,
            first_sequence: u64_at(b, 128),
            state,
        };
        if (flags & FLAG_COALESCED != 0) != h.is_coalesced() || flags & !FLAG_COALESCED != 0 {
            return Err(format!("inconsistent header flags {flags:#x}"));
        }
        if h.first_sequence > h.sequence {
            return Err(format!(
                "first sequence {} is after sequence {}",
                h.first_sequence, h.sequence
            ));
        }
        Ok(h)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Record kinds as stored in byte 0 of a record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Write = 1,
    Truncate = 2,
    Zero = 3,
    Punch = 4,
    Flush = 5,
    Rename = 6,
    Delete = 7,
    Seal = 15,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Write,
            2 => Kind::Truncate,
            3 => Kind::Zero,
            4 => Kind::Punch,
            5 => Kind::Flush,
            6 => Kind::Rename,
            7 => Kind::Delete,
            15 => Kind::Seal,
            _ => return None,
        })
    }
}

/// The fixed 64-byte part of a record: kind, payload length, two operands, time, checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: Kind,
    pub payload_len: u32,
    pub a: u64,
    pub b: u64,
    pub time_ns: u64,
    /// blake3 of bytes 0..32 of the record header followed by the payload.
    pub checksum: Digest,
}

impl RecordHeader {
    /// Builds the header of a record, computing its checksum over `payload`.
    pub fn seal_over(kind: Kind, a: u64, b: u64, time_ns: u64, payload: &[u8]) -> RecordHeader {
        let mut h = RecordHeader {
            kind,
            payload_len: payload.len() as u32,
            a,
            b,
            time_ns,
            checksum: [0; 32],
        };
        h.checksum = h.compute_checksum(payload);
        h
    }

    fn prefix(&self) -> [u8; 32] {
        let mut p = [0u8; 32];
        p[0] = self.kind as u8;
        p[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        p[8..16].copy_from_slice(&self.a.to_le_bytes());
        p[16..24].copy_from_slice(&self.b.to_le_bytes());
        p[24..32].copy_from_slice(&self.time_ns.to_le_bytes());
        p
    }

    pub fn compute_checksum(&self, payload: &[u8]) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&self.prefix());
        h.update(payload);
        *h.finalize().as_bytes()
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN as usize] {
        let mut b = [0u8; RECORD_HEADER_LEN as usize];
        b[..32].copy_from_slice(&self.prefix());
        b[32..].copy_from_slice(&self.checksum);
        b
    }

    /// Decodes the fixed part; `None` when the bytes cannot be a record (unknown kind,
    /// reserved bytes set, oversized payload): the reader treats that as the torn tail.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN as usize]) -> Option<RecordHeader> {
        let kind = Kind::from_byte(b[0])?;
        if b[1..4] != [0, 0, 0] {
            return None;
        }
        let payload_len = u32_at(b, 4);
        if payload_len > MAX_PAYLOAD {
            return None;
        }
        let mut checksum = [0u8; 32];
        checksum.copy_from_slice(&b[32..64]);
        Some(RecordHeader {
            kind,
            payload_len,
            a: u64_at(b, 8),
            b: u64_at(b, 16),
            time_ns: u64_at(b, 24),
            checksum,
        })
    }
}

/// The running hash that a seal record commits to: blake3 over the immutable header part
/// followed by the checksum of every record before the seal. Each checksum covers its whole
/// record, so this hash covers the whole log while reading every byte only once.
#[derive(Clone)]
pub struct SealHasher(blake3::Hasher);

impl SealHasher {
    pub fn new(header: &LogHeader) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(&header.encode()[..HEADER_IMMUTABLE_LEN]);
        SealHasher(h)
    }
    pub fn add(&mut self, record_checksum: &Digest) {
        self.0.update(record_checksum);
    }
    pub fn finish(&self) -> Digest {
        *self.0.finalize().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checksum() {
        let mut h = LogHeader::new([7; 16], 3, 9, 1 << 30, [1; 32]);
        h.state = LogState::Closed;
        let b = h.encode();
        assert_eq!(LogHeader::decode(&b).unwrap(), h);
        for bit in [0usize, 8 * 20, 8 * 256, 8 * 300, 8 * 4070] {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(
                LogHeader::decode(&c).is_err(),
                "flip at bit {bit} not detected"
            );
        }
    }

    #[test]
    fn record_header_round_trip() {
        let r = RecordHeader::seal_over(Kind::Write, 4096, 3, 5, b"abc");
        let e = r.encode();
        assert_eq!(RecordHeader::decode(&e), Some(r));
        assert_eq!(r.compute_checksum(b"abc"), r.checksum);
        assert_ne!(r.compute_checksum(b"abd"), r.checksum);
    }
}
