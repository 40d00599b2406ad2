//! A group's owner records (`owner/<epoch>.json`, and `owner.json` of groups from before
//! epochs): list them, and take the next epoch with create-if-absent, so two hosts can never
//! both own a group (format: `hrl::owner`).

use hrl::owner::{owner_key, parse_owner_name, OwnerRecord, LEGACY_OWNER_KEY, OWNERS_DIR};

use super::{GroupStore, Put, StoreError, StoreResult};

/// Every owner record of the group, by ascending epoch (the legacy record as epoch 0).
pub async fn list(store: &GroupStore) -> StoreResult<Vec<OwnerRecord>> {
    let mut epochs: Vec<u64> = store
        .list_names(OWNERS_DIR)
        .await?
        .iter()
        .filter_map(|n| parse_owner_name(n))
        .collect();
    epochs.sort_unstable();
    let mut out = Vec::with_capacity(epochs.len() + 1);
    match store.get(LEGACY_OWNER_KEY).await {
        Ok(bytes) => out.push(
            OwnerRecord::from_legacy_json(&bytes)
                .map_err(|e| store.damaged("owner record", LEGACY_OWNER_KEY, e.to_string()))?,
        ),
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    for epoch in epochs {
        let key = owner_key(epoch);
        let bytes = store.get(&key).await?;
        out.push(
            OwnerRecord::from_json(&bytes, epoch)
                .map_err(|e| store.damaged("owner record", &key, e.to_string()))?,
        );
    }
    Ok(out)
}

/// Writes `record` as its epoch's record unless one exists: `Existed` means another host
/// took that epoch first (a retry of this very write is `Created`).
pub async fn create(store: &GroupStore, record: &OwnerRecord) -> StoreResult<Put> {
    store
        .put_new(&owner_key(record.epoch), record.to_json())
        .await
}
