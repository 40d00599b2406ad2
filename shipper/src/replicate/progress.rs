//! What a resync did and how far it is (kept in the state file, shown by `status`, reported
//! with a base copy's figures).

use serde::{Deserialize, Serialize};

/// How a resync chooses the blocks it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResyncKind {
    /// Only blocks inside trusted dirty extents.
    Targeted,
    /// Every block that holds data in the source or in the replica.
    Full,
}

/// Progress of a resync, kept in the state file and shown by `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResyncProgress {
    pub kind: Option<ResyncKind>,
    pub blocks_total: u64,
    pub blocks_compared: u64,
    pub blocks_differing: u64,
    pub bytes_read: u64,
    /// Compressed chunk bytes uploaded.
    pub bytes_sent: u64,
    /// Compressed bytes of the replica's own blocks that only existed in shipped logs,
    /// uploaded as chunks so that the new base holds them (not part of the difference).
    #[serde(default)]
    pub rebuilt_bytes_sent: u64,
    /// Estimated seconds left at the rate so far.
    pub eta_s: Option<u64>,
    /// Times this resync was resumed after an interruption.
    pub resumed: u32,
}
