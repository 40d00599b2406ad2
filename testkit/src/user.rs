//! A throwaway non-root user for the security tests: created with `useradd` (own group),
//! removed with `userdel` on drop, even when the test fails. Commands run as it through
//! `setpriv` (real and effective ids, its groups).

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg(name).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl TestUser {
    /// Creates a new user with its own group (retrying while another test holds the
    /// /etc/passwd lock).
    pub fn create() -> TestUser {
        let name = format!(
            "hrlt{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        for attempt in 0.. {
            let out = Command::new("useradd")
                .args(["-M", "-U", "-s", "/usr/sbin/nologin", &name])
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                attempt < 50,
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        TestUser {
            uid: id_of("-u", &name),
            gid: id_of("-g", &name),
            name,
        }
    }

    /// `program args…` as this user.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        c
    }

    /// Runs a Python snippet as this user (system python, readable by everyone).
    pub fn python(&self, script: &str) -> Output {
        self.command("/usr/bin/python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        for _ in 0..50 {
            let st = Command::new("userdel").arg(&self.name).output();
            match st {
                Ok(o) if o.status.success() || o.status.code() == Some(6) => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}
