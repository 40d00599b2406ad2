//! One replication cycle of a protected directory — the heart of the shipper:
//!
//! 1. plan (`plan`, pure): which disks continue their chain, which need a base copy (new,
//!    new generation) or a resync (marks, unclean report, bitmap mode, broken chain);
//!    resyncs wait for the window unless asked for now;
//! 2. establish bases (`bases`): seal, fuzzy copy or resync of those disks, then a second
//!    seal whose logs make the copies consistent;
//! 3. ship (`ship`): each disk's unshipped logs, checked to continue the replica's chain
//!    exactly (a gap or altered log is never papered over), coalesced and uploaded;
//! 4. commit (`commit`): the recovery point's manifest, written last (create-if-absent);
//! 5. release (`commit`): ack, so the tracker deletes the shipped logs, and clear the marks
//!    the point covers.
//!
//! A crash anywhere leaves either the old point (logs still pending, shipped again) or the
//! new one (logs acked on the next run, never applied twice).

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Result;

use crate::replicate::context::Cycle;
pub use crate::replicate::context::{CycleReport, Protected, ResyncDeferred};
use crate::replicate::tracker::Tracker;
use crate::replicate::{app, bases, bypass, commit, presence, ship, stop};
use crate::service::status::{DirStatus, StatusHandle};

/// Runs one cycle against the tracker serving `p.dir`; `status` is updated (and saved) as
/// it goes.
pub async fn run_cycle(p: &Protected, status: &Mutex<DirStatus>) -> Result<CycleReport> {
    run_cycle_with(p, status, None).await
}

/// Runs one cycle against `tracker` (`None`: connect to the one serving `p.dir`).
pub async fn run_cycle_with(
    p: &Protected,
    status: &Mutex<DirStatus>,
    tracker: Option<Box<dyn Tracker>>,
) -> Result<CycleReport> {
    let _lock = crate::service::lock::CycleLock::acquire(&p.state_dir, &p.dir).await?;
    let mut c = Cycle::open(p, StatusHandle::new(status, &p.state_dir), tracker).await?;
    c.defer_resyncs_outside_the_window()?;
    c.switch_bitmap_disks_to_log_mode().await?;

    let hooks = app::hooks_due(p, c.status);
    let first = app::seal(c.tracker.as_mut(), hooks.as_ref()).await?;
    stop::at(&p.state_dir, "after-seal");
    let mut starts = bases::establish(&mut c, &first.seal).await?;
    // Disks changed outside the tracker before a seal of this cycle miss changes in their
    // logs (unless rebased after that seal): the point carries their last good entry.
    let mut outside = bypass::changed_outside(&first.seal, &starts);
    // The point's seal is the hooked one (the second after a base copy).
    let sealed = match starts.is_empty() {
        true => first,
        false => app::seal(c.tracker.as_mut(), hooks.as_ref()).await?,
    };
    let app::HookedSeal {
        seal,
        app: is_app,
        warning,
    } = sealed;
    outside.extend(bypass::changed_outside(
        &seal,
        &BTreeMap::<String, ()>::new(),
    ));
    bypass::drop_stale_jobs(&p.state_dir, &outside);

    let shipped = ship::ship(&mut c, &seal, &mut starts, &outside).await?;
    stop::at(&p.state_dir, "after-upload");
    presence::guard_commit(&p.store, &p.dir, c.status, &shipped.entries).await?;
    let manifest = commit::commit(&c, &seal, shipped.entries, is_app).await?;
    app::record(
        c.status,
        hooks.is_some(),
        is_app.then_some(seal.time_ns),
        warning,
    );
    stop::at(&p.state_dir, "after-commit");
    commit::release(&mut c, &manifest, &shipped.acks, seal.seal_id, &outside).await;
    commit::record_point(&mut c, &manifest, &outside).await;

    c.report.point_id = manifest.id;
    c.report.time_ns = seal.time_ns;
    c.report.disks = manifest.disks.len();
    Ok(c.report)
}
