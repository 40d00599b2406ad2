//! What a group takes in the store (objects and bytes), for the metrics: one listing of
//! the group (one request per 1000 objects on S3), so the service asks for it rarely.

use futures::TryStreamExt;

use super::{GroupStore, Op, StoreResult};

/// Objects and bytes under a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub objects: u64,
    pub bytes: u64,
}

impl GroupStore {
    /// The group's objects and their bytes.
    pub async fn usage(&self) -> StoreResult<Usage> {
        let prefix = self.path("");
        let mut u = Usage::default();
        let mut list = self.store().list(Some(&prefix));
        while let Some(m) = list
            .try_next()
            .await
            .map_err(|e| self.err(Op::List, &prefix, e))?
        {
            u.objects += 1;
            u.bytes += m.size;
        }
        Ok(u)
    }
}
