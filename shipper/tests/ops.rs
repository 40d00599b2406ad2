//! What an operator's tooling sees: log lines without colour codes when stderr is not a
//! terminal, `--log-format json`, completions and man pages from both binaries.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use testkit::*;

#[test]
fn logs_have_no_colour_codes_off_a_terminal_and_json_parses() {
    let site = Site::with_stand_in(ServerKind::Local);
    site.tracker().add_disk("disk0.img", 1 << 20);
    site.tracker()
        .write("disk0.img", 0, &random_bytes(b"d", 64 << 10));
    let out = site.output("sync", &[], &[]);
    let err = stderr(&out);
    ok(&out);
    assert!(err.contains("INFO"), "the sync logs at info: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a log that is not a terminal: {err:?}"
    );

    let out = site.output("sync", &["--log-format", "json"], &[]);
    ok(&out);
    let lines: Vec<&str> = std::str::from_utf8(&out.stderr).unwrap().lines().collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{l}");
    }
}

#[test]
fn completions_and_man_pages_come_from_the_command_lines() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, sub) in [(shipper_bin(), "restore"), (tracker_bin(), "mount")] {
        let name = bin.file_name().unwrap().to_str().unwrap().to_string();
        let script = run(Command::new(&bin).args(["completions", "bash"]));
        assert!(
            script.contains(&format!("_{}", name.replace('-', "__"))),
            "{script}"
        );
        assert!(script.contains(sub), "{name} completes {sub}");
        run(Command::new(&bin).arg("man").arg(dir.path()));
        let page = std::fs::read_to_string(dir.path().join(format!("{name}-{sub}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
    }
    let bandwidth = std::fs::read_to_string(dir.path().join("hrl-shipper-sync.1")).unwrap();
    assert!(
        bandwidth.contains("bandwidth"),
        "the man page has the options of --help"
    );
}

/// Issue 13's reproduction: `resync --now` without `--target` used the default store although
/// the directory replicates elsewhere. Every `--dir` command now uses the target on record; a
/// different one is refused unless `--retarget`, which starts a new base there.
#[test]
fn dir_commands_keep_the_recorded_target_unless_retargeted() {
    let site = Site::with_stand_in(ServerKind::Local);
    site.tracker().add_disk("disk0.img", 1 << 20);
    site.tracker()
        .write("disk0.img", 0, &random_bytes(b"a", 200_000));
    let dir = site.dir.to_str().unwrap().to_string();
    let points = |store: &std::path::Path| {
        std::fs::read_dir(store.join("vm1").join("points")).map_or(0, |d| d.count())
    };
    let a = site.server.local_path();
    assert_eq!(site.sync()["point"], 1);

    // No --target: the recorded one (before: /var/lib/hrl/store).
    site.tracker()
        .write("disk0.img", 4096, &random_bytes(b"b", 8192));
    let r = site.shipper_ok(
        &[
            "resync",
            "--dir",
            &dir,
            "--group",
            "vm1",
            "--disk",
            "disk0.img",
            "--now",
            "--json",
        ],
        &[],
    );
    assert_eq!(r["point"], 2, "{r}");
    assert_eq!(points(&a), 2);
    ok(&site.shipper(&["sync", "--dir", &dir, "--group", "vm1"], &[]));
    assert_eq!(points(&a), 3);

    // Another --target: refused, nothing written there.
    let b = site.tmp.path().join("store-b");
    let b_url = b.to_str().unwrap();
    for cmd in [
        vec!["sync", "--dir", &dir, "--group", "vm1", "--target", b_url],
        vec![
            "resync", "--dir", &dir, "--group", "vm1", "--now", "--target", b_url,
        ],
    ] {
        let out = site.shipper(&cmd, &[]);
        assert!(!out.status.success(), "{cmd:?}");
        let e = stderr(&out);
        assert!(
            e.contains("--retarget") && e.contains("replicates to"),
            "{e}"
        );
        assert_eq!(points(&b), 0);
    }
    // The same store spelled as a file:// URL is the same target.
    let a_url = format!("file://{}", a.display());
    ok(&site.shipper(
        &["sync", "--dir", &dir, "--group", "vm1", "--target", &a_url],
        &[],
    ));
    assert_eq!(points(&a), 4);

    // --retarget: a new base in B, which later commands then use.
    let r = site.shipper_ok(
        &[
            "sync",
            "--dir",
            &dir,
            "--group",
            "vm1",
            "--target",
            b_url,
            "--retarget",
            "--json",
        ],
        &[],
    );
    assert_eq!(r["point"], 1, "a new chain in the new target: {r}");
    assert_eq!(r["base_copies"].as_array().unwrap().len(), 1, "{r}");
    ok(&site.shipper(&["sync", "--dir", &dir, "--group", "vm1"], &[]));
    assert_eq!((points(&a), points(&b)), (4, 2));
    let to = site.tmp.path().join("restored-b");
    ok(&site.shipper(
        &[
            "restore",
            "--target",
            b_url,
            "--group",
            "vm1",
            "--to",
            to.to_str().unwrap(),
        ],
        &[],
    ));
    assert_files_equal(&to.join("disk0.img"), &site.dir.join("disk0.img"));
}

/// The units parse (`systemd-analyze verify`, warnings included) with the built binaries.
#[test]
fn systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/systemd");
    let bin_dir = shipper_bin().parent().unwrap().to_path_buf();
    assert!(tracker_bin().starts_with(&bin_dir));
    for (unit, as_name) in [
        ("hrl-shipper.service", "hrl-shipper.service"),
        ("hrl-tracker@.service", "hrl-tracker@vms-vm1.service"),
    ] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(
            text.contains("Type=notify") && text.contains("WatchdogSec="),
            "{unit}"
        );
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(dir.path().join(as_name), text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", as_name])
            .current_dir(dir.path())
            .output()
            .expect("systemd-analyze (package systemd) is needed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{unit}: {err}"
        );
    }
}

/// `run` under systemd: READY once set up, watchdog pings, STOPPING on SIGTERM.
#[test]
fn the_service_notifies_systemd() {
    use std::os::unix::net::UnixDatagram;
    let site = Site::with_stand_in(ServerKind::Local);
    site.tracker().add_disk("disk0.img", 1 << 20);
    let sock_path = site.tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let env = [
        ("NOTIFY_SOCKET".to_string(), sock_path.display().to_string()),
        ("WATCHDOG_USEC".to_string(), "300000".to_string()),
    ];
    let svc = site.spawn_service(&["--interval", "1s", "--retry-unit", "1s"], &env, None);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 2) {
        let n = sock
            .recv(&mut buf)
            .expect("a notification within the deadline");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        seen.push('\n');
    }
    assert!(seen.contains("STATUS=protecting 1 directory"), "{seen}");
    assert!(site.stop_service(svc).success());
    sock.set_nonblocking(true).unwrap();
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("STOPPING=1"), "{seen}");
}
