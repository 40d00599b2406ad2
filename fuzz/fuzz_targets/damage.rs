//! Input helpers shared by the fuzz targets: numbers from input bytes, and damage (a cut or
//! a flipped bit) applied to a valid encoding where the input says.

/// Little-endian u64 from up to 8 bytes (missing bytes are zero).
pub fn u64_from(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

/// Cuts `bytes` short, flips one bit, or leaves them, as `ctl` picks.
pub fn damage(bytes: &mut Vec<u8>, ctl: &[u8]) {
    let c = u64_from(ctl);
    match c % 3 {
        0 => bytes.truncate((c >> 2) as usize % (bytes.len() + 1)),
        1 => {
            let bit = (c >> 2) as usize % (bytes.len() * 8).max(1);
            if let Some(b) = bytes.get_mut(bit / 8) {
                *b ^= 1 << (bit % 8);
            }
        }
        _ => {}
    }
}
