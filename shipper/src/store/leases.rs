//! Leases (`leases/<holder>.json`): a reader's claim on a point, which retention keeps
//! (see docs/store-layout.md, "Retention"). A holder puts one before reading the point,
//! renews it (the same put) at least every third of its life, and deletes it when done.

use hrl::store::{lease_key, Lease, LEASES_DIR, LEASE_VERSION};

use super::{GroupStore, StoreResult};

/// How long a lease lives unless renewed.
pub const DEFAULT_EXPIRY: std::time::Duration = std::time::Duration::from_secs(600);

/// A holder name unique to this process and call: `<host>-<pid>-<random hex>`.
pub fn holder_name() -> String {
    let host: String = crate::replicate::owner::host_name()
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                true => c,
                false => '_',
            },
        )
        .collect();
    let mut rnd = [0u8; 8];
    let _ = getrandom_bytes(&mut rnd);
    format!("{host}-{}-{}", std::process::id(), hrl::to_hex(&rnd))
}

/// Random bytes from the kernel (a clash of two holders' names would share one lease).
fn getrandom_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Writes (or renews) `holder`'s lease on `point` for `purpose`, expiring `life` from now.
pub async fn put(
    store: &GroupStore,
    holder: &str,
    point: u64,
    purpose: &str,
    life: std::time::Duration,
) -> StoreResult<Lease> {
    let lease = Lease {
        version: LEASE_VERSION,
        point,
        host: crate::replicate::owner::host_name(),
        purpose: purpose.to_string(),
        expires_ns: hrl::now_ns().saturating_add(life.as_nanos() as u64),
    };
    let bytes = serde_json::to_vec(&lease).unwrap_or_default();
    store.put_overwrite(&lease_key(holder), bytes).await?;
    Ok(lease)
}

/// Deletes `holder`'s lease (done reading).
pub async fn delete(store: &GroupStore, holder: &str) -> StoreResult<()> {
    store.delete(&lease_key(holder)).await.map(|_| ())
}

/// Every lease of the group with its key; one that does not parse is skipped with a warning
/// (it protects nothing: a holder that cannot be read cannot be honoured).
pub async fn list(store: &GroupStore) -> StoreResult<Vec<(String, Lease)>> {
    let mut out = Vec::new();
    for obj in store.list_objects(LEASES_DIR).await? {
        let bytes = match store.get(&obj.key).await {
            Ok(b) => b,
            Err(super::StoreError::NotFound { .. }) => continue, // deleted meanwhile
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<Lease>(&bytes) {
            Ok(l) if l.version == LEASE_VERSION => out.push((obj.key, l)),
            _ => tracing::warn!(key = %obj.key, "a lease that does not parse is ignored"),
        }
    }
    Ok(out)
}

/// A lease held while a point is read, renewed in the background every third of its
/// life; [`Held::release`] deletes it (a holder killed before leaves it to expire).
pub struct Held {
    store: GroupStore,
    holder: String,
    renew: tokio::task::JoinHandle<()>,
}

/// Takes a lease on `point` for `purpose` (default life) and keeps it renewed.
pub async fn hold(store: &GroupStore, point: u64, purpose: &str) -> StoreResult<Held> {
    let holder = holder_name();
    put(store, &holder, point, purpose, DEFAULT_EXPIRY).await?;
    let (s, h, p) = (store.clone(), holder.clone(), purpose.to_string());
    let renew = tokio::spawn(async move {
        loop {
            tokio::time::sleep(DEFAULT_EXPIRY / 3).await;
            if let Err(e) = put(&s, &h, point, &p, DEFAULT_EXPIRY).await {
                tracing::warn!("cannot renew the lease on point {point}: {e}");
            }
        }
    });
    Ok(Held {
        store: store.clone(),
        holder,
        renew,
    })
}

impl Held {
    /// Stops renewing and deletes the lease.
    pub async fn release(self) {
        self.renew.abort();
        if let Err(e) = delete(&self.store, &self.holder).await {
            tracing::warn!(
                "cannot delete lease {} (it expires by itself): {e}",
                self.holder
            );
        }
    }
}
