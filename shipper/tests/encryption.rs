#![allow(clippy::unwrap_used)]
//! Encryption at rest against real stores (docs/encryption.md): an encrypted group restores
//! byte for byte, its objects hold no plaintext block and its chunk names are not the
//! blocks' blake3; a missing, wrong or misplaced key is refused before anything is written or
//! restored; a flipped bit in any object, or two objects swapped, is refused, never applied.

use std::path::{Path, PathBuf};

use testkit::*;

/// A site whose commands get `--key` (through `HRL_KEY`) when `keyed`.
struct Enc {
    site: Site,
    key: PathBuf,
}

impl Enc {
    fn new(site: Site) -> Enc {
        let key = site.tmp.path().join("group.key");
        let k = key.display().to_string();
        ok(&site.shipper(&["key", "create", "--out", &k], &[]));
        Enc { site, key }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("HRL_KEY".into(), self.key.display().to_string())]
    }

    fn sync(&self) -> serde_json::Value {
        let out = ok(&self.site.output("sync", &["--json"], &self.env()));
        serde_json::from_str(out.trim()).unwrap()
    }

    /// `restore`/`verify`/`points` of the site's group with `env`.
    fn store_cmd(
        &self,
        cmd: &str,
        more: &[&str],
        env: &[(String, String)],
    ) -> std::process::Output {
        let url = self.site.server.url.clone();
        let mut a = vec![cmd, "--target", &url, "--group", &self.site.group];
        a.extend_from_slice(more);
        self.site.shipper(&a, env)
    }

    fn restore(&self, point: &str, to: &Path, env: &[(String, String)]) -> std::process::Output {
        let to = to.display().to_string();
        self.store_cmd("restore", &["--point", point, "--to", &to], env)
    }
}

/// Every object file under `root`, with its path relative to it.
fn objects(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn err_text(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(out)
}

fn disks_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |r| r.count())
}

#[test]
fn encrypted_sync_restores_byte_identical_and_stores_no_plaintext() {
    let e = Enc::new(Site::new(ServerKind::Local));
    let _m = e.site.mount();
    let disk = e.site.dir.join("disk0.img");
    let base = random_bytes(b"encrypted base", 2 << 20);
    let later = random_bytes(b"encrypted log", 300_000);
    {
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(16 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &base, 1 << 20).unwrap();
    }
    assert_eq!(e.sync()["point"], 1);
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&disk).unwrap(),
        &later,
        9 << 20,
    )
    .unwrap();
    assert_eq!(e.sync()["point"], 2);

    let to = e.site.tmp.path().join("restored");
    ok(&e.restore("latest", &to, &e.env()));
    assert_files_equal(&to.join("disk0.img"), &disk);
    ok(&e.store_cmd("verify", &[], &e.env()));

    // No object holds a piece of either write; zstd alone would keep them (random data).
    let needles = [
        &base[4096..4160],
        &base[(1 << 20) + 77..(1 << 20) + 141],
        &later[1000..1064],
    ];
    for n in needles {
        assert!(
            contains(&zstd::encode_all(&base[..], 3).unwrap(), n)
                || contains(&zstd::encode_all(&later[..], 3).unwrap(), n)
        );
    }
    let objs = objects(&e.site.store_group());
    assert!(
        objs.iter()
            .any(|(k, _)| k.starts_with("disks/") && k.contains("/logs/")),
        "{:?}",
        objs.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (k, bytes) in &objs {
        for n in needles {
            assert!(!contains(bytes, n), "{k} holds plaintext of the disk");
        }
        if k == "encryption.json" {
            let r: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(r["scheme"], "xchacha20poly1305-stream");
        } else {
            assert!(bytes.starts_with(b"hrl-enc\0"), "{k} is not sealed");
        }
    }
    // Chunk names are keyed: the plain blake3 of a stored block names no chunk.
    let block = &base[..256 << 10];
    let plain = blake3::hash(block).to_hex().to_string();
    let chunks: Vec<&String> = objs
        .iter()
        .map(|o| &o.0)
        .filter(|k| k.starts_with("chunks/"))
        .collect();
    assert_eq!(chunks.len(), 8, "{chunks:?}");
    assert!(chunks.iter().all(|k| !k.ends_with(&plain)), "{chunks:?}");
}

/// The store's objects (names and bytes), to show a refused command wrote nothing.
fn tree(s: &Site) -> Vec<(String, Vec<u8>)> {
    objects(&s.server.local_path())
}

#[test]
fn missing_wrong_or_misplaced_key_is_refused_before_anything_is_written() {
    let e = Enc::new(Site::with_stand_in(ServerKind::Local));
    e.site.tracker().add_disk("d.img", 4 << 20);
    e.site
        .tracker()
        .write("d.img", 0, &random_bytes(b"k", 1 << 20));
    e.sync();
    e.site
        .tracker()
        .write("d.img", 2 << 20, &random_bytes(b"k2", 4096));
    let before = tree(&e.site);
    let other = e.site.tmp.path().join("other.key");
    ok(&e.site.shipper(
        &["key", "create", "--out", &other.display().to_string()],
        &[],
    ));
    let wrong = vec![("HRL_KEY".to_string(), other.display().to_string())];

    let no_key = err_text(&e.site.try_sync(&[]));
    assert!(
        no_key.contains("is encrypted") && no_key.contains("--key"),
        "{no_key}"
    );
    let bad = err_text(&e.site.try_sync(&wrong));
    assert!(bad.contains("does not match group"), "{bad}");
    let to = e.site.tmp.path().join("r");
    let r = err_text(&e.restore("latest", &to, &[]));
    assert!(r.contains("is encrypted"), "{r}");
    assert_eq!(disks_in(&to), 0);
    let r = err_text(&e.restore("latest", &to, &wrong));
    assert!(r.contains("does not match group"), "{r}");
    assert_eq!(disks_in(&to), 0);
    err_text(&e.store_cmd("verify", &[], &wrong));
    err_text(&e.store_cmd("points", &[], &[]));
    assert!(
        tree(&e.site) == before,
        "a refused command wrote to the store"
    );
    assert_eq!(e.site.status()["health"], "Critical", "{}", e.site.status());

    // A plain group with points refuses a key.
    let plain = Site::with_stand_in(ServerKind::Local);
    plain.tracker().add_disk("p.img", 1 << 20);
    plain.tracker().write("p.img", 0, b"plain");
    plain.sync();
    plain.tracker().write("p.img", 4096, b"more");
    let before = tree(&plain);
    let key = vec![("HRL_KEY".to_string(), e.key.display().to_string())];
    let msg = err_text(&plain.try_sync(&key));
    assert!(
        msg.contains("is not encrypted") && msg.contains("--key is refused"),
        "{msg}"
    );
    assert!(tree(&plain) == before, "a refused sync wrote to the store");
    assert!(!plain.store_group().join("encryption.json").exists());
}

/// Flips one bit in the middle of `path`.
fn flip(path: &Path) -> Vec<u8> {
    let orig = std::fs::read(path).unwrap();
    let mut bad = orig.clone();
    let i = bad.len() / 2;
    bad[i] ^= 0x10;
    std::fs::write(path, bad).unwrap();
    orig
}

#[test]
fn a_flipped_bit_or_swapped_objects_are_refused_never_applied() {
    let e = Enc::new(Site::with_stand_in(ServerKind::Local));
    e.site.tracker().add_disk("d.img", 4 << 20);
    e.site
        .tracker()
        .write("d.img", 0, &random_bytes(b"f", 1 << 20));
    e.sync();
    e.site
        .tracker()
        .write("d.img", 3 << 20, &random_bytes(b"f2", 70_000));
    e.sync();
    let g = e.site.store_group();
    let objs = objects(&g);
    let first = |pre: &str, has: &str| {
        objs.iter()
            .map(|o| o.0.clone())
            .find(|k| k.starts_with(pre) && k.contains(has))
            .unwrap_or_else(|| panic!("no {pre}…{has} object"))
    };
    let kinds = [
        ("chunk", first("chunks/", "")),
        ("base index", first("disks/", "base.idx")),
        ("log", first("disks/", "/logs/")),
        ("manifest", "points/00000000000000000002.json".to_string()),
    ];
    for (what, key) in &kinds {
        let orig = flip(&g.join(key));
        let to = e
            .site
            .tmp
            .path()
            .join(format!("r-{}", what.replace(' ', "-")));
        let msg = err_text(&e.restore("2", &to, &e.env()));
        assert!(
            msg.contains("failed authentication") || msg.contains("damaged"),
            "{what}: {msg}"
        );
        assert_eq!(
            disks_in(&to),
            0,
            "{what}: a disk was restored from a refused object"
        );
        let v = err_text(&e.store_cmd("verify", &["--point", "2"], &e.env()));
        assert!(v.contains(key.rsplit('/').next().unwrap()), "{what}: {v}");
        std::fs::write(g.join(key), orig).unwrap();
    }
    // The owner record and the latest manifest are read by every cycle: refused, Critical.
    for key in ["owner.json", "points/00000000000000000002.json"] {
        let orig = flip(&g.join(key));
        let msg = err_text(&e.site.try_sync(&e.env()));
        assert!(msg.contains("failed authentication"), "{key}: {msg}");
        assert_eq!(e.site.status()["health"], "Critical", "{key}");
        std::fs::write(g.join(key), orig).unwrap();
    }
    // Swapped: point 1's manifest under point 2's name; one chunk under another's name.
    let m1 = std::fs::read(g.join("points/00000000000000000001.json")).unwrap();
    let m2 = std::fs::read(g.join("points/00000000000000000002.json")).unwrap();
    std::fs::write(g.join("points/00000000000000000002.json"), &m1).unwrap();
    let msg = err_text(&e.restore("2", &e.site.tmp.path().join("swap-m"), &e.env()));
    assert!(msg.contains("failed authentication"), "{msg}");
    std::fs::write(g.join("points/00000000000000000002.json"), &m2).unwrap();
    let chunks: Vec<String> = objs
        .iter()
        .map(|o| o.0.clone())
        .filter(|k| k.starts_with("chunks/"))
        .collect();
    let (a, b) = (g.join(&chunks[0]), g.join(&chunks[1]));
    let (ca, cb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &cb).unwrap();
    let to = e.site.tmp.path().join("swap-c");
    let msg = err_text(&e.restore("2", &to, &e.env()));
    assert!(msg.contains("failed authentication"), "{msg}");
    assert_eq!(disks_in(&to), 0);
    std::fs::write(&a, &ca).unwrap();
    // Everything back: the group restores again.
    ok(&e.store_cmd("verify", &[], &e.env()));
}

fn round_trip_on(kind: ServerKind) {
    let e = Enc::new(Site::with_stand_in(kind));
    e.site.tracker().add_disk("d.img", 4 << 20);
    e.site
        .tracker()
        .write("d.img", 0, &random_bytes(b"s3", 1 << 20));
    e.sync();
    e.site
        .tracker()
        .write("d.img", 2 << 20, &random_bytes(b"s3b", 50_000));
    e.sync();
    let to = e.site.tmp.path().join("r");
    ok(&e.restore("latest", &to, &e.env()));
    assert_files_equal(&to.join("d.img"), &e.site.dir.join("d.img"));
    ok(&e.store_cmd("verify", &[], &e.env()));
    let no_key = err_text(&e.restore("latest", &e.site.tmp.path().join("r2"), &[]));
    assert!(no_key.contains("is encrypted"), "{no_key}");
}

#[test]
fn moto_encrypted_round_trip() {
    round_trip_on(ServerKind::Moto);
}

#[test]
fn azurite_encrypted_round_trip() {
    round_trip_on(ServerKind::Azurite);
}

#[test]
fn passphrase_key_file_round_trip() {
    let s = Site::with_stand_in(ServerKind::Local);
    let key = s.tmp.path().join("pw.key");
    let pass = s.tmp.path().join("pass");
    std::fs::write(&pass, "correct horse\n").unwrap();
    let (k, p) = (key.display().to_string(), pass.display().to_string());
    ok(&s.shipper(
        &["key", "create", "--out", &k, "--passphrase-file", &p],
        &[],
    ));
    let again = err_text(&s.shipper(&["key", "create", "--out", &k], &[]));
    assert!(again.contains("exists already"), "{again}");
    s.tracker().add_disk("d.img", 1 << 20);
    s.tracker().write("d.img", 0, b"secret");
    let env = |p: &str| {
        vec![
            ("HRL_KEY".to_string(), k.clone()),
            ("HRL_PASSPHRASE_FILE".to_string(), p.to_string()),
        ]
    };
    let need = err_text(&s.try_sync(&[("HRL_KEY".to_string(), k.clone())]));
    assert!(need.contains("passphrase"), "{need}");
    std::fs::write(s.tmp.path().join("bad"), "wrong\n").unwrap();
    let bad = err_text(&s.try_sync(&env(&s.tmp.path().join("bad").display().to_string())));
    assert!(bad.contains("wrong passphrase"), "{bad}");
    assert!(
        !s.store_group().exists(),
        "a refused sync wrote to the store"
    );
    ok(&s.try_sync(&env(&p)));
    assert!(s.store_group().join("encryption.json").exists());
}

/// The store kept an encrypted manifest but its reply was lost: the retry finds other sealed
/// bytes (sealing is not deterministic), compares the plaintexts, and counts the point as
/// its own.
#[test]
fn a_lost_reply_to_an_encrypted_manifest_put_still_commits_the_point() {
    let e = Enc::new(Site::with_stand_in(ServerKind::Moto));
    let proxy = proxy::FaultyProxy::start(e.site.server.port);
    proxy.add(proxy::Rule {
        method: "PUT",
        contains: "/points/".into(),
        fault: proxy::Fault::LoseReply,
        times: 1,
    });
    let mut env: Vec<(String, String)> = e
        .site
        .server
        .env
        .iter()
        .map(|(k, v)| match k.as_str() {
            "AWS_ENDPOINT" => (k.clone(), format!("http://127.0.0.1:{}", proxy.port)),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    env.extend(e.env());
    e.site.tracker().add_disk("d.img", 1 << 20);
    e.site
        .tracker()
        .write("d.img", 0, &random_bytes(b"lost", 100_000));
    let a = e.site.args("sync");
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&shipper(&args, &env, &e.site.run_dir, &e.site.state));
    assert_eq!(proxy.faults(), 1, "the manifest's reply was never lost");
    assert_eq!(e.site.status()["health"], "Normal");
    let to = e.site.tmp.path().join("r");
    ok(&e.restore("latest", &to, &e.env()));
    assert_files_equal(&to.join("d.img"), &e.site.dir.join("d.img"));
}
