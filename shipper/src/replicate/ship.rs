//! Shipping: each disk's unshipped logs, checked to continue its replica's chain exactly,
//! coalesced into one log and uploaded (immutable; uploading twice is harmless). A disk
//! changed outside the tracker keeps its last good entry.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::replicate::tracker::Seal;
use anyhow::{Context, Result};
use hrl::control::{DiskMode, SealedLog};
use hrl::store::{BaseRef, DiskEntry};

use crate::replicate::context::{Cycle, Protected};
use crate::service::retry::Fatal;
use crate::service::status::{DiskState, Health};
use crate::store::{compress_file, Put};

/// Where a disk's chain starts for this point: after a base, or after the last point.
pub struct ChainStart {
    pub base: BaseRef,
    pub generation: u64,
    pub after_seq: u64,
    pub after_hash: String,
}

/// What the point will hold, and which logs the tracker may delete once it is committed.
pub struct Shipped {
    pub entries: Vec<DiskEntry>,
    /// (disk, disk id, acked up to sequence).
    pub acks: Vec<(String, String, u64)>,
}

/// Ships every disk of `seal`; `starts` are the chains the cycle's new bases start.
pub async fn ship(
    c: &mut Cycle<'_>,
    seal: &Seal,
    starts: &mut BTreeMap<String, ChainStart>,
    outside: &HashSet<String>,
) -> Result<Shipped> {
    // A takeover since the cycle began: upload nothing into the new owner's chain.
    crate::replicate::owner::still_owner(&c.p.store, &c.p.dir, c.epoch).await?;
    let mut by_disk: BTreeMap<String, Vec<SealedLog>> = BTreeMap::new();
    for l in c.tracker.pending().await? {
        by_disk.entry(l.disk_id.clone()).or_default().push(l);
    }
    for logs in by_disk.values_mut() {
        logs.sort_by_key(|l| (l.generation, l.seq));
    }
    let mut shipped = Shipped {
        entries: Vec::new(),
        acks: Vec::new(),
    };
    for sealed in &seal.disks {
        if outside.contains(&sealed.disk_id) {
            shipped.entries.extend(crate::replicate::bypass::carried(
                &c.previous,
                c.last.as_ref().map(|m| m.id),
                sealed,
            ));
            continue;
        }
        let start = match starts.remove(&sealed.disk_id) {
            Some(s) => s,
            None => continue_chain(c, sealed)?,
        };
        let logs: Vec<&SealedLog> = by_disk
            .get(&sealed.disk_id)
            .map(|v| {
                v.iter()
                    .filter(|l| l.generation == start.generation && l.seq > start.after_seq)
                    .collect()
            })
            .unwrap_or_default();
        let entry = ship_disk(c, sealed, start, &logs).await?;
        shipped.acks.push((
            sealed.disk.clone(),
            sealed.disk_id.clone(),
            sealed.seq.max(entry.last_seq),
        ));
        shipped.entries.push(entry);
    }
    // Logs of disks that are gone (deleted): nothing to ship, release them after the commit.
    for (disk_id, logs) in &by_disk {
        if !seal.disks.iter().any(|d| &d.disk_id == disk_id) {
            if let Some(l) = logs.last() {
                shipped.acks.push((l.disk.clone(), disk_id.clone(), l.seq));
            }
        }
    }
    Ok(shipped)
}

/// The chain of a disk without a new base continues the last point's.
fn continue_chain(c: &Cycle<'_>, sealed: &SealedLog) -> Result<ChainStart> {
    let prev = c
        .previous
        .get(&sealed.disk_id)
        .filter(|e| e.generation == sealed.generation)
        .with_context(|| {
            format!(
                "disk {} appeared between two seals; it is copied in the next cycle",
                sealed.disk
            )
        })?;
    Ok(ChainStart {
        base: prev.base.clone(),
        generation: prev.generation,
        after_seq: prev.last_seq,
        after_hash: prev.last_chain_hash.clone(),
    })
}

/// Checks and uploads one disk's logs; returns its entry in the point.
async fn ship_disk(
    c: &mut Cycle<'_>,
    sealed: &SealedLog,
    start: ChainStart,
    logs: &[&SealedLog],
) -> Result<DiskEntry> {
    let p = c.p;
    if let Err(e) = check_chain(&sealed.disk, &start, logs, sealed.seq) {
        let msg = format!(
            "{e}; the replica of {} cannot follow it. Run `hrl-shipper sync --dir {} --resync` to take a new base copy (only changed blocks upload)",
            sealed.disk,
            p.dir.display()
        );
        c.status.edit(|s| {
            let d = s.disk_mut(&sealed.disk, &sealed.disk_id);
            d.state = DiskState::ResyncRequired;
            d.health = Health::Critical;
            d.last_error = Some(msg.clone());
            d.resync_full = true;
            d.resync_reason = Some("the log chain is broken".into());
        });
        return Err(Fatal(msg).into());
    }
    if logs.iter().any(|l| l.mode == DiskMode::Bitmap) {
        return Err(Fatal(format!(
            "disk {} was tracked in bitmap mode after its base; it needs a resync: run `hrl-shipper sync --dir {} --resync`",
            sealed.disk,
            p.dir.display()
        ))
        .into());
    }
    let (last_seq, last_hash) = match logs.last() {
        Some(l) => {
            let sources = crate::replicate::local::logs(c.tracker.as_mut(), &p.dir, logs).await?;
            let (sealed_bytes, coalesced, uploaded) = ship_logs(
                p,
                &c.work,
                c.epoch,
                &sealed.disk_id,
                start.generation,
                logs,
                sources,
            )
            .await?;
            c.report.logs_shipped += logs.len();
            c.report.log_bytes_sealed += sealed_bytes;
            c.report.log_bytes_coalesced += coalesced;
            c.report.log_bytes_uploaded += uploaded;
            (l.seq, l.hash.clone())
        }
        None => (start.after_seq, start.after_hash.clone()),
    };
    Ok(DiskEntry {
        name: sealed.disk.clone(),
        disk_id: sealed.disk_id.clone(),
        generation: start.generation,
        disk_size: sealed.disk_size,
        base: start.base,
        last_seq,
        last_chain_hash: last_hash,
        file: hrl::store::FileAttrs::of_file(&p.dir.join(&sealed.disk)),
        carried_from: None,
    })
}

/// The logs after `start` must be `start.after_seq + 1 ..= sealed_seq`, each naming the one
/// before it.
fn check_chain(
    disk: &str,
    start: &ChainStart,
    logs: &[&SealedLog],
    sealed_seq: u64,
) -> Result<(), String> {
    let mut expect_seq = start.after_seq + 1;
    let mut expect_prev = start.after_hash.as_str();
    for l in logs {
        if l.seq != expect_seq {
            return Err(format!(
                "log chain of disk {disk} is broken: expected log {expect_seq}, found {} (a log is missing)",
                l.seq
            ));
        }
        let named = hrl::from_hex::<32>(&l.prev_hash);
        if named.is_none() || named != hrl::from_hex::<32>(expect_prev) {
            return Err(format!(
                "log chain of disk {disk} is broken: log {} names previous hash {} but the replica ends at {}",
                l.seq, l.prev_hash, expect_prev
            ));
        }
        expect_seq += 1;
        expect_prev = &l.hash;
    }
    if expect_seq <= sealed_seq {
        return Err(format!("log chain of disk {disk} is broken: logs up to {sealed_seq} were sealed but only up to {} are pending", expect_seq - 1));
    }
    Ok(())
}

/// Coalesces `logs` (one disk, consecutive; read through `sources`) into one log and
/// uploads it compressed. Returns (sealed bytes, coalesced bytes, uploaded bytes).
async fn ship_logs(
    p: &Protected,
    work: &Path,
    epoch: u64,
    disk_id: &str,
    generation: u64,
    logs: &[&SealedLog],
    sources: Vec<crate::replicate::local::Source>,
) -> Result<(u64, u64, u64)> {
    let (first, last) = (logs[0].seq, logs[logs.len() - 1].seq);
    let key = hrl::store::log_key(disk_id, generation, first, last);
    let inputs: Vec<PathBuf> = crate::replicate::local::paths(&sources);
    let sealed_bytes: u64 = logs.iter().map(|l| l.bytes).sum();
    let out = work.join(format!("{}-{disk_id}-{first}-{last}.hrl", p.store.group));
    let zst = out.with_extension("hrl.zst");
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&zst);
    let (out2, zst2) = (out.clone(), zst.clone());
    let sizes = tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        // `sources` keeps the descriptors behind `inputs` open until the logs are read.
        let named = crate::replicate::local::shown(&sources);
        hrl::log::coalesce(&inputs, &out2).map_err(|e| {
            // A log that does not verify cannot be shipped: its chain must be restarted.
            anyhow::Error::new(Fatal(format!(
                "a sealed log of {named} does not verify ({e}); the disk needs a resync: run `hrl-shipper sync --resync`"
            )))
        })?;
        drop(sources);
        let coalesced = std::fs::metadata(&out2)
            .with_context(|| format!("stat {}", out2.display()))?
            .len();
        let compressed = compress_file(&out2, &zst2)?;
        Ok((coalesced, compressed))
    })
    .await
    .context("coalesce worker failed")?;
    let _ = std::fs::remove_file(&out);
    let result = match sizes {
        Ok((coalesced, uploaded)) => match p.store.put_file_immutable(&key, &zst).await {
            Ok(Put::Created) => Ok((sealed_bytes, coalesced, uploaded)),
            Ok(Put::Existed) => replace_foreign_log(p, epoch, &key, &zst)
                .await
                .map(|()| (sealed_bytes, coalesced, uploaded)),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&zst);
    result
}

/// A log object with this key exists. Shipping the same logs again (a retry after a crash)
/// finds its own bytes. Different bytes are a log an earlier owner of the group uploaded
/// and never committed before a failover fenced it (its point, if any, is fenced too):
/// the owner replaces it, after checking that it still owns the group
/// (docs/store-layout.md, "Ownership").
async fn replace_foreign_log(p: &Protected, epoch: u64, key: &str, zst: &Path) -> Result<()> {
    let ours = std::fs::read(zst).with_context(|| format!("read {}", zst.display()))?;
    if p.store.get(key).await? == ours {
        return Ok(());
    }
    crate::replicate::owner::still_owner(&p.store, &p.dir, epoch).await?;
    tracing::warn!(
        key,
        "replacing a log a fenced owner uploaded and never committed"
    );
    p.store.put_overwrite(key, ours).await?;
    Ok(())
}
