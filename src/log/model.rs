//! The model of one disk after a chain of logs: which source holds each byte — the base the
//! logs were replayed onto, a log record's payload, or zeros. Built from the base's size and
//! the records of the logs, folded in order onto a range map (the same effect
//! [`super::apply_logs`] has on an image, without writing one). The shipper's mount reads
//! through it (only the base chunks and payloads a read touches) and restore writes each
//! block of the final disk once from it (no base chunk the logs overwrite is fetched).

use std::collections::BTreeMap;

use super::{Record, RecordMeta, RECORD_HEADER_LEN};

/// Where the bytes of a range come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The base copy, at the same disk offset.
    Base,
    /// Log `log` (index into the disk's local logs), payload starting at `at` in that file
    /// for the range's first byte.
    Log { log: usize, at: u64 },
}

/// A piece of a read: `len` bytes at disk offset `offset`, from `source` (`None`: zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub len: u64,
    pub source: Option<Source>,
}

/// The disk as a map of non-overlapping ranges `start -> (len, source)`; bytes no range
/// covers read as zero. Nothing is kept past `size`.
#[derive(Debug, Clone)]
pub struct DiskModel {
    ranges: BTreeMap<u64, (u64, Source)>,
    size: u64,
}

impl DiskModel {
    /// The base alone: `base_size` bytes from the base copy.
    pub fn new(base_size: u64) -> DiskModel {
        let mut ranges = BTreeMap::new();
        if base_size > 0 {
            ranges.insert(0, (base_size, Source::Base));
        }
        DiskModel {
            ranges,
            size: base_size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Ranges in the map (for the mount's log line and tests).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges that hold something (not zeros), in disk order: `(offset, len, source)`.
    /// Never past [`DiskModel::size`].
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64, Source)> + '_ {
        self.ranges.iter().map(|(&s, &(l, src))| (s, l, src))
    }

    /// Lays one verified record of log `log` over the model; `meta` is where the record sits
    /// in that log's file (a write's payload follows its 64-byte header there).
    pub fn apply(&mut self, log: usize, meta: &RecordMeta, record: &Record) {
        match record {
            Record::Write { offset, data } => self.write(
                *offset,
                data.len() as u64,
                log,
                meta.offset + RECORD_HEADER_LEN,
            ),
            Record::Zero { offset, len } | Record::Punch { offset, len } => {
                self.zero(*offset, *len)
            }
            Record::Truncate { size } => self.truncate(*size),
            Record::Flush | Record::Rename { .. } | Record::Delete | Record::Seal(_) => {}
        }
    }

    /// A write record: `len` bytes of log `log` from file offset `at` now hold
    /// `[offset, offset + len)`; the disk grows if the write ends past its end.
    pub fn write(&mut self, offset: u64, len: u64, log: usize, at: u64) {
        if len == 0 {
            return;
        }
        self.clear(offset, len);
        self.ranges.insert(offset, (len, Source::Log { log, at }));
        self.size = self.size.max(offset + len);
    }

    /// A zero or punch record: the range reads as zero; the size never changes.
    pub fn zero(&mut self, offset: u64, len: u64) {
        self.clear(offset, len);
    }

    /// A truncate record: nothing survives past `size`; growing reads as zero.
    pub fn truncate(&mut self, size: u64) {
        if size < self.size {
            self.clear(size, u64::MAX - size);
        }
        self.size = size;
    }

    /// Removes `[offset, offset + len)` from the map, splitting ranges that straddle it.
    fn clear(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len);
        // The range starting before `offset` may reach into it.
        if let Some((&s, &(l, src))) = self.ranges.range(..offset).next_back() {
            if s + l > offset {
                self.ranges.insert(s, (offset - s, src));
                if s + l > end {
                    self.ranges
                        .insert(end, (s + l - end, shifted(src, end - s)));
                }
            }
        }
        let inside: Vec<u64> = self.ranges.range(offset..end).map(|(&s, _)| s).collect();
        for s in inside {
            let Some((l, src)) = self.ranges.remove(&s) else {
                continue;
            };
            if s + l > end {
                self.ranges
                    .insert(end, (s + l - end, shifted(src, end - s)));
            }
        }
    }

    /// The pieces that make up `[offset, offset + len)` (clipped to the disk), in order,
    /// gaps as zero pieces.
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let end = offset.saturating_add(len).min(self.size);
        let mut out = Vec::new();
        if offset >= end {
            return out;
        }
        let mut pos = offset;
        let first = self
            .ranges
            .range(..=offset)
            .next_back()
            .filter(|(&s, &(l, _))| s + l > offset)
            .map(|(&s, &v)| (s, v));
        let rest = self.ranges.range(offset.saturating_add(1)..end);
        for (s, (l, src)) in first.into_iter().chain(rest.map(|(&s, &v)| (s, v))) {
            if s > pos {
                out.push(Piece {
                    offset: pos,
                    len: s - pos,
                    source: None,
                });
                pos = s;
            }
            let piece_end = (s + l).min(end);
            if piece_end > pos {
                out.push(Piece {
                    offset: pos,
                    len: piece_end - pos,
                    source: Some(shifted(src, pos - s)),
                });
                pos = piece_end;
            }
        }
        if end > pos {
            out.push(Piece {
                offset: pos,
                len: end - pos,
                source: None,
            });
        }
        out
    }
}

/// The source of a range's byte `by` bytes after its start.
fn shifted(src: Source, by: u64) -> Source {
    match src {
        Source::Base => Source::Base,
        Source::Log { log, at } => Source::Log { log, at: at + by },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes of the model, with base byte i = (i % 251) + 1 and log bytes named by source.
    fn render(m: &DiskModel, logs: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in m.pieces(0, m.size()) {
            for i in 0..p.len {
                out.push(match p.source {
                    None => 0,
                    Some(Source::Base) => ((p.offset + i) % 251 + 1) as u8,
                    Some(Source::Log { log, at }) => logs[log][(at + i) as usize],
                });
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, u64),
        Zero(u64, u64),
        Truncate(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..300, 1u64..80).prop_map(|(o, l)| Op::Write(o, l)),
            1 => (0u64..300, 1u64..80).prop_map(|(o, l)| Op::Zero(o, l)),
            1 => (0u64..300).prop_map(Op::Truncate),
        ]
    }

    proptest! {
        /// The model renders what replaying the same records onto a byte vector gives.
        #[test]
        fn model_equals_replay(base in 0u64..260, ops in proptest::collection::vec(op(), 0..30),
                               reads in proptest::collection::vec((0u64..400, 0u64..200), 1..10)) {
            let mut image: Vec<u8> = (0..base).map(|i| (i % 251 + 1) as u8).collect();
            let mut m = DiskModel::new(base);
            let mut logs = Vec::new();
            for (n, o) in ops.iter().enumerate() {
                match *o {
                    Op::Write(off, len) => {
                        let data: Vec<u8> = (0..len).map(|i| (n as u64 * 7 + i) as u8 | 0x80).collect();
                        let end = (off + len) as usize;
                        if image.len() < end { image.resize(end, 0); }
                        image[off as usize..end].copy_from_slice(&data);
                        // The payload sits after 10 bytes of "header" in its log.
                        let mut log = vec![0u8; 10];
                        log.extend_from_slice(&data);
                        logs.push(log);
                        m.write(off, len, logs.len() - 1, 10);
                    }
                    Op::Zero(off, len) => {
                        let s = (off as usize).min(image.len());
                        let e = ((off + len) as usize).min(image.len());
                        image[s..e].fill(0);
                        m.zero(off, len);
                    }
                    Op::Truncate(size) => {
                        image.resize(size as usize, 0);
                        m.truncate(size);
                    }
                }
            }
            prop_assert_eq!(m.size(), image.len() as u64);
            let whole = render(&m, &logs);
            prop_assert_eq!(&whole, &image);
            for (off, len) in reads {
                let pieces = m.pieces(off, len);
                let want_end = (off + len).min(m.size());
                let got: u64 = pieces.iter().map(|p| p.len).sum();
                prop_assert_eq!(got, want_end.saturating_sub(off));
                if let Some(p) = pieces.first() { prop_assert_eq!(p.offset, off); }
            }
        }
    }
}
