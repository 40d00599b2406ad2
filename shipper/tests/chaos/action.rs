//! The action kinds of the simulation (operator actions, faults, syncs) and the seeded
//! generator of an action list. Kinds are enabled by name, so CI runs the set that passes
//! today and each fix enables its kind; a new feature adds its kinds here.

use super::rng::Rng;

macro_rules! kinds {
    ($($v:ident = $name:literal : $doc:literal,)*) => {
        /// One kind of step. Parameters come from [`Action`]'s `a`, `b`, `c`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        pub enum Kind { $(#[doc = $doc] $v,)* }
        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$v,)*];
            pub fn name(self) -> &'static str { match self { $(Kind::$v => $name,)* } }
        }
    };
}

kinds! {
    Sync = "sync": "hrl-shipper sync with writers quiesced; its point must equal the disks",
    Write = "write": "pwrite of random data at a random offset of a disk (through the mount)",
    WriteDirect = "write_direct": "O_DIRECT write of 4 KiB-aligned blocks",
    WriteMmap = "write_mmap": "store into a shared writable mmap of a disk, then msync",
    Grow = "grow": "ftruncate a disk larger",
    Shrink = "shrink": "ftruncate a disk smaller (issue 16 item 1)",
    Qcow2Grow = "qcow2_grow": "qemu-io writes that grow a qcow2 disk (created with qemu-img)",
    Create = "create": "create a new disk with data",
    Delete = "delete": "unlink a disk",
    Rename = "rename": "rename a disk to a new disk name",
    RenameOver = "rename_over": "rename a disk over another disk (issue 16 item 9)",
    Remount = "remount": "clean unmount of the tracker and mount again",
    SigtermBusy = "sigterm_busy": "SIGTERM to the tracker while a disk is open, a write at the path meanwhile (item 4)",
    KillTracker = "kill_tracker": "kill -9 of the tracker while a writer runs, then mount again",
    OfflineEdit = "offline_edit": "unmount, change a disk in the raw directory, mount",
    OfflineEditMtime = "offline_edit_mtime": "as offline_edit, size kept and mtime restored (touch -r)",
    KillTrackerOfflineEdit = "kill_tracker_offline_edit": "kill -9 of the tracker, offline edit, mount (item 8)",
    LoseBitmap = "lose_bitmap": "unmount, bitmap moved away, offline edit with mtime restored, mount (item 5)",
    LoseActiveLog = "lose_active_log": "unmount, active log deleted or truncated, mount, a write (item 6)",
    LoseState = "lose_state": "the shipper's state directory deleted between syncs",
    StoreOutage = "store_outage": "the store directory read-only (bind mount) for the next 1-3 syncs",
    StoreFlap = "store_flap": "a sync while the store flips read-only / writable every few ms (item 12)",
    LoseObject = "lose_object": "a chunk, log or index deleted from the store (item 3)",
    KillShipper = "kill_shipper": "kill -9 of a sync at a random moment or at a stop point",
    SyncResync = "sync_resync": "hrl-shipper sync --resync, or resync --now",
    SyncWhileWriting = "sync_while_writing": "a sync while a writer pwrites inside the disks (point = a prefix of the writes)",
    SyncWhileGrowing = "sync_while_growing": "as sync_while_writing, some writes past the end grow the disks (item 2)",
    Qcow2DuringSync = "qcow2_during_sync": "a sync while qemu-io grows a qcow2 (point restores; item 2)",
    Hardlink = "hardlink": "a second name (hard link) of a disk (item 13)",
    FullFs = "full_fs": "the directory's filesystem full: writes, growth, a new disk get ENOSPC, never a crash (item 10)",
    DeadMount = "dead_mount": "kill -9 of the tracker, mount again over the dead mount; the next write is logged (item 11)",
    FiftyPercent = "fifty_percent": "the service, >50% of a 24 MiB disk written, store ok / refusing / paused: logs released (items 12, 18.6)",
    BindAlias = "bind_alias": "a bind mount of the directory before the mount: refused; --force and a write through it (18.1)",
    OddNames = "odd_names": "a non-UTF-8 disk name and a symlinked disk: status lists them as not tracked (18.2)",
    JunkHrl = "junk_hrl": "a junk file named as a sealed log: quarantined, the disk fully compared, the rest mounts (18.8)",
    FdExhaust = "fd_exhaust": "the tracker under a low open file limit, a crawl of many files: control socket and sync work (18.7)",
    WorkdirLeak = "workdir_leak": "kill -9 of a sync after a big write; the next good sync leaves work/ empty (18.9)",
    Prune = "prune": "hrl-shipper prune (a window of 0 s or 1 h, grace 0 s), at times killed mid-merge or mid-gc: every point left restores as when checked (issue 9)",
    FailoverRoundTrip = "failover_round_trip": "failover (planned or not, --prepare 2 in 3) to a second dir, a point from there half the time, failback by delta; the world goes on (issue 10)",
}

impl Kind {
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.name() == name.trim())
    }

    /// Parses `a,b,c` (or `all`) into kinds; an unknown name is an error naming the kinds.
    pub fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        if list.trim() == "all" {
            return Ok(Kind::ALL.to_vec());
        }
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                Kind::from_name(s).ok_or_else(|| {
                    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown action {s:?}; kinds: {}", names.join(","))
                })
            })
            .collect()
    }
}

/// One step: a kind and three random parameters the executor maps onto the world as it is
/// then (which disk, offset, length, timing). The list depends only on the seed and the
/// enabled kinds.
#[derive(Clone, Copy, Debug)]
pub struct Action {
    pub kind: Kind,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

/// `steps` actions for `seed`: about a third are syncs, the rest uniform over the other
/// enabled kinds.
pub fn generate(seed: u64, steps: usize, enabled: &[Kind]) -> Vec<Action> {
    let mut rng = Rng::new(seed);
    let others: Vec<Kind> = enabled
        .iter()
        .copied()
        .filter(|k| *k != Kind::Sync)
        .collect();
    (0..steps)
        .map(|_| {
            let kind = if others.is_empty() || rng.chance(33) {
                Kind::Sync
            } else {
                others[rng.below(others.len() as u64) as usize]
            };
            Action {
                kind,
                a: rng.next_u64(),
                b: rng.next_u64(),
                c: rng.next_u64(),
            }
        })
        .collect()
}
