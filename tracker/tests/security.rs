//! The tracker as an attacker on the same host sees it (issue 17): a non-root user created by
//! each test tries setuid programs and device nodes through the mount, reads logs of a
//! private disk, plants a symlink where a bitmap will be created, keeps setuid bits across
//! truncate / O_TRUNC / fallocate / copy_file_range / write, bypasses POSIX ACLs, and talks to
//! the control socket. Every test fails on the tracker before the fixes.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hrl::control::Request;
use testkit::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
}

/// A scratch directory other users can traverse (tempdirs are 0700) holding the image
/// directory `vms` (with `mode`) and a run directory `run` (0755), and a fresh test user.
fn setup(mode: u32) -> (tempfile::TempDir, PathBuf, PathBuf, TestUser) {
    let tmp = scratch();
    chmod(tmp.path(), 0o755);
    let dir = tmp.path().join("vms");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, mode);
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    chmod(&run, 0o755);
    (tmp, dir, run, TestUser::create())
}

fn text(o: &Output) -> String {
    format!(
        "status {}; stdout {}; stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Mount options (per-mount flags and superblock options) of the mount at `dir`.
fn mount_options(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy();
    let line = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(&*d))
        .unwrap_or_else(|| panic!("{d} is not mounted"));
    let f: Vec<&str> = line.split(' ').collect();
    f[5].split(',').map(String::from).collect()
}

/// A tmpfs with the given options, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, opts: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "hrl-sec-test"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn mount_is_nosuid_nodev_and_noexec_like_its_backing() {
    let (tmp, dir, run, user) = setup(0o755);
    // A setuid-root copy of `id` and a world-writable device node in the directory.
    std::fs::copy("/usr/bin/id", dir.join("id")).unwrap();
    chmod(&dir.join("id"), 0o4755);
    let st = Command::new("mknod")
        .args(["-m", "0666"])
        .arg(dir.join("mem"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    let m = Mounted::in_place(&dir, &run);
    let opts = mount_options(&m.mountpoint);
    assert!(
        opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"),
        "mount options {opts:?}"
    );
    let out = user
        .command(m.path("id").to_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("euid=0") && !said.starts_with("uid=0"),
        "setuid root through the mount: {said}"
    );
    let out = user.python(&format!(
        "open({:?}, 'wb').write(b'x')",
        m.path("mem").to_str().unwrap()
    ));
    assert!(
        !out.status.success(),
        "a device node was writable through the mount: {}",
        text(&out)
    );
    m.unmount();

    // A noexec backing mount gives a noexec overmount.
    let backing = Tmpfs::mount(&tmp.path().join("noexec"), "noexec,mode=0755");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::separate(&backing.0, &mnt, &run);
    let opts = mount_options(&m.mountpoint);
    assert!(opts.iter().any(|o| o == "noexec"), "mount options {opts:?}");
    m.unmount();
}

#[test]
fn sidecars_take_the_disks_owner_and_mode() {
    let (_tmp, dir, run, user) = setup(0o711);
    let secret = dir.join("secret.img");
    std::fs::write(&secret, vec![0u8; 1 << 20]).unwrap();
    chmod(&secret, 0o600);
    let mine = dir.join("mine.img");
    std::fs::write(&mine, vec![0u8; 1 << 20]).unwrap();
    chown(&mine, user.uid, user.gid);
    chmod(&mine, 0o640);

    let m = Mounted::in_place(&dir, &run);
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.path("secret.img"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"SECRET-PAYLOAD", 0))
        .unwrap();
    let sealed = m.seal();
    let sealed_name = sealed
        .iter()
        .find(|l| l.disk == "secret.img")
        .map(|l| l.log.clone())
        .unwrap();
    let read_as_user = |p: &Path| {
        user.python(&format!(
            "import sys\nd=open({:?},'rb').read()\nsys.exit(0 if b'SECRET-PAYLOAD' in d else 3)",
            p.to_str().unwrap()
        ))
    };
    let sidecars = |d: &Path| {
        [
            d.join("secret.img.hrl"),
            d.join(&sealed_name),
            d.join("secret.img.hrl-bitmap"),
        ]
    };
    for p in sidecars(&m.mountpoint) {
        let out = read_as_user(&p);
        assert!(
            !out.status.success(),
            "{} readable by another user: {}",
            p.display(),
            text(&out)
        );
    }
    m.unmount();
    for p in sidecars(&dir) {
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid()),
            (0o600, 0),
            "{}",
            p.display()
        );
        let out = read_as_user(&p);
        assert!(
            !out.status.success(),
            "{} readable: {}",
            p.display(),
            text(&out)
        );
    }
    for p in [dir.join("mine.img.hrl"), dir.join("mine.img.hrl-bitmap")] {
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o600, user.uid, user.gid),
            "{} takes the disk's owner",
            p.display()
        );
    }
}

#[test]
fn a_planted_bitmap_symlink_is_not_followed() {
    let (tmp, dir, run, _user) = setup(0o755);
    let private = tmp.path().join("root-only");
    std::fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let target = private.join("created-by-root");
    std::fs::write(dir.join("x.img"), vec![1u8; 1 << 20]).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("x.img.hrl-bitmap")).unwrap();

    let mut child = Command::new(tracker_bin())
        .arg("mount")
        .arg(&dir)
        .arg("--foreground")
        .env("HRL_RUN_DIR", &run)
        .env("RUST_LOG", "warn,fuser=error")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The tracker either refuses (exits) or mounts; neither within 30 s is not a failure
    // here: what matters is the planted symlink's target, checked below.
    let exited = poll(Duration::from_secs(30), || {
        match child.try_wait().unwrap() {
            Some(st) => Ok(Some(st)),
            None if is_mounted(&dir) => Ok(None),
            None => Err(()),
        }
    })
    .unwrap_or(None);
    let m = Mounted {
        child: exited.is_none().then_some(child),
        mountpoint: dir.clone(),
        backing: dir.clone(),
        run_dir: run.clone(),
    };
    drop(m);
    assert!(
        !target.exists(),
        "the tracker created a file through a planted symlink"
    );
    assert!(std::fs::symlink_metadata(dir.join("x.img.hrl-bitmap"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// Each way an unprivileged writer changes a file through the mount must clear setuid and
/// setgid, as the kernel does on a plain filesystem.
#[test]
fn setuid_and_setgid_are_cleared_by_every_unprivileged_change() {
    let (_tmp, dir, run, user) = setup(0o755);
    std::fs::copy("/usr/bin/id", dir.join("idsrc")).unwrap();
    chmod(&dir.join("idsrc"), 0o755);
    let ops = [
        ("truncate", "os.truncate(p, 100)"),
        ("otrunc", "os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))"),
        ("fallocate", "fd = os.open(p, os.O_WRONLY); os.posix_fallocate(fd, 0, 1 << 20)"),
        (
            "copy",
            "s = os.open(src, os.O_RDONLY); d = os.open(p, os.O_WRONLY); n = os.copy_file_range(s, d, 4096, 0, 0); assert n > 0, n",
        ),
        ("write", "fd = os.open(p, os.O_WRONLY); os.pwrite(fd, b'x', 0)"),
        ("disk", "os.truncate(p, 4096)"),
    ];
    for (op, _) in &ops {
        for (suffix, mode) in [("u", 0o4775), ("g", 0o2775)] {
            let name = if *op == "disk" {
                format!("{op}{suffix}.img")
            } else {
                format!("{op}{suffix}")
            };
            let p = dir.join(name);
            std::fs::write(&p, vec![7u8; 64 << 10]).unwrap();
            chown(&p, 0, user.gid);
            chmod(&p, mode);
        }
    }
    let m = Mounted::in_place(&dir, &run);
    let mut kept = Vec::new();
    for (op, code) in &ops {
        for suffix in ["u", "g"] {
            let name = if *op == "disk" {
                format!("{op}{suffix}.img")
            } else {
                format!("{op}{suffix}")
            };
            let p = m.path(&name);
            let out = user.python(&format!(
                "import os\np = {:?}\nsrc = {:?}\n{code}\n",
                p.to_str().unwrap(),
                m.path("idsrc").to_str().unwrap()
            ));
            assert!(out.status.success(), "{op}: {}", text(&out));
            let mode = std::fs::metadata(&p).unwrap().mode() & 0o7777;
            if mode & 0o6000 != 0 {
                kept.push(format!("{name}: {mode:o}"));
            }
        }
    }
    assert!(kept.is_empty(), "setuid/setgid kept after: {kept:?}");
    m.unmount();
}

/// `system.posix_acl_access` value: (tag, perm, id) entries in the kernel's xattr format.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_acl(p: &Path, entries: &[(u16, u16, u32)]) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let v = acl_xattr(entries);
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr ACL: {}", std::io::Error::last_os_error());
}

#[test]
fn posix_acls_are_honoured_through_the_mount() {
    const USER_OBJ: u16 = 1;
    const USER: u16 = 2;
    const GROUP_OBJ: u16 = 4;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const NONE: u32 = u32::MAX;
    let (_tmp, dir, run, user) = setup(0o755);
    // Deny: the user's group may read, a named entry says the user may not.
    let deny = dir.join("deny.img");
    std::fs::write(&deny, b"DENIED-DATA").unwrap();
    chown(&deny, 0, user.gid);
    set_acl(
        &deny,
        &[
            (USER_OBJ, 6, NONE),
            (USER, 0, user.uid),
            (GROUP_OBJ, 4, NONE),
            (MASK, 4, NONE),
            (OTHER, 0, NONE),
        ],
    );
    // Grant: mode alone says no, a named entry lets the user read.
    let grant = dir.join("grant.img");
    std::fs::write(&grant, b"GRANTED-DATA").unwrap();
    set_acl(
        &grant,
        &[
            (USER_OBJ, 6, NONE),
            (USER, 4, user.uid),
            (GROUP_OBJ, 0, NONE),
            (MASK, 4, NONE),
            (OTHER, 0, NONE),
        ],
    );
    let read = |p: &Path| user.python(&format!("open({:?},'rb').read()", p.to_str().unwrap()));
    assert!(!read(&deny).status.success(), "raw deny");
    assert!(read(&grant).status.success(), "raw grant");
    let m = Mounted::in_place(&dir, &run);
    let out = read(&m.path("deny.img"));
    assert!(
        !out.status.success(),
        "a deny ACL entry was ignored through the mount"
    );
    let out = read(&m.path("grant.img"));
    assert!(
        out.status.success(),
        "a grant ACL entry was ignored through the mount: {}",
        text(&out)
    );
    m.unmount();
}

#[test]
fn only_root_may_use_the_control_socket() {
    let (_tmp, dir, run, user) = setup(0o755);
    std::fs::write(dir.join("d.img"), vec![1u8; 1 << 20]).unwrap();
    let m = Mounted::in_place(&dir, &run);
    std::fs::write(m.path("d.img"), vec![2u8; 1 << 20]).unwrap();
    let sealed = m.seal();
    let sealed_log = dir.join(&sealed[0].log);
    assert!(sealed_log.exists());
    let socket = m.socket();
    let ask = |req: &str| {
        user.python(&format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ns.sendall(b'{req}\\n')\nsys.stdout.write(s.makefile().readline())",
            socket.to_str().unwrap()
        ))
    };
    let seq = sealed[0].seq;
    let requests = [
        r#"{"op":"seal"}"#.to_string(),
        format!(r#"{{"op":"ack","disk":"d.img","seq":{seq}}}"#),
        r#"{"op":"clear","disk":"d.img","upto_seal":999}"#.to_string(),
        r#"{"op":"mode","disk":"d.img","mode":"bitmap"}"#.to_string(),
    ];
    // The socket's mode keeps others out; and a socket made wider by mistake still refuses
    // every request from them.
    for widen in [false, true] {
        if widen {
            chmod(&socket, 0o666);
        }
        for req in &requests {
            let out = ask(req);
            let answer = String::from_utf8_lossy(&out.stdout);
            assert!(
                !answer.contains(r#""ok":true"#),
                "non-root request {req} was served: {answer}"
            );
        }
    }
    assert!(
        sealed_log.exists(),
        "an ack from a non-root user deleted a log"
    );
    let st = m.request(&Request::Status).status.unwrap();
    assert_eq!(st.disks[0].pending_logs, 1, "a non-root seal was served");
    assert_eq!(
        format!("{:?}", st.disks[0].mode).to_lowercase(),
        "log",
        "a non-root mode switch was served"
    );
    m.unmount();
}

/// Descriptors of the backing files (`open_disk`) go only to a root sender of the request
/// itself: another user on a socket made wider by mistake gets none, and neither does a
/// process that connected as root and then dropped to another user (its connection's
/// SO_PEERCRED still says root; the request's own credentials do not).
#[test]
fn descriptors_go_only_to_a_root_sender() {
    let (_tmp, dir, run, user) = setup(0o755);
    std::fs::write(dir.join("d.img"), vec![1u8; 1 << 20]).unwrap();
    let m = Mounted::in_place(&dir, &run);
    let socket = m.socket();
    // Connects, optionally drops to `uid` (after connecting), asks for the disk's
    // descriptor; prints the answer and how many descriptors came with it.
    let script = |drop_to: Option<(u32, u32)>| {
        format!(
            "import array,json,os,socket,sys\n\
             s=socket.socket(socket.AF_UNIX)\n\
             s.connect({sock:?})\n\
             d={drop}\n\
             if d:\n    os.setgroups([]); os.setgid(d[1]); os.setuid(d[0])\n\
             try:\n    s.sendall(b'{{\"op\":\"open_disk\",\"disk\":\"d.img\"}}\\n'); msg,anc,_,_=s.recvmsg(4096, socket.CMSG_SPACE(16))\n\
             except OSError as e:\n    msg,anc=('refused: %s' % e).encode(),[]\n\
             n=sum(len(c[2])//4 for c in anc if c[0]==socket.SOL_SOCKET and c[1]==socket.SCM_RIGHTS)\n\
             sys.stdout.write(msg.decode().strip()+' fds=%d' % n)\n",
            sock = socket.to_str().unwrap(),
            drop = match drop_to {
                Some((u, g)) => format!("({u},{g})"),
                None => "None".into(),
            },
        )
    };
    let as_root = |drop_to| {
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(script(drop_to))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &text(&out)
    };
    // Root gets one (the check below sees a descriptor when there is one).
    let root = as_root(None);
    assert!(
        root.contains(r#""ok":true"#) && root.contains("fds=1"),
        "{root}"
    );
    // Root that drops its privileges after connecting gets none.
    let dropped = as_root(Some((user.uid, user.gid)));
    assert!(
        !dropped.contains(r#""ok":true"#) && dropped.contains("fds=0"),
        "a descriptor went to a sender that is not root: {dropped}"
    );
    // Another user, through a socket made wider by mistake, gets none.
    chmod(&socket, 0o666);
    let out = user.python(&script(None));
    let other = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !other.contains(r#""ok":true"#) && other.contains("fds=0"),
        "a descriptor went to another user: {other} ({})",
        text(&out)
    );
    m.unmount();
}
