//! Reading a log: every record is verified against its checksum before it is yielded; the
//! first record that is incomplete or fails its checksum ends the log (a torn tail), and the
//! byte offset where it starts is reported.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::format::{Kind, LogHeader, RecordHeader, SealHasher, HEADER_LEN, RECORD_HEADER_LEN};
use super::{LogError, Record, SealInfo};
use crate::Digest;

/// How a log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// Still reading.
    Clean { offset: u64 },
    /// The last record is a valid seal record ending at `offset` (end of file).
    Sealed { offset: u64, seal: SealInfo },
    /// Bytes from `offset` on are not a verifiable record and were not yielded.
    Torn { offset: u64, reason: String },
}

/// Where a record sits in the file and what protects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    /// Byte offset of the record header; the payload follows at `offset + 64`.
    pub offset: u64,
    pub time_ns: u64,
    pub checksum: Digest,
}

/// Sequential, verifying reader of one log.
pub struct LogReader {
    path: PathBuf,
    input: Box<dyn Read + Send>,
    header: LogHeader,
    file_len: u64,
    pos: u64,
    records: u64,
    payload_bytes: u64,
    seal_hasher: SealHasher,
    end: Option<LogEnd>,
}

impl LogReader {
    /// Opens a log and checks its header (a bad header is an error, not a torn tail).
    pub fn open(path: &Path) -> Result<LogReader, LogError> {
        let file = File::open(path).map_err(|e| LogError::io(path, "open log", e))?;
        let file_len = file
            .metadata()
            .map_err(|e| LogError::io(path, "stat log", e))?
            .len();
        LogReader::from_input(
            path,
            Box::new(BufReader::with_capacity(1 << 20, file)),
            file_len,
        )
    }

    /// A reader of the `file_len` bytes of a log that `input` yields from its start (a file,
    /// or a log in memory: [`super::LocalLog`]); `path` names it in errors.
    pub fn from_input(
        path: &Path,
        mut input: Box<dyn Read + Send>,
        file_len: u64,
    ) -> Result<LogReader, LogError> {
        let mut hb = vec![0u8; HEADER_LEN as usize];
        if file_len < HEADER_LEN {
            return Err(LogError::BadHeader {
                path: path.to_path_buf(),
                reason: format!(
                    "file is {file_len} bytes, shorter than the {HEADER_LEN}-byte header"
                ),
            });
        }
        input
            .read_exact(&mut hb)
            .map_err(|e| LogError::io(path, "read log header", e))?;
        let header = LogHeader::decode(&hb).map_err(|reason| LogError::BadHeader {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(LogReader {
            path: path.to_path_buf(),
            input,
            seal_hasher: SealHasher::new(&header),
            header,
            file_len,
            pos: HEADER_LEN,
            records: 0,
            payload_bytes: 0,
            end: None,
        })
    }

    pub fn header(&self) -> &LogHeader {
        &self.header
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the log ended; meaningful once the iteration returned `None`.
    pub fn end(&self) -> &LogEnd {
        self.end.as_ref().unwrap_or(&LogEnd::Clean { offset: 0 })
    }

    fn stop(
        &mut self,
        reason: impl Into<String>,
    ) -> Option<Result<(RecordMeta, Record), LogError>> {
        self.end = Some(LogEnd::Torn {
            offset: self.pos,
            reason: reason.into(),
        });
        None
    }

    /// The next verified record with its place in the file; `None` at the end (see [`end`]).
    pub fn next_entry(&mut self) -> Option<Result<(RecordMeta, Record), LogError>> {
        if self.end.is_some() {
            return None;
        }
        let left = self.file_len - self.pos;
        if left == 0 {
            self.end = Some(LogEnd::Clean { offset: self.pos });
            return None;
        }
        if left < RECORD_HEADER_LEN {
            return self.stop(format!("{left} bytes left, less than a record header"));
        }
        let mut hb = [0u8; RECORD_HEADER_LEN as usize];
        if let Err(e) = self.input.read_exact(&mut hb) {
            return Some(Err(LogError::io(&self.path, "read record", e)));
        }
        let Some(rh) = RecordHeader::decode(&hb) else {
            return self
                .stop("not a record header (unknown kind, reserved bits or oversized payload)");
        };
        if u64::from(rh.payload_len) > left - RECORD_HEADER_LEN {
            return self.stop(format!(
                "record announces {} payload bytes but only {} remain",
                rh.payload_len,
                left - RECORD_HEADER_LEN
            ));
        }
        let mut payload = vec![0u8; rh.payload_len as usize];
        if let Err(e) = self.input.read_exact(&mut payload) {
            return Some(Err(LogError::io(&self.path, "read record payload", e)));
        }
        if rh.compute_checksum(&payload) != rh.checksum {
            return self.stop("record checksum mismatch");
        }
        let record = match decode_record(&rh, payload) {
            Ok(r) => r,
            Err(reason) => return self.stop(reason),
        };
        let meta = RecordMeta {
            offset: self.pos,
            time_ns: rh.time_ns,
            checksum: rh.checksum,
        };
        let record_end = self.pos + RECORD_HEADER_LEN + u64::from(rh.payload_len);
        if let Record::Seal(seal) = &record {
            let expected = SealInfo {
                records: self.records,
                payload_bytes: self.payload_bytes,
                hash: self.seal_hasher.finish(),
            };
            if *seal != expected {
                let reason = if seal.hash != expected.hash {
                    "hash differs from the log's content".to_string()
                } else {
                    format!(
                        "seal counts {} records / {} bytes, the log has {} / {}",
                        seal.records, seal.payload_bytes, expected.records, expected.payload_bytes
                    )
                };
                self.end = Some(LogEnd::Torn {
                    offset: self.pos,
                    reason: reason.clone(),
                });
                return Some(Err(LogError::SealMismatch {
                    path: self.path.clone(),
                    offset: self.pos,
                    reason,
                }));
            }
            if record_end != self.file_len {
                self.end = Some(LogEnd::Torn {
                    offset: record_end,
                    reason: "bytes after the seal".into(),
                });
                return Some(Err(LogError::TrailingData {
                    path: self.path.clone(),
                    offset: record_end,
                    extra: self.file_len - record_end,
                }));
            }
            self.pos = record_end;
            self.end = Some(LogEnd::Sealed {
                offset: record_end,
                seal: *seal,
            });
            return Some(Ok((meta, record)));
        }
        self.seal_hasher.add(&rh.checksum);
        self.records += 1;
        if let Record::Write { data, .. } = &record {
            self.payload_bytes += data.len() as u64;
        }
        self.pos = record_end;
        Some(Ok((meta, record)))
    }
}

impl Iterator for LogReader {
    type Item = Result<Record, LogError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().map(|r| r.map(|(_, rec)| rec))
    }
}

fn decode_record(rh: &RecordHeader, payload: Vec<u8>) -> Result<Record, String> {
    let operands_unused = |r: Record| {
        if rh.a == 0 && rh.b == 0 && payload_is_empty(rh) {
            Ok(r)
        } else {
            Err(format!("{:?} record with operands set", rh.kind))
        }
    };
    match rh.kind {
        Kind::Write => {
            if rh.b != u64::from(rh.payload_len) {
                return Err(format!(
                    "write length {} differs from payload length {}",
                    rh.b, rh.payload_len
                ));
            }
            rh.a.checked_add(rh.b).ok_or("write range overflows")?;
            Ok(Record::Write {
                offset: rh.a,
                data: payload,
            })
        }
        Kind::Truncate if rh.b == 0 && payload.is_empty() => Ok(Record::Truncate { size: rh.a }),
        Kind::Zero | Kind::Punch if payload.is_empty() => {
            rh.a.checked_add(rh.b).ok_or("range overflows")?;
            Ok(if rh.kind == Kind::Zero {
                Record::Zero {
                    offset: rh.a,
                    len: rh.b,
                }
            } else {
                Record::Punch {
                    offset: rh.a,
                    len: rh.b,
                }
            })
        }
        Kind::Flush => operands_unused(Record::Flush),
        Kind::Delete => operands_unused(Record::Delete),
        Kind::Rename if rh.a == 0 && rh.b == 0 => match String::from_utf8(payload) {
            Ok(name) if !name.is_empty() && !name.contains('/') => Ok(Record::Rename { name }),
            _ => Err("rename record with an invalid file name".into()),
        },
        Kind::Seal if payload.len() == 32 => {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&payload);
            Ok(Record::Seal(SealInfo {
                records: rh.a,
                payload_bytes: rh.b,
                hash,
            }))
        }
        k => Err(format!("malformed {k:?} record")),
    }
}

fn payload_is_empty(rh: &RecordHeader) -> bool {
    rh.payload_len == 0
}

/// A sealed log that passed verification.
#[derive(Debug, Clone)]
pub struct VerifiedLog {
    pub header: LogHeader,
    pub seal: SealInfo,
    /// Bytes in the file.
    pub file_len: u64,
}

impl VerifiedLog {
    /// The hash the next log of this disk must name as its previous hash.
    pub fn chain_hash(&self) -> Digest {
        super::chain_hash(&self.header, &self.seal)
    }
}

/// Reads a whole log and accepts it only if it is sealed, every record verifies, the seal
/// matches, and (when given) its previous hash is `prev_hash`.
pub fn verify_sealed(path: &Path, prev_hash: Option<&Digest>) -> Result<VerifiedLog, LogError> {
    verify_sealed_with(path, prev_hash, |_, _| {})
}

/// [`verify_sealed`], handing every record (each checked against its checksum, the seal
/// record last) with its place in the file to `each` as it is read: one pass over the log
/// verifies it and feeds a replay. Whether the log as a whole is good is known only at the
/// end, so on an error the caller must discard whatever `each` built.
pub fn verify_sealed_with(
    path: &Path,
    prev_hash: Option<&Digest>,
    each: impl FnMut(&RecordMeta, Record),
) -> Result<VerifiedLog, LogError> {
    verify_reader_with(LogReader::open(path)?, prev_hash, each)
}

/// [`verify_sealed_with`] of a log opened as `reader` (a file or a [`super::LocalLog`]).
pub fn verify_reader_with(
    mut reader: LogReader,
    prev_hash: Option<&Digest>,
    mut each: impl FnMut(&RecordMeta, Record),
) -> Result<VerifiedLog, LogError> {
    let path = reader.path().to_path_buf();
    let path = path.as_path();
    while let Some(entry) = reader.next_entry() {
        let (meta, record) = entry?;
        each(&meta, record);
    }
    let header = reader.header().clone();
    let seal = match reader.end() {
        LogEnd::Sealed { seal, .. } => *seal,
        LogEnd::Torn { offset, reason } => {
            return Err(LogError::NotSealed {
                path: path.to_path_buf(),
                offset: *offset,
                reason: reason.clone(),
            })
        }
        LogEnd::Clean { offset } => {
            return Err(LogError::NotSealed {
                path: path.to_path_buf(),
                offset: *offset,
                reason: "no seal record".into(),
            })
        }
    };
    if header.state != super::LogState::Sealed {
        return Err(LogError::NotSealed {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "header state is {:?} although a seal record is present",
                header.state
            ),
        });
    }
    if let Some(prev) = prev_hash {
        if *prev != header.prev_hash {
            return Err(LogError::ChainBroken {
                path: path.to_path_buf(),
                expected_prev: crate::to_hex(&header.prev_hash),
                actual_prev: crate::to_hex(prev),
            });
        }
    }
    Ok(VerifiedLog {
        header,
        seal,
        file_len: reader.file_len,
    })
}
