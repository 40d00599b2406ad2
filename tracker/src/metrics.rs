//! The tracker's counters since it started (writes, bytes logged, marks, seals and how long
//! writers were held), for `status --json` and the shipper's metrics. Relaxed atomics: a
//! counter costs one uncontended add on the write path, never a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hrl::control::TrackerCounters;

static WRITES: AtomicU64 = AtomicU64::new(0);
static RECORDS: AtomicU64 = AtomicU64::new(0);
static BYTES_LOGGED: AtomicU64 = AtomicU64::new(0);
static MARKS_SET: AtomicU64 = AtomicU64::new(0);
static SEALS: AtomicU64 = AtomicU64::new(0);
static SEAL_HOLD_US_TOTAL: AtomicU64 = AtomicU64::new(0);
static SEAL_HOLD_US_MAX: AtomicU64 = AtomicU64::new(0);
static SEAL_HOLD_US_LAST: AtomicU64 = AtomicU64::new(0);
static READS: AtomicU64 = AtomicU64::new(0);
static BYTES_READ: AtomicU64 = AtomicU64::new(0);
static DESCRIPTORS_PASSED: AtomicU64 = AtomicU64::new(0);

/// A change recorded for a disk (`data` bytes of a write, 0 otherwise; `bytes` as logged,
/// with the record header).
pub fn recorded(write: bool, bytes: u64) {
    if write {
        WRITES.fetch_add(1, Relaxed);
    }
    RECORDS.fetch_add(1, Relaxed);
    BYTES_LOGGED.fetch_add(bytes, Relaxed);
}

/// A mark that newly set bits of a bitmap (and cost a flush).
pub fn mark_set() {
    MARKS_SET.fetch_add(1, Relaxed);
}

/// A seal's cut held writers for `us` microseconds.
pub fn sealed(us: u64) {
    SEALS.fetch_add(1, Relaxed);
    SEAL_HOLD_US_TOTAL.fetch_add(us, Relaxed);
    SEAL_HOLD_US_MAX.fetch_max(us, Relaxed);
    SEAL_HOLD_US_LAST.store(us, Relaxed);
}

/// A read served through the mount (`bytes` returned).
pub fn read(bytes: u64) {
    READS.fetch_add(1, Relaxed);
    BYTES_READ.fetch_add(bytes, Relaxed);
}

/// A read-only descriptor handed out on the control socket.
pub fn descriptor_passed() {
    DESCRIPTORS_PASSED.fetch_add(1, Relaxed);
}

/// The counters now.
pub fn snapshot() -> TrackerCounters {
    TrackerCounters {
        writes: WRITES.load(Relaxed),
        records: RECORDS.load(Relaxed),
        bytes_logged: BYTES_LOGGED.load(Relaxed),
        marks_set: MARKS_SET.load(Relaxed),
        seals: SEALS.load(Relaxed),
        seal_hold_us_total: SEAL_HOLD_US_TOTAL.load(Relaxed),
        seal_hold_us_max: SEAL_HOLD_US_MAX.load(Relaxed),
        seal_hold_us_last: SEAL_HOLD_US_LAST.load(Relaxed),
        reads: READS.load(Relaxed),
        bytes_read: BYTES_READ.load(Relaxed),
        descriptors_passed: DESCRIPTORS_PASSED.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let before = snapshot();
        recorded(true, 64 + 4096);
        recorded(false, 64);
        mark_set();
        sealed(7);
        sealed(3);
        read(4096);
        descriptor_passed();
        let after = snapshot();
        assert!(after.writes > before.writes && after.records >= before.records + 2);
        assert!(after.bytes_logged >= before.bytes_logged + 4224);
        assert!(after.marks_set > before.marks_set);
        assert!(after.seals >= before.seals + 2 && after.seal_hold_us_max >= 7);
        assert!(after.reads > before.reads && after.bytes_read >= before.bytes_read + 4096);
        assert!(after.descriptors_passed > before.descriptors_passed);
    }
}
