//! Test-failover records (`tests/<point>-<started>.json`): written once when a test mount
//! ends; `points` lists them.

use std::collections::BTreeMap;

use hrl::store::{parse_test_record_name, test_record_key, TestRecord, TESTS_DIR};

use super::{GroupStore, StoreResult};

/// Writes the record of a finished test.
pub async fn put(store: &GroupStore, r: &TestRecord) -> StoreResult<()> {
    let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
    store
        .put_immutable(&test_record_key(r.point, r.started_ns), bytes)
        .await
        .map(|_| ())
}

/// The record of the test of `point` that started at `started_ns`, if there is one.
pub async fn get(
    store: &GroupStore,
    point: u64,
    started_ns: u64,
) -> StoreResult<Option<TestRecord>> {
    match store.get(&test_record_key(point, started_ns)).await {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(super::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The latest test of each point: point -> (started ns, result), from the record names
/// and the latest record's content.
pub async fn latest_by_point(store: &GroupStore) -> StoreResult<BTreeMap<u64, TestRecord>> {
    let mut latest: BTreeMap<u64, u64> = BTreeMap::new();
    for name in store.list_names(TESTS_DIR).await? {
        if let Some((p, t)) = parse_test_record_name(&name) {
            let e = latest.entry(p).or_insert(t);
            *e = (*e).max(t);
        }
    }
    let mut out = BTreeMap::new();
    for (p, t) in latest {
        let bytes = store.get(&test_record_key(p, t)).await?;
        if let Ok(r) = serde_json::from_slice::<TestRecord>(&bytes) {
            out.insert(p, r);
        }
    }
    Ok(out)
}
