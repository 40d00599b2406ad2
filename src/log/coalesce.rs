//! Coalescing: rewriting one or more consecutive sealed logs of a disk into the smallest log
//! with the same effect (a block written ten times ships once). The result keeps the chain:
//! it names the first log's previous hash, and the next log still finds the hash it names in
//! the result's `coalesced_from`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::apply::verify_chain;
use super::format::{LogHeader, RECORD_HEADER_LEN};
use super::reader::LogReader;
use super::writer::LogWriter;
use super::{LogError, Record, SealInfo};

/// What an extent of the coalesced result holds.
#[derive(Debug, Clone, Copy)]
enum Piece {
    /// Bytes found in source log `src` at file position `pos`.
    Data { src: usize, pos: u64 },
    /// Zeros (`punch`: deallocated).
    Zero { punch: bool },
}

impl Piece {
    fn advanced(self, by: u64) -> Piece {
        match self {
            Piece::Data { src, pos } => Piece::Data { src, pos: pos + by },
            z => z,
        }
    }
}

/// Disjoint extents keyed by start: `start -> (end, piece)`; later changes replace earlier ones.
#[derive(Default)]
struct ExtentMap(BTreeMap<u64, (u64, Piece)>);

impl ExtentMap {
    fn insert(&mut self, start: u64, end: u64, piece: Piece) {
        if start >= end {
            return;
        }
        self.cut(start, end);
        self.0.insert(start, (end, piece));
    }

    /// Removes `[start, end)` from the map, keeping the parts of extents outside it.
    fn cut(&mut self, start: u64, end: u64) {
        let overlapping: Vec<(u64, u64, Piece)> = self
            .0
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(s, (e, p))| (*s, *e, *p))
            .collect();
        for (s, e, p) in overlapping {
            self.0.remove(&s);
            if s < start {
                self.0.insert(s, (start, p));
            }
            if e > end {
                self.0.insert(end, (e, p.advanced(end - s)));
            }
        }
    }
}

/// Data gathered for one write record.
#[derive(Default)]
struct PendingWrite {
    offset: u64,
    data: Vec<u8>,
}

impl PendingWrite {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
    fn flush(&mut self, out: &mut LogWriter) -> Result<(), LogError> {
        if !self.data.is_empty() {
            out.append_write(self.offset, &self.data)?;
            self.data.clear();
        }
        Ok(())
    }
}

/// True when the byte before `end` lies in a data extent (so replaying it grows the file to `end`).
fn ends_in_data(extents: &ExtentMap, end: u64) -> bool {
    extents
        .0
        .range(..end)
        .next_back()
        .is_some_and(|(_, (e, p))| *e >= end && matches!(p, Piece::Data { .. }))
}

/// Coalesces the sealed, chained logs `inputs` (in sequence order) into a new sealed log at
/// `output`, which must not exist.
pub fn coalesce<P: AsRef<Path>>(inputs: &[P], output: &Path) -> Result<SealInfo, LogError> {
    let verified = verify_chain(inputs, None)?;
    let (Some(first), Some(last)) = (verified.first(), verified.last()) else {
        return Err(LogError::BadRecord {
            path: output.to_path_buf(),
            offset: 0,
            reason: "nothing to coalesce: no input logs".into(),
        });
    };
    let folded = Folded::read(inputs)?;
    let mut header = LogHeader::new(
        first.header.disk_id,
        first.header.generation,
        last.header.sequence,
        first.header.disk_size,
        first.header.prev_hash,
    );
    header.first_sequence = first.header.first_sequence;
    header.block_size = first.header.block_size;
    header.coalesced_from = last.chain_hash();

    let mut out = LogWriter::create(output, &header)?;
    let result = folded.write(inputs, &mut out).and_then(|()| out.seal());
    if result.is_err() {
        let _ = std::fs::remove_file(output);
    }
    result
}

/// The net effect of a chain of logs: the final piece of every changed range, the size
/// changes and the rename/delete events, with the source files the data pieces point into.
struct Folded {
    extents: ExtentMap,
    /// Smallest size a truncate cut the disk to.
    min_size: Option<u64>,
    /// The size tracked since the first truncate.
    size: Option<u64>,
    /// Without any truncate the size is max(base size, furthest write end): the latter.
    write_end: u64,
    /// Rename and delete events, in order (consecutive renames: only the last).
    events: Vec<Record>,
    sources: Vec<File>,
}

impl Folded {
    /// Reads every record of `inputs` in order into their net effect.
    fn read<P: AsRef<Path>>(inputs: &[P]) -> Result<Folded, LogError> {
        let mut folded = Folded {
            extents: ExtentMap::default(),
            min_size: None,
            size: None,
            write_end: 0,
            events: Vec::new(),
            sources: Vec::with_capacity(inputs.len()),
        };
        for (src, input) in inputs.iter().enumerate() {
            let path = input.as_ref();
            folded
                .sources
                .push(File::open(path).map_err(|e| LogError::io(path, "open log", e))?);
            let mut reader = LogReader::open(path)?;
            while let Some(entry) = reader.next_entry() {
                let (meta, record) = entry?;
                folded.add(src, meta.offset + RECORD_HEADER_LEN, record);
            }
        }
        Ok(folded)
    }

    /// One record of source `src`, whose payload starts at `pos` in that file.
    fn add(&mut self, src: usize, pos: u64, record: Record) {
        match record {
            Record::Write { offset, data } => {
                let end = offset + data.len() as u64;
                self.extents.insert(offset, end, Piece::Data { src, pos });
                if let Some(sz) = self.size.as_mut() {
                    *sz = (*sz).max(end);
                }
                self.write_end = self.write_end.max(end);
            }
            Record::Zero { offset, len } => {
                self.extents
                    .insert(offset, offset + len, Piece::Zero { punch: false })
            }
            Record::Punch { offset, len } => {
                self.extents
                    .insert(offset, offset + len, Piece::Zero { punch: true })
            }
            Record::Truncate { size: new } => {
                self.extents.cut(new, u64::MAX);
                self.min_size = Some(self.min_size.map_or(new, |m| m.min(new)));
                self.size = Some(new);
            }
            Record::Rename { .. } => {
                if matches!(self.events.last(), Some(Record::Rename { .. })) {
                    self.events.pop();
                }
                self.events.push(record);
            }
            Record::Delete => self.events.push(record),
            Record::Flush | Record::Seal(_) => {}
        }
    }

    /// Appends the net effect to `out` (not sealed): the smallest truncate first, then every
    /// extent in order, the final size, the events.
    fn write<P: AsRef<Path>>(&self, inputs: &[P], out: &mut LogWriter) -> Result<(), LogError> {
        if let Some(m) = self.min_size {
            out.append_truncate(m)?;
        }
        // Adjacent data extents are joined into writes of up to 1 MiB.
        let mut pending = PendingWrite::default();
        for (&start, &(end, piece)) in &self.extents.0 {
            match piece {
                Piece::Zero { punch } => {
                    pending.flush(out)?;
                    if punch {
                        out.append_punch(start, end - start)?
                    } else {
                        out.append_zero(start, end - start)?
                    }
                }
                Piece::Data { src, pos } => {
                    self.copy_data(inputs, src, pos, start..end, &mut pending, out)?
                }
            }
        }
        pending.flush(out)?;
        match self.size {
            Some(sz) => out.append_truncate(sz)?,
            None if self.write_end > 0 && !ends_in_data(&self.extents, self.write_end) => {
                // The furthest write was zeroed later; its growth of the file must still
                // happen. Its last byte is zero now: write that one byte.
                out.append_write(self.write_end - 1, &[0])?;
            }
            None => {}
        }
        for event in &self.events {
            match event {
                Record::Rename { name } => out.append_rename(name)?,
                _ => out.append_delete()?,
            }
        }
        Ok(())
    }

    /// Reads the data of one extent from its source log into `pending`, flushing it as a
    /// write whenever it would stop being contiguous or pass 1 MiB.
    fn copy_data<P: AsRef<Path>>(
        &self,
        inputs: &[P],
        src: usize,
        pos: u64,
        range: std::ops::Range<u64>,
        pending: &mut PendingWrite,
        out: &mut LogWriter,
    ) -> Result<(), LogError> {
        let (start, end) = (range.start, range.end);
        let mut done = 0u64;
        while done < end - start {
            let at = start + done;
            if pending.end() != at || pending.data.len() >= 1 << 20 {
                pending.flush(out)?;
                pending.offset = at;
            }
            let room = (1u64 << 20) - pending.data.len() as u64;
            let n = (end - start - done).min(room);
            let from = pending.data.len();
            pending.data.resize(from + n as usize, 0);
            self.sources[src]
                .read_exact_at(&mut pending.data[from..], pos + done)
                .map_err(|e| LogError::io(inputs[src].as_ref(), "read log data", e))?;
            done += n;
        }
        Ok(())
    }
}
