use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use proptest::prelude::*;

use super::envelope::{HEADER_LEN, MIN_LEN, SEGMENT_LOG2, TAG_LEN};
use super::*;

const SEG: usize = 1 << SEGMENT_LOG2;
const KEY: &str = "points/00000000000000000007.json";
/// Cheap argon2id parameters for tests (the defaults take a quarter second each).
const FAST: KdfParams = KdfParams {
    memory_kib: 64,
    passes: 1,
    lanes: 1,
};

fn crypto(group: &str) -> GroupCrypto {
    GroupCrypto::new(&MasterKey::generate().unwrap(), group)
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn open_streaming(
    c: &GroupCrypto,
    key: &str,
    kind: ObjectKind,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut out = Vec::new();
    match c.open_reader(key, kind, sealed).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) => Err(CryptoError::from_io(&e)
            .map(|c| CryptoError::Io(std::io::Error::other(c.to_string())))
            .unwrap_or(CryptoError::Io(e))),
    }
}

fn seal_streaming(
    c: &GroupCrypto,
    key: &str,
    kind: ObjectKind,
    plain: &[u8],
    piece: usize,
) -> Vec<u8> {
    let mut w = c.seal_writer(key, kind, Vec::new()).unwrap();
    for p in plain.chunks(piece.max(1)) {
        w.write_all(p).unwrap();
    }
    w.finish().unwrap()
}

/// Both openers refuse `sealed`; returns the in-memory one's error.
fn refused(c: &GroupCrypto, key: &str, kind: ObjectKind, sealed: &[u8]) -> CryptoError {
    assert!(
        open_streaming(c, key, kind, sealed).is_err(),
        "streaming open accepted it"
    );
    match c.open(key, kind, sealed) {
        Ok(_) => panic!("open accepted {} bytes", sealed.len()),
        Err(e) => e,
    }
}

#[test]
fn round_trip_at_segment_edges() {
    let c = crypto("g");
    for len in [0, 1, 4095, SEG - 1, SEG, SEG + 1, 2 * SEG, 2 * SEG + 7] {
        let plain = data(len, 3);
        let sealed = c.seal(KEY, ObjectKind::Log, &plain).unwrap();
        let segments = len.div_ceil(SEG).max(1);
        assert_eq!(
            sealed.len(),
            HEADER_LEN + len + segments * TAG_LEN,
            "len {len}"
        );
        assert_eq!(
            c.open(KEY, ObjectKind::Log, &sealed).unwrap(),
            plain,
            "len {len}"
        );
        assert_eq!(
            open_streaming(&c, KEY, ObjectKind::Log, &sealed).unwrap(),
            plain
        );
        let streamed = seal_streaming(&c, KEY, ObjectKind::Log, &plain, 100_000);
        assert_eq!(streamed.len(), sealed.len());
        assert_eq!(
            c.open(KEY, ObjectKind::Log, &streamed).unwrap(),
            plain,
            "len {len}"
        );
    }
}

#[test]
fn same_plaintext_seals_differently() {
    let c = crypto("g");
    let a = c.seal(KEY, ObjectKind::Chunk, b"same").unwrap();
    let b = c.seal(KEY, ObjectKind::Chunk, b"same").unwrap();
    assert_ne!(a, b, "a fresh random nonce per object");
}

#[test]
fn every_bit_flip_of_a_small_object_is_refused() {
    let c = crypto("g");
    let sealed = c.seal(KEY, ObjectKind::Manifest, &data(100, 1)).unwrap();
    for bit in 0..sealed.len() * 8 {
        let mut bad = sealed.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        refused(&c, KEY, ObjectKind::Manifest, &bad);
    }
}

#[test]
fn every_truncation_and_extension_of_a_small_object_is_refused() {
    let c = crypto("g");
    for plain_len in [0, 100] {
        let sealed = c.seal(KEY, ObjectKind::Owner, &data(plain_len, 2)).unwrap();
        for len in 0..sealed.len() {
            refused(&c, KEY, ObjectKind::Owner, &sealed[..len]);
        }
        let mut longer = sealed.clone();
        longer.push(0);
        refused(&c, KEY, ObjectKind::Owner, &longer);
    }
}

#[test]
fn segments_cut_at_a_boundary_reordered_or_dropped_are_refused() {
    let c = crypto("g");
    let plain = data(3 * SEG, 5);
    let sealed = c.seal(KEY, ObjectKind::Log, &plain).unwrap();
    let seg = SEG + TAG_LEN;
    let at = |i: usize| HEADER_LEN + i * seg;
    // Cut after one or two whole segments: what is left ends without the last flag.
    for n in [1, 2] {
        refused(&c, KEY, ObjectKind::Log, &sealed[..at(n)]);
    }
    // Segments 0 and 1 swapped.
    let mut swapped = sealed[..HEADER_LEN].to_vec();
    swapped.extend_from_slice(&sealed[at(1)..at(2)]);
    swapped.extend_from_slice(&sealed[at(0)..at(1)]);
    swapped.extend_from_slice(&sealed[at(2)..]);
    refused(&c, KEY, ObjectKind::Log, &swapped);
    // Segment 1 dropped.
    let mut dropped = sealed[..at(1)].to_vec();
    dropped.extend_from_slice(&sealed[at(2)..]);
    refused(&c, KEY, ObjectKind::Log, &dropped);
}

#[test]
fn another_name_kind_group_or_key_is_refused() {
    let master = MasterKey::generate().unwrap();
    let c = GroupCrypto::new(&master, "hv1-vms");
    let sealed = c.seal(KEY, ObjectKind::Manifest, b"{}").unwrap();
    assert_eq!(c.open(KEY, ObjectKind::Manifest, &sealed).unwrap(), b"{}");

    let e = refused(
        &c,
        "points/00000000000000000008.json",
        ObjectKind::Manifest,
        &sealed,
    );
    assert!(matches!(e, CryptoError::Refused { .. }), "{e}");
    let e = refused(&c, KEY, ObjectKind::Owner, &sealed);
    assert!(matches!(e, CryptoError::WrongKind { .. }), "{e}");
    // The kind byte rewritten to the expected kind: the associated data no longer matches.
    let mut rekinded = sealed.clone();
    rekinded[9] = ObjectKind::Owner as u8;
    let e = refused(&c, KEY, ObjectKind::Owner, &rekinded);
    assert!(matches!(e, CryptoError::Refused { .. }), "{e}");
    // The same key file, another group.
    let other_group = GroupCrypto::new(&master, "hv2-vms");
    let e = refused(&other_group, KEY, ObjectKind::Manifest, &sealed);
    assert!(matches!(e, CryptoError::Refused { .. }), "{e}");
    // Another key.
    let e = refused(&crypto("hv1-vms"), KEY, ObjectKind::Manifest, &sealed);
    assert!(matches!(e, CryptoError::Refused { .. }), "{e}");
    // A plain object where a sealed one belongs.
    let e = refused(&c, KEY, ObjectKind::Manifest, br#"{"version":1,"id":7}"#);
    assert!(matches!(e, CryptoError::NotEncrypted { .. }), "{e}");
}

#[test]
fn errors_name_the_object_and_say_what_to_do() {
    let c = crypto("g");
    let sealed = c.seal(KEY, ObjectKind::Chunk, b"block").unwrap();
    let mut bad = sealed.clone();
    bad[HEADER_LEN] ^= 1;
    let msg = c
        .open(KEY, ObjectKind::Chunk, &bad)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(KEY) && msg.contains("resync"), "{msg}");
    let msg = c
        .open(KEY, ObjectKind::Chunk, &sealed[..MIN_LEN - 1])
        .unwrap_err()
        .to_string();
    assert!(msg.contains(KEY) && msg.contains("truncated"), "{msg}");
    let mut newer = sealed.clone();
    newer[8] = 9;
    let msg = c
        .open(KEY, ObjectKind::Chunk, &newer)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("upgrade hrl"), "{msg}");
}

#[test]
fn chunk_names_are_keyed_per_key_and_group() {
    let master = MasterKey::generate().unwrap();
    let a = GroupCrypto::new(&master, "g1");
    let block = data(4096, 9);
    assert_eq!(
        a.chunk_name(&block),
        a.chunk_name(&block),
        "dedup within the group"
    );
    assert_ne!(a.chunk_name(&block), *blake3::hash(&block).as_bytes());
    assert_ne!(
        a.chunk_name(&block),
        GroupCrypto::new(&master, "g2").chunk_name(&block)
    );
    assert_ne!(a.chunk_name(&block), crypto("g1").chunk_name(&block));
    assert_ne!(a.chunk_name(&block), a.chunk_name(&data(4096, 10)));
    assert_eq!(a.chunk_name(&[0; 8192]), crate::chunk::ZERO_DIGEST);
}

#[test]
fn check_value_tells_the_right_key() {
    let master = MasterKey::generate().unwrap();
    let c = GroupCrypto::new(&master, "g");
    let recorded = c.check_value_hex();
    assert_eq!(GroupCrypto::new(&master, "g").check_value_hex(), recorded);
    GroupCrypto::new(&master, "g")
        .verify_check_value(&recorded)
        .unwrap();
    let e = crypto("g").verify_check_value(&recorded).unwrap_err();
    assert!(matches!(e, CryptoError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert!(c.verify_check_value("not hex").is_err());
    // The value is neither a subkey nor the master key.
    assert_ne!(c.check_value(), *master.bytes());
    assert_ne!(&c.check_value(), &*c.name_key);
}

#[test]
fn encryption_record_round_trip_and_validation() {
    let c = crypto("g");
    let rec = c.record();
    let parsed = EncryptionRecord::from_json(&rec.to_json()).unwrap();
    assert_eq!(parsed, rec);
    c.verify_check_value(&parsed.check).unwrap();
    assert!(!String::from_utf8(rec.to_json())
        .unwrap()
        .contains(&crate::to_hex(&*c.name_key)));
    for bad in [
        r#"{"version":2,"scheme":"xchacha20poly1305-stream","chunk_names":"blake3-keyed","check":"00"}"#,
        r#"{"version":1,"scheme":"rot13","chunk_names":"blake3-keyed","check":"00"}"#,
        r#"{"version":1,"scheme":"xchacha20poly1305-stream","chunk_names":"blake3-keyed","check":"00"}"#,
        r#"{"version":1,"scheme":"xchacha20poly1305-stream","chunk_names":"blake3-keyed","check":"00","key":"x"}"#,
        "",
    ] {
        let e = EncryptionRecord::from_json(bad.as_bytes()).unwrap_err();
        assert!(matches!(e, CryptoError::BadRecord { .. }), "{bad}: {e}");
    }
}

#[test]
fn debug_output_shows_no_key() {
    let master = MasterKey::generate().unwrap();
    let hex = crate::to_hex(master.bytes());
    let c = GroupCrypto::new(&master, "g");
    let shown = format!("{master:?} {c:?}");
    assert!(!shown.contains(&hex[..16]), "{shown}");
    assert!(
        !shown.contains(&crate::to_hex(&*c.name_key)[..16]),
        "{shown}"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn key_file_plain_round_trip_and_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("group.key");
    let key = MasterKey::create(&path, Protection::Plain).unwrap();
    assert_eq!(mode(&path), 0o600);
    let loaded = MasterKey::load(&path, None).unwrap();
    assert_eq!(loaded.bytes(), key.bytes());
    // A passphrase given for a plain file is not needed.
    assert_eq!(
        MasterKey::load(&path, Some(b"x")).unwrap().bytes(),
        key.bytes()
    );

    // Never over an existing file.
    let before = std::fs::read(&path).unwrap();
    let e = MasterKey::create(&path, Protection::Plain).unwrap_err();
    assert!(matches!(e, KeyFileError::Exists { .. }), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // Readable by others: refused, saying how to fix it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = MasterKey::load(&path, None).unwrap_err();
    assert!(
        matches!(e, KeyFileError::TooOpen { mode: 0o644, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

#[test]
fn key_file_is_never_written_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let link = tmp.path().join("k.key");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let e = MasterKey::create(&link, Protection::Plain).unwrap_err();
    assert!(matches!(e, KeyFileError::Symlink { .. }), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    let dangling = tmp.path().join("d.key");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    assert!(MasterKey::create(&dangling, Protection::Plain).is_err());
    assert!(!tmp.path().join("nowhere").exists());
    // Reading follows the operator's own links.
    let real = tmp.path().join("real.key");
    let key = MasterKey::create(&real, Protection::Plain).unwrap();
    let alias = tmp.path().join("alias.key");
    std::os::unix::fs::symlink(&real, &alias).unwrap();
    assert_eq!(MasterKey::load(&alias, None).unwrap().bytes(), key.bytes());
}

#[test]
fn key_file_passphrase_wrap_and_unwrap() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("wrapped.key");
    let key = MasterKey::create(&path, Protection::Passphrase(b"correct horse", FAST)).unwrap();
    assert_eq!(mode(&path), 0o600);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes.windows(32).any(|w| w == key.bytes()),
        "the key is not in the file"
    );
    let loaded = MasterKey::load(&path, Some(b"correct horse")).unwrap();
    assert_eq!(loaded.bytes(), key.bytes());

    let e = MasterKey::load(&path, Some(b"wrong horse")).unwrap_err();
    assert!(matches!(e, KeyFileError::WrongPassphrase { .. }), "{e}");
    let e = MasterKey::load(&path, None).unwrap_err();
    assert!(matches!(e, KeyFileError::PassphraseRequired { .. }), "{e}");
    let e = MasterKey::create(
        &tmp.path().join("empty.key"),
        Protection::Passphrase(b"", FAST),
    )
    .unwrap_err();
    assert!(matches!(e, KeyFileError::EmptyPassphrase { .. }), "{e}");
    assert!(!tmp.path().join("empty.key").exists());

    // Parameters weakened and the checksum recomputed: the wrapped key's tag refuses it.
    let mut tampered = bytes.clone();
    tampered[16] = 2; // passes: 1 -> 2
    let n = tampered.len() - 32;
    let sum = *blake3::hash(&tampered[..n]).as_bytes();
    tampered[n..].copy_from_slice(&sum);
    let e = MasterKey::decode(&path, &tampered, Some(b"correct horse")).unwrap_err();
    assert!(matches!(e, KeyFileError::WrongPassphrase { .. }), "{e}");
}

#[test]
fn damaged_key_files_are_refused_as_damaged() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k.key");
    for protection in [Protection::Plain, Protection::Passphrase(b"pw", FAST)] {
        let bytes = MasterKey::generate()
            .unwrap()
            .encode(&path, protection)
            .unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            let e = MasterKey::decode(&path, &bad, Some(b"pw")).unwrap_err();
            assert!(
                matches!(
                    e,
                    KeyFileError::Corrupt { .. } | KeyFileError::UnsupportedVersion { .. }
                ),
                "bit {bit}: {e}"
            );
        }
        for len in 0..bytes.len() {
            let e = MasterKey::decode(&path, &bytes[..len], Some(b"pw")).unwrap_err();
            assert!(matches!(e, KeyFileError::Corrupt { .. }), "len {len}: {e}");
            assert!(e.to_string().contains("backup"), "{e}");
        }
    }
}

#[test]
fn default_kdf_parameters_are_accepted() {
    // The real cost, once: 64 MiB, 3 passes.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("k.key");
    let key =
        MasterKey::create(&path, Protection::Passphrase(b"pw", KdfParams::default())).unwrap();
    assert_eq!(
        MasterKey::load(&path, Some(b"pw")).unwrap().bytes(),
        key.bytes()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..3000), piece in 1usize..700) {
        let c = crypto("g");
        let sealed = c.seal(KEY, ObjectKind::Chunk, &plain).unwrap();
        prop_assert_eq!(&c.open(KEY, ObjectKind::Chunk, &sealed).unwrap(), &plain);
        let streamed = seal_streaming(&c, KEY, ObjectKind::Chunk, &plain, piece);
        prop_assert_eq!(&open_streaming(&c, KEY, ObjectKind::Chunk, &streamed).unwrap(), &plain);
    }

    #[test]
    fn prop_bit_flip_anywhere_in_a_two_segment_object(bit in 0usize..((SEG + 1000 + HEADER_LEN + 2 * TAG_LEN) * 8)) {
        // One sealed object per run would be slow: seal once per process.
        static SEALED: std::sync::OnceLock<(GroupCrypto, Vec<u8>)> = std::sync::OnceLock::new();
        let (c, sealed) = SEALED.get_or_init(|| {
            let c = crypto("g");
            let s = c.seal(KEY, ObjectKind::Log, &data(SEG + 1000, 7)).unwrap();
            (c, s)
        });
        let mut bad = sealed.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(c.open(KEY, ObjectKind::Log, &bad).is_err());
        prop_assert!(open_streaming(c, KEY, ObjectKind::Log, &bad).is_err());
    }

    #[test]
    fn prop_truncation_of_a_two_segment_object(cut in 0usize..(SEG + 1000 + HEADER_LEN + 2 * TAG_LEN)) {
        static SEALED: std::sync::OnceLock<(GroupCrypto, Vec<u8>)> = std::sync::OnceLock::new();
        let (c, sealed) = SEALED.get_or_init(|| {
            let c = crypto("g");
            let s = c.seal(KEY, ObjectKind::Log, &data(SEG + 1000, 8)).unwrap();
            (c, s)
        });
        prop_assert!(c.open(KEY, ObjectKind::Log, &sealed[..cut]).is_err());
        prop_assert!(open_streaming(c, KEY, ObjectKind::Log, &sealed[..cut]).is_err());
    }

    /// The fuzzer's claim, swept: a well-formed header (any segment size the reader
    /// accepts) and any body without a tag made by the key is refused by both openers.
    #[test]
    fn prop_valid_header_and_raw_body_is_refused(
        seg_log2 in 12u8..=24,
        nonce in proptest::array::uniform24(any::<u8>()),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let c = crypto("fuzz");
        let mut input = b"hrl-enc\0".to_vec();
        input.extend_from_slice(&[1, ObjectKind::Chunk as u8, seg_log2, 0]);
        input.extend_from_slice(&nonce);
        input.extend_from_slice(&body);
        prop_assert!(c.open(KEY, ObjectKind::Chunk, &input).is_err());
        prop_assert!(open_streaming(&c, KEY, ObjectKind::Chunk, &input).is_err());
    }

    #[test]
    fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let c = crypto("g");
        let _ = c.open(KEY, ObjectKind::Chunk, &bytes);
        let _ = open_streaming(&c, KEY, ObjectKind::Chunk, &bytes);
        let _ = MasterKey::decode(Path::new("k"), &bytes, Some(b"pw"));
    }
}

/// The two fuzz findings (fuzz/regressions/crypto_decoders) are genuine sealed objects of a
/// 4-byte and an empty plaintext (56 and 52 bytes): the fuzz target sealed under the key it
/// opened raw input with, and libFuzzer fed the sealed bytes back from a memcmp it
/// intercepts. Under any other key both are refused by both openers.
#[test]
fn fuzz_findings_are_sealed_objects_of_another_key_and_are_refused() {
    let findings: [&[u8]; 2] = [
        include_bytes!(
            "../../fuzz/regressions/crypto_decoders/crash-13e9269abc8874778bd4c25680fb47cfc86d4097"
        ),
        include_bytes!(
            "../../fuzz/regressions/crypto_decoders/crash-acc0a1b80b421d4ead956be8faeecec57f06f954"
        ),
    ];
    let c = crypto("fuzz");
    for (input, plain_len) in findings.into_iter().zip([4usize, 0]) {
        let sealed = c
            .seal("chunks/ab/abab", ObjectKind::Chunk, &data(plain_len, 1))
            .unwrap();
        assert_eq!(
            input.len(),
            sealed.len(),
            "a sealed {plain_len}-byte object"
        );
        assert_eq!(input[..12], sealed[..12], "same fixed header");
        for _ in 0..8 {
            refused(&crypto("fuzz"), "chunks/ab/abab", ObjectKind::Chunk, input);
        }
    }
}

#[test]
fn object_kinds_follow_the_store_keys() {
    use crate::store::{base_key, chunk_key, log_key, point_key};
    let k = ObjectKind::of_key;
    assert_eq!(k(&chunk_key(&[7; 32])), Some(ObjectKind::Chunk));
    assert_eq!(k(&base_key("d1", 2, 3)), Some(ObjectKind::BaseIndex));
    assert_eq!(k(&log_key("d1", 2, 3, 4)), Some(ObjectKind::Log));
    assert_eq!(k(&point_key(9)), Some(ObjectKind::Manifest));
    assert_eq!(k("owner.json"), Some(ObjectKind::Owner));
    assert_eq!(
        k("owner/00000000000000000002.json"),
        Some(ObjectKind::Owner)
    );
    assert_eq!(k("leases/h-1-ab.json"), Some(ObjectKind::Lease));
    assert_eq!(k("gc/pending.json"), Some(ObjectKind::GcRecord));
    assert_eq!(
        k("tests/00000000000000000003-17.json"),
        Some(ObjectKind::TestRecord)
    );
    assert_eq!(k("disks/d1/g2-b9/merged.idx"), Some(ObjectKind::BaseIndex));
    assert_eq!(k(RECORD_KEY), None);
    assert_eq!(k("disks/d1/other"), None);
}
