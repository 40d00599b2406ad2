//! `hrl-shipper log inspect|verify|apply`: looking into logs, checking them, and replaying
//! them onto an image by hand. Exit codes: 0 fine, 1 the log is invalid, 2 usage or I/O error.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use hrl::log::{apply_logs_after, verify_sealed, LogEnd, LogError, LogReader, Record};
use serde::Serialize;

#[derive(Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Print a log's header and a summary of its records (also of an open or torn log).
    Inspect {
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Check that a log is sealed and intact; exit 0 if so, 1 naming the offset and the problem.
    Verify {
        file: PathBuf,
        /// The chain hash of the previous log: the log must name it as its previous hash.
        #[arg(long, value_name = "HEX")]
        prev_hash: Option<String>,
    },
    /// Replay sealed logs, in the order given, onto an image (created if missing). Every log
    /// is verified and the chain checked before the image is touched.
    Apply {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The image to change.
        #[arg(long, value_name = "IMAGE")]
        to: PathBuf,
        /// The chain hash the first log must follow (the last log already in the image).
        #[arg(long, value_name = "HEX")]
        prev_hash: Option<String>,
    },
}

pub fn run(args: LogArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LogCommand::Inspect { file, json } => inspect(&file, json),
        LogCommand::Verify { file, prev_hash } => {
            let prev = parse_hash(prev_hash.as_deref())?;
            match verify_sealed(&file, prev.as_ref()) {
                Ok(v) => {
                    println!(
                        "{}: ok: sealed, {} records, {} data bytes, seal hash {}, chain hash {}",
                        file.display(),
                        v.seal.records,
                        v.seal.payload_bytes,
                        hrl::to_hex(&v.seal.hash),
                        hrl::to_hex(&v.chain_hash())
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ LogError::Io { .. }) => Err(e.into()),
                Err(e) => {
                    eprintln!("hrl-shipper: invalid log: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        LogCommand::Apply {
            files,
            to,
            prev_hash,
        } => {
            let prev = parse_hash(prev_hash.as_deref())?;
            match apply_logs_after(&files, &to, prev.as_ref()) {
                Ok(s) => {
                    println!(
                        "applied {} logs ({} records, {} bytes written) to {}; size {}; chain hash {}",
                        s.logs,
                        s.records,
                        s.bytes_written,
                        to.display(),
                        s.final_size,
                        s.chain_hash.map(|h| hrl::to_hex(&h)).unwrap_or_default()
                    );
                    if let Some(name) = s.renamed_to {
                        println!("note: the logs rename this disk to {name:?}");
                    }
                    if s.deleted {
                        println!("note: the logs end with this disk deleted");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ LogError::Io { .. }) => Err(e.into()),
                Err(e) => {
                    eprintln!("hrl-shipper: refused, the image was not changed: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn parse_hash(hex: Option<&str>) -> anyhow::Result<Option<hrl::Digest>> {
    hex.map(|h| {
        hrl::from_hex::<32>(h)
            .with_context(|| format!("--prev-hash {h:?} is not 64 hex digits (a blake3 hash)"))
    })
    .transpose()
}

#[derive(Serialize, Default)]
struct Counts {
    write: u64,
    write_bytes: u64,
    truncate: u64,
    zero: u64,
    punch: u64,
    flush: u64,
    rename: u64,
    delete: u64,
}

#[derive(Serialize)]
struct Inspection {
    file: String,
    disk_id: String,
    generation: u64,
    sequence: u64,
    first_sequence: u64,
    block_size: u32,
    disk_size: u64,
    created_ns: u64,
    prev_hash: String,
    coalesced_from: Option<String>,
    state: hrl::log::LogState,
    records: u64,
    counts: Counts,
    first_time_ns: Option<u64>,
    last_time_ns: Option<u64>,
    /// "sealed", "clean" (ends on a record boundary, not sealed) or "torn".
    end: &'static str,
    end_offset: u64,
    problem: Option<String>,
    seal_hash: Option<String>,
    chain_hash: Option<String>,
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let mut reader = LogReader::open(file)?;
    let h = reader.header().clone();
    let mut counts = Counts::default();
    let (mut first_t, mut last_t, mut records) = (None, None, 0u64);
    let mut problem = None;
    while let Some(entry) = reader.next_entry() {
        let (meta, rec) = match entry {
            Ok(e) => e,
            Err(e) => {
                problem = Some(e.to_string());
                break;
            }
        };
        first_t.get_or_insert(meta.time_ns);
        last_t = Some(meta.time_ns);
        match rec {
            Record::Write { data, .. } => {
                counts.write += 1;
                counts.write_bytes += data.len() as u64
            }
            Record::Truncate { .. } => counts.truncate += 1,
            Record::Zero { .. } => counts.zero += 1,
            Record::Punch { .. } => counts.punch += 1,
            Record::Flush => counts.flush += 1,
            Record::Rename { .. } => counts.rename += 1,
            Record::Delete => counts.delete += 1,
            Record::Seal(_) => continue,
        }
        records += 1;
    }
    let (end, end_offset, seal) = match reader.end() {
        LogEnd::Sealed { offset, seal } => ("sealed", *offset, Some(*seal)),
        LogEnd::Clean { offset } => ("clean", *offset, None),
        LogEnd::Torn { offset, reason } => {
            problem.get_or_insert_with(|| reason.clone());
            ("torn", *offset, None)
        }
    };
    let out = Inspection {
        file: file.display().to_string(),
        disk_id: hrl::to_hex(&h.disk_id),
        generation: h.generation,
        sequence: h.sequence,
        first_sequence: h.first_sequence,
        block_size: h.block_size,
        disk_size: h.disk_size,
        created_ns: h.created_ns,
        prev_hash: hrl::to_hex(&h.prev_hash),
        coalesced_from: h.is_coalesced().then(|| hrl::to_hex(&h.coalesced_from)),
        state: h.state,
        records,
        counts,
        first_time_ns: first_t,
        last_time_ns: last_t,
        end,
        end_offset,
        problem,
        seal_hash: seal.map(|s| hrl::to_hex(&s.hash)),
        chain_hash: seal.map(|s| hrl::to_hex(&hrl::log::chain_hash(&h, &s))),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("file:          {}", out.file);
        println!(
            "disk id:       {}  generation {}",
            out.disk_id, out.generation
        );
        println!(
            "sequence:      {} (first {})",
            out.sequence, out.first_sequence
        );
        println!(
            "disk size:     {}  block size {}",
            out.disk_size, out.block_size
        );
        println!("state:         {:?}", out.state);
        println!("prev hash:     {}", out.prev_hash);
        if let Some(c) = &out.coalesced_from {
            println!("coalesced:     replaces logs up to chain hash {c}");
        }
        let c = &out.counts;
        println!(
            "records:       {} (write {} = {} bytes, truncate {}, zero {}, punch {}, flush {}, rename {}, delete {})",
            out.records, c.write, c.write_bytes, c.truncate, c.zero, c.punch, c.flush, c.rename, c.delete
        );
        println!("end:           {} at byte {}", out.end, out.end_offset);
        if let Some(p) = &out.problem {
            println!("problem:       {p}");
        }
        if let (Some(s), Some(ch)) = (&out.seal_hash, &out.chain_hash) {
            println!("seal hash:     {s}\nchain hash:    {ch}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
