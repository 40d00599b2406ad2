//! Fuzzes the decoders of encryption at rest: sealed-object envelopes (in memory and
//! streamed), key files and the group's encryption record. All come from places an attacker
//! may write (the store; a key file's disk), so checked: no panic, no unbounded allocation;
//! raw input is never accepted as a sealed object (it would need a forged tag); an object
//! sealed from the input round-trips, and damaged where the input says (a cut or a flipped
//! bit) it is refused by both openers.
//!
//! Two keys: raw input is opened under one that never seals anything. Sealing under the same
//! key let libFuzzer replay a genuine object: the target's own `bad != sealed` comparison is
//! a memcmp, which libFuzzer intercepts and feeds back as input bytes, so a 52-byte sealed
//! empty object came back as "raw input" and was (rightly) accepted. Under a key that seals
//! nothing, acceptance could only be a forged tag.
#![no_main]

use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

use hrl::crypto::{EncryptionRecord, GroupCrypto, MasterKey, ObjectKind};
use libfuzzer_sys::fuzz_target;

#[path = "damage.rs"]
mod damage;
use damage::damage;

const KEY: &str = "chunks/ab/abab";

fn new_crypto() -> GroupCrypto {
    let key = MasterKey::generate().expect("random key");
    GroupCrypto::new(&key, "fuzz")
}

/// Seals and opens the round trips: its objects show up in compares the fuzzer sees.
fn crypto() -> &'static GroupCrypto {
    static C: OnceLock<GroupCrypto> = OnceLock::new();
    C.get_or_init(new_crypto)
}

/// Only opens raw input: nothing is ever sealed under it.
fn victim() -> &'static GroupCrypto {
    static V: OnceLock<GroupCrypto> = OnceLock::new();
    V.get_or_init(new_crypto)
}

fn open_streaming(c: &GroupCrypto, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    c.open_reader(KEY, ObjectKind::Chunk, bytes)
        .read_to_end(&mut out)
        .ok()
        .map(|_| out)
}

fuzz_target!(|data: &[u8]| {
    // Raw input: never accepted (that would be a forged tag), never a panic.
    let v = victim();
    assert!(v.open(KEY, ObjectKind::Chunk, data).is_err());
    assert!(open_streaming(v, data).is_none());
    let c = crypto();
    let _ = MasterKey::decode(Path::new("fuzz.key"), data, Some(b"pw"));
    let _ = EncryptionRecord::from_json(data);

    // The input sealed, then damaged as its first 8 bytes say.
    let (ctl, plain) = data.split_at(data.len().min(8));
    let sealed = c.seal(KEY, ObjectKind::Chunk, plain).expect("seal");
    assert_eq!(c.open(KEY, ObjectKind::Chunk, &sealed).expect("open"), plain);
    assert_eq!(open_streaming(c, &sealed).as_deref(), Some(plain));
    let mut bad = sealed.clone();
    damage(&mut bad, ctl);
    if bad != sealed {
        assert!(c.open(KEY, ObjectKind::Chunk, &bad).is_err());
        assert!(open_streaming(c, &bad).is_none());
    }
});
