//! The shipper against a hostile store and a careless host (issue 17): tampered manifests
//! cannot make restore write outside `--to`, restored disks keep their recorded mode and
//! owner, local store and state are root's alone, credentials never show, and names with
//! terminal escapes are printed escaped.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use testkit::*;

/// A site served by the stand-in tracker, with one disk `disk` holding a few bytes.
fn site(kind: ServerKind, disk: &str) -> Site {
    let e = Site::with_stand_in(kind);
    e.tracker().add_disk(disk, 1 << 20);
    e.tracker().write(disk, 4096, b"hello, store");
    e
}

/// A change to one disk entry of a manifest.
type Edit<'a> = dyn Fn(&mut serde_json::Value) + 'a;

/// Copies manifest 1 to id 2 with `edit` applied to its first disk.
fn forge(e: &Site, edit: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(e.manifest_path(1)).unwrap()).unwrap();
    v["id"] = 2.into();
    edit(&mut v["disks"][0]);
    std::fs::write(e.manifest_path(2), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn a_tampered_manifest_cannot_write_outside_the_restore_directory() {
    let e = site(ServerKind::Local, "disk0.img");
    ok(&e.try_sync(&[]));
    let outside = e.tmp.path().join("x");
    std::fs::create_dir_all(&outside).unwrap();
    let pwned = outside.join("pwned.img");
    let traversal = format!("/../../../../../../../../../..{}", pwned.display());
    let to = e.tmp.path().join("R");
    let huge = serde_json::Value::from(u64::MAX / 2);
    let forgeries: Vec<(&str, Box<Edit<'_>>)> = vec![
        (
            "traversal",
            Box::new(|d| d["name"] = traversal.clone().into()),
        ),
        ("dotdot", Box::new(|d| d["name"] = "..".into())),
        ("slash", Box::new(|d| d["name"] = "sub/d.img".into())),
        ("nul", Box::new(|d| d["name"] = "a\u{0}b".into())),
        ("long", Box::new(|d| d["name"] = "x".repeat(300).into())),
        ("size", Box::new(|d| d["disk_size"] = huge.clone())),
        (
            "key",
            Box::new(|d| d["base"]["index_key"] = "../../other/base.idx".into()),
        ),
    ];
    for (what, edit) in &forgeries {
        forge(&e, edit);
        for args in [
            vec![
                "verify",
                "--target",
                &e.server.url,
                "--group",
                "vm1",
                "--point",
                "all",
            ],
            vec!["points", "--target", &e.server.url, "--group", "vm1"],
        ] {
            let out = e.shipper(&args, &[]);
            assert!(!out.status.success(), "{what}: {args:?} accepted it");
            assert!(stderr(&out).contains("refused"), "{what}: {}", stderr(&out));
        }
        let out = e.try_restore("latest", &to);
        assert!(!out.status.success(), "{what}: restore accepted it");
        assert!(!pwned.exists(), "{what}: restore wrote outside --to");
        let left: Vec<_> = std::fs::read_dir(&to)
            .map(|d| d.flatten().map(|x| x.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{what}: restore left {left:?}");
    }
    // The untouched point still restores.
    std::fs::remove_file(e.manifest_path(2)).unwrap();
    ok(&e.try_restore("latest", &to));
    assert_same_file(&to.join("disk0.img"), &e.dir.join("disk0.img"));
}

#[test]
fn restore_keeps_the_recorded_mode_and_owner_or_makes_the_disk_private() {
    let e = site(ServerKind::Local, "disk0.img");
    let disk = e.dir.join("disk0.img");
    std::os::unix::fs::chown(&disk, Some(1234), Some(2345)).unwrap();
    std::fs::set_permissions(&disk, std::fs::Permissions::from_mode(0o4640)).unwrap();
    ok(&e.try_sync(&[]));
    let to = e.tmp.path().join("R1");
    ok(&e.try_restore("latest", &to));
    let md = std::fs::metadata(to.join("disk0.img")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o640, 1234, 2345),
        "restore keeps the mode (never setuid) and owner recorded at the seal"
    );
    // A point written before hrl recorded them: private to root.
    forge(&e, |d| {
        d.as_object_mut().unwrap().remove("file");
    });
    let to = e.tmp.path().join("R2");
    ok(&e.try_restore("latest", &to));
    let md = std::fs::metadata(to.join("disk0.img")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o600, 0));
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            walk(&p, out);
        }
    }
}

#[test]
fn local_store_and_state_are_private() {
    let e = site(ServerKind::Local, "disk0.img");
    // A state directory left world-readable by an older version is narrowed too.
    std::fs::create_dir_all(&e.state).unwrap();
    std::fs::set_permissions(&e.state, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(&e.try_sync(&[]));
    e.tracker().write("disk0.img", 0, b"second interval");
    ok(&e.try_sync(&[]));
    let mut all = vec![e.server.local_path(), e.state.clone()];
    walk(&e.server.local_path(), &mut all);
    walk(&e.state, &mut all);
    let wide: Vec<String> = all
        .iter()
        .filter_map(|p| {
            let md = std::fs::symlink_metadata(p).unwrap();
            let want = if md.is_dir() { 0o700 } else { 0o600 };
            (md.mode() & 0o777 & !want != 0)
                .then(|| format!("{} {:o}", p.display(), md.mode() & 0o777))
        })
        .collect();
    assert!(wide.is_empty(), "readable by others: {wide:?}");
}

fn credentials_never_show(kind: ServerKind, secret_var: &str, secret: &str) {
    let e = site(ServerKind::Local, "disk0.img");
    let server = Server::start(kind, "hrlsecret");
    let mut env_vars = server.env.clone();
    env_vars.retain(|(k, _)| k != secret_var);
    env_vars.push((secret_var.into(), secret.into()));
    env_vars.push(("HRL_LOG".into(), "debug".into()));
    let dir = e.dir.to_str().unwrap();
    let mut outputs = Vec::new();
    let run = |args: &[&str]| {
        let o = shipper(args, &env_vars, &e.run_dir, &e.state);
        let mut all = o.stdout.clone();
        all.extend_from_slice(&o.stderr);
        (o, all)
    };
    let sync = [
        "sync",
        "--dir",
        dir,
        "--target",
        &server.url,
        "--group",
        "vm1",
    ];
    let (o, all) = run(&[&sync[..], &["--json"]].concat());
    ok(&o);
    outputs.push(all);
    for args in [
        vec!["status", "--dir", dir],
        vec!["status", "--dir", dir, "--json"],
        vec![
            "points",
            "--target",
            &server.url,
            "--group",
            "vm1",
            "--json",
        ],
        vec!["verify", "--target", &server.url, "--group", "vm1"],
    ] {
        let (o, all) = run(&args);
        ok(&o);
        outputs.push(all);
    }
    // A failing run (unreachable endpoint) prints its errors too.
    let mut broken = env_vars.clone();
    for (k, v) in broken.iter_mut() {
        if k == "AWS_ENDPOINT" || k == "AZURITE_BLOB_STORAGE_URL" {
            *v = "http://127.0.0.1:1".into();
        }
    }
    let o = shipper(&sync, &broken, &e.run_dir, &e.state);
    assert!(!o.status.success());
    outputs.push([o.stdout, o.stderr].concat());
    let mut files = Vec::new();
    walk(&e.state, &mut files);
    for f in files.iter().filter(|f| f.is_file()) {
        outputs.push(std::fs::read(f).unwrap());
    }
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            !String::from_utf8_lossy(out).contains(secret),
            "output {i} shows the secret: {}",
            String::from_utf8_lossy(out)
        );
    }
}

#[test]
fn s3_credentials_never_show() {
    credentials_never_show(
        ServerKind::Moto,
        "AWS_SECRET_ACCESS_KEY",
        "hrl-test-SECRET-s3-0123456789abcdef",
    );
}

#[test]
fn azure_credentials_never_show() {
    credentials_never_show(
        ServerKind::Azurite,
        "AZURE_STORAGE_ACCOUNT_KEY",
        AZURITE_KEY,
    );
}

#[test]
fn names_with_terminal_escapes_are_printed_escaped() {
    let name = "\u{1b}]0;pwned\u{7}\u{1b}[2J.img";
    let e = site(ServerKind::Local, name);
    ok(&e.try_sync(&[]));
    let dir = e.dir.to_str().unwrap();
    for args in [
        vec!["points", "--target", &e.server.url, "--group", "vm1"],
        vec!["status", "--dir", dir],
    ] {
        let out = ok(&e.shipper(&args, &[]));
        assert!(
            !out.contains('\u{1b}'),
            "{args:?} printed raw escapes: {out:?}"
        );
        assert!(out.contains("\\u{1b}]0;pwned"), "{args:?}: {out:?}");
    }
    // JSON output keeps the real name.
    let out = ok(&e.shipper(
        &[
            "points",
            "--target",
            &e.server.url,
            "--group",
            "vm1",
            "--json",
        ],
        &[],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["disks"][0]["name"], name);
}
