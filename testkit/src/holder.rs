//! A writer that bypasses the tracker: a process that opened (or mapped) a disk before the
//! mount and writes through that very descriptor on request. Killed on drop.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A process started before the mount that holds a disk: it prints `ready` once the disk is
/// open, then runs each line of its stdin as a write command and answers `ok`. Killed on drop.
pub struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    pub fn spawn(mut cmd: Command) -> Holder {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder {
            child,
            stdin,
            stdout,
        };
        assert_eq!(h.answer(), "ready");
        h
    }

    /// bash with the disk open in descriptor 3 (`<>` read-write, `<` read-only); a line
    /// `SEEK SRC` writes 1 MiB of SRC at SEEK MiB through that very descriptor (dd >&3).
    pub fn descriptor(disk: &Path, redirect: &str) -> Holder {
        let script = format!(
            "exec 3{redirect}\"$1\"; echo ready; while read seek src; do \
             dd if=\"$src\" bs=1M seek=\"$seek\" count=1 conv=notrunc,fsync status=none >&3 || exit 1; \
             echo ok; done"
        );
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).arg("bash").arg(disk);
        Holder::spawn(cmd)
    }

    /// python3 with the disk mapped MAP_SHARED writable and its descriptor closed; a line
    /// `OFFSET BYTE` fills 4 KiB at OFFSET through the mapping and msyncs it.
    pub fn mapping(disk: &Path) -> Holder {
        let script = "import mmap, sys\n\
             f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 0); f.close()\n\
             print('ready', flush=True)\n\
             for line in sys.stdin:\n    \
                 off, b = line.split(); off = int(off)\n    \
                 m[off:off + 4096] = bytes([int(b)]) * 4096; m.flush()\n    \
                 print('ok', flush=True)\n";
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(script).arg(disk);
        Holder::spawn(cmd)
    }

    pub fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    pub fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        assert_eq!(self.answer(), "ok", "the holder's write failed");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
