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
