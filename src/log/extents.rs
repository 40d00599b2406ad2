//! The byte ranges a log changes. The shipper reads them to plan a targeted resync; the
//! tracker marks them before it releases logs that will never ship (the 50% rule), so its
//! bitmap alone still covers every change not yet in a committed point.

use std::path::Path;

use super::{LogError, LogReader, Record};

/// Byte ranges the records of `logs` change, or `None` when a record changes the size or
/// the identity of the disk (truncate, delete): then block positions cannot be folded and
/// the caller must treat the whole disk as changed.
pub fn log_extents<P: AsRef<Path>>(logs: &[P]) -> Result<Option<Vec<(u64, u64)>>, LogError> {
    let mut out = Vec::new();
    for l in logs {
        for r in LogReader::open(l.as_ref())? {
            match r? {
                Record::Write { offset, data } => out.push((offset, data.len() as u64)),
                Record::Zero { offset, len } | Record::Punch { offset, len } => {
                    out.push((offset, len))
                }
                Record::Truncate { .. } | Record::Delete => return Ok(None),
                Record::Flush | Record::Rename { .. } | Record::Seal(_) => {}
            }
        }
    }
    Ok(Some(out))
}
