//! `hrl`: what the tracker and the shipper share.
//!
//! - [`log`]: the `.hrl` change-log format (writer, reader, replay, coalescing);
//! - [`bitmap`]: the persistent per-disk dirty bitmap that covers what a crash may lose;
//! - [`chunk`]: fixed-block blake3 digests of an image and their compact index;
//! - [`naming`]: the file names hrl keeps beside a disk;
//! - [`control`]: the tracker's control-socket protocol (seal, ack, mode, …);
//! - [`crypto`]: client-side encryption at rest (key file, keyed chunk names, sealed objects);
//! - [`store`]: the object-store layout and recovery-point manifests;
//! - [`owner`]: a group's owner records (epochs) and the points a takeover fenced.

pub mod bitmap;
pub mod chunk;
pub mod control;
pub mod crypto;
pub mod display;
pub mod log;
pub mod naming;
pub mod owner;
pub mod sidecar;
pub mod store;
pub mod store_check;

/// A blake3 digest.
pub type Digest = [u8; 32];

/// Lower-case hex of a digest or id, as used in manifests, the control protocol and the CLI.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses lower- or upper-case hex into exactly `N` bytes.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d: Digest = *blake3::hash(b"x").as_bytes();
        assert_eq!(from_hex::<32>(&to_hex(&d)), Some(d));
        assert_eq!(from_hex::<2>("zz00"), None);
        assert_eq!(from_hex::<2>("abc"), None);
    }
}
