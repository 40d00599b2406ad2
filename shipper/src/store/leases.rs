//! Leases (CONTRACTS.md): a holder of a point (a mount, a restore) writes one before it reads
//! the point, renews it, and deletes it when done, so retention's GC keeps what the point
//! needs. The format is `hrl::store::Lease`.

use hrl::store::{lease_key, Lease, LEASES_DIR};

use super::{GroupStore, StoreResult};

/// Default lifetime of a lease; holders renew every third of it.
pub const DEFAULT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(600);

/// A holder name: `<host>-<pid>-<random hex>`, one path component.
pub fn new_holder(host: &str) -> String {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    let host: String = host
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect();
    format!("{host}-{}-{}", std::process::id(), hrl::to_hex(&r))
}

/// Writes (or renews) `holder`'s lease.
pub async fn put(store: &GroupStore, holder: &str, lease: &Lease) -> StoreResult<()> {
    let bytes = serde_json::to_vec_pretty(lease).unwrap_or_default();
    store.put_replace(&lease_key(holder), bytes).await
}

/// Deletes `holder`'s lease.
pub async fn delete(store: &GroupStore, holder: &str) -> StoreResult<()> {
    store.delete(&lease_key(holder)).await
}

/// Every lease of the group that decodes, with its holder.
pub async fn list(store: &GroupStore) -> StoreResult<Vec<(String, Lease)>> {
    let mut out = Vec::new();
    for name in store.list_names(LEASES_DIR).await? {
        let Some(holder) = name.strip_suffix(".json") else {
            continue;
        };
        let bytes = store.get(&lease_key(holder)).await?;
        if let Ok(l) = serde_json::from_slice::<Lease>(&bytes) {
            out.push((holder.to_string(), l));
        }
    }
    Ok(out)
}
