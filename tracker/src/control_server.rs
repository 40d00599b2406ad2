//! The control socket: a Unix stream socket (0600, root only) answering the line protocol of
//! [`hrl::control`] from a plain thread per connection. `open_disk` and `open_log` answers
//! carry a read-only descriptor (SCM_RIGHTS, see [`crate::descriptors`]); each request's
//! sender credentials (SCM_CREDENTIALS) are read with it, so descriptors go only to a
//! request root sent.

use std::io::{self, BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hrl::control::{Request, Response};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::core::gate::Gate;
use crate::seal::seal_all;
use crate::tracking::Tracker;

/// A bound control socket; removes its file when dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` (replacing a stale socket) and serves it on a background thread;
    /// `gate` is the filesystem core's read-only switch.
    pub fn start(
        path: &Path,
        tracker: Arc<Tracker>,
        gate: Arc<dyn Gate>,
    ) -> anyhow::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("create the control socket directory {}", dir.display())
            })?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "control socket {} is in use: another tracker serves this directory",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale control socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("bind control socket {}", path.display()))?;
        // Every request then carries its sender's credentials (accepted sockets inherit it,
        // and bytes sent before the accept get them too).
        rustix::net::sockopt::set_socket_passcred(&listener, true)
            .with_context(|| format!("set SO_PASSCRED on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restrict control socket {}", path.display()))?;
        let socket = path.to_path_buf();
        std::thread::Builder::new()
            .name("hrl-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of descriptors (EMFILE): wait for some to close, do not spin.
                            tracing::warn!(error = %e, "cannot accept a control connection");
                            std::thread::sleep(std::time::Duration::from_millis(100));
                            continue;
                        }
                    };
                    let t = tracker.clone();
                    let s = socket.clone();
                    let g = gate.clone();
                    let _ = std::thread::Builder::new()
                        .name("hrl-control-conn".into())
                        .spawn(move || serve(conn, &t, &*g, &s));
                }
            })
            .context("spawn the control thread")?;
        Ok(ControlServer {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The uid of the process at the other end of `conn`.
fn peer_uid(conn: &UnixStream) -> Option<u32> {
    let cred = rustix::net::sockopt::socket_peercred(conn).ok()?;
    Some(cred.uid.as_raw())
}

/// Only root may use the socket (an ack deletes unshipped logs, a mode switch stops logging):
/// besides the socket's 0600 mode, every connection's peer must be root or the tracker's own
/// user, so a socket made wider by mistake still refuses others (docs/SECURITY.md).
fn peer_allowed(conn: &UnixStream) -> bool {
    let me = rustix::process::geteuid().as_raw();
    matches!(peer_uid(conn), Some(uid) if uid == 0 || uid == me)
}

fn serve(conn: UnixStream, tracker: &Tracker, gate: &dyn Gate, socket: &Path) {
    let Ok(out) = conn.try_clone() else {
        return;
    };
    if !peer_allowed(&conn) {
        tracing::warn!(uid = ?peer_uid(&conn), "refused a control connection from a non-root user");
        let r = Response::error(
            "the control socket answers only root; run hrl-shipper or hrl-tracker as root",
        );
        let mut text = serde_json::to_string(&r).unwrap_or_default();
        text.push('\n');
        let _ = (&out).write_all(text.as_bytes());
        return;
    }
    let _ = rustix::net::sockopt::set_socket_passcred(&conn, true);
    let mut lines = Lines {
        conn: &conn,
        buf: Vec::new(),
        root: true,
    };
    while let Some(Ok((line, sent_by_root))) = lines.next_line() {
        let Ok(line) = String::from_utf8(line) else {
            return;
        };
        if line.trim().is_empty() {
            continue;
        }
        let (resp, fd) = match serde_json::from_str::<Request>(&line) {
            Ok(Request::ReadOnly { on }) => {
                let writers = gate.set_read_only(on);
                tracing::warn!(on, writers = writers.len(), "read-only switch");
                let r = Response {
                    ok: true,
                    writers: Some(writers),
                    ..Default::default()
                };
                (r, None)
            }
            Ok(Request::OpenDisk { disk }) => descriptor_answer(&conn, sent_by_root, || {
                crate::descriptors::open_disk(tracker, &disk)
            }),
            Ok(Request::OpenLog { disk, seq, disk_id }) => {
                descriptor_answer(&conn, sent_by_root, || {
                    crate::descriptors::open_log(tracker, &disk, seq, disk_id.as_deref())
                })
            }
            Ok(req) => (handle(tracker, socket, req), None),
            Err(e) => (Response::error(format!(
                "bad request {line:?}: {e}; expected one JSON object per line such as {{\"op\":\"status\"}}"
            )), None),
        };
        let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        text.push('\n');
        if send(&out, text.as_bytes(), fd.as_ref()).is_err() {
            return;
        }
    }
}

/// Longest request line read (requests are a few dozen bytes).
const MAX_LINE: usize = 64 * 1024;

/// The request lines of one connection, each with whether every byte of it came from a
/// root sender: the kernel attaches the sender's credentials at the time it sent them
/// (SCM_CREDENTIALS, with SO_PASSCRED on), and never merges bytes of different credentials
/// into one read.
struct Lines<'a> {
    conn: &'a UnixStream,
    buf: Vec<u8>,
    /// Every byte now in `buf` was sent by uid 0.
    root: bool,
}

impl Lines<'_> {
    /// The next line without its newline, and whether root sent all of it.
    fn next_line(&mut self) -> Option<io::Result<(Vec<u8>, bool)>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                let root = self.root;
                if self.buf.is_empty() {
                    self.root = true;
                }
                return Some(Ok((line, root)));
            }
            if self.buf.len() > MAX_LINE {
                return Some(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "control request line too long",
                )));
            }
            let mut chunk = [0u8; 4096];
            let mut space =
                [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(4))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let r = match rustix::net::recvmsg(
                self.conn,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut anc,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(r) => r,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Some(Err(e.into())),
            };
            if r.bytes == 0 {
                // The end: a last line without its newline still counts.
                if self.buf.is_empty() {
                    return None;
                }
                let root = self.root;
                self.root = true;
                return Some(Ok((std::mem::take(&mut self.buf), root)));
            }
            let mut uid = None;
            for m in anc.drain() {
                // Descriptors a client sends are closed unread.
                if let RecvAncillaryMessage::ScmCredentials(c) = m {
                    uid = Some(c.uid.as_raw());
                }
            }
            self.root &= uid == Some(0);
            self.buf.extend_from_slice(&chunk[..r.bytes]);
        }
    }
}

/// Answers `open_disk` / `open_log`. Descriptors go only to root: the connection's peer
/// (SO_PEERCRED, asked again for this request) and the sender of this very request (its
/// SCM_CREDENTIALS) must both be uid 0, so a root process that connected and then dropped
/// its privileges, or passed the socket on, gets none; the tracker's own non-root user
/// neither (it may use the other requests).
fn descriptor_answer(
    conn: &UnixStream,
    sent_by_root: bool,
    open: impl FnOnce() -> Result<OwnedFd, crate::descriptors::DescriptorError>,
) -> (Response, Option<OwnedFd>) {
    let peer = peer_uid(conn);
    if !sent_by_root || peer != Some(0) {
        tracing::warn!(uid = ?peer, sent_by_root, "refused a descriptor to a non-root sender");
        let r = Response::error(
            "descriptors of the backing files are handed only to root; read through the mount",
        );
        return (r, None);
    }
    match open() {
        Ok(fd) => {
            crate::metrics::descriptor_passed();
            let r = Response {
                ok: true,
                fd: Some(true),
                ..Default::default()
            };
            (r, Some(fd))
        }
        Err(e) => (Response::error(e.to_string()), None),
    }
}

/// Writes one answer line, with `fd` attached to its first byte (SCM_RIGHTS).
fn send(out: &UnixStream, text: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut w = out;
    let Some(fd) = fd else {
        return w.write_all(text);
    };
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    let n = loop {
        match rustix::net::sendmsg(out, &[IoSlice::new(text)], &mut anc, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    w.write_all(&text[n..])
}

/// Reads one answer line, and the descriptor that came with it (the first; any other is
/// closed).
pub fn recv_answer(conn: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd = None;
    loop {
        let mut chunk = [0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let r = match rustix::net::recvmsg(
            conn,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if r.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tracker closed the connection",
            ));
        }
        line.extend_from_slice(&chunk[..r.bytes]);
        if line.ends_with(b"\n") {
            line.pop();
            return Ok((line, fd));
        }
    }
}

/// Answers one request.
pub fn handle(tracker: &Tracker, socket: &Path, req: Request) -> Response {
    match req {
        Request::Seal => {
            let s = seal_all(tracker);
            if let Some(e) = s.errors.first() {
                let mut r = Response::error(e.to_string());
                r.seal_id = Some(s.seal_id);
                r.disks = Some(s.disks);
                return r;
            }
            Response {
                ok: true,
                seal_id: Some(s.seal_id),
                time_ns: Some(s.time_ns),
                hold_us: Some(s.hold_us),
                disks: Some(s.disks),
                ..Default::default()
            }
        }
        Request::Pending => Response {
            ok: true,
            disks: Some(tracker.pending()),
            ..Default::default()
        },
        Request::Ack { disk, seq, disk_id } => match tracker.ack(&disk, disk_id.as_deref(), seq) {
            Ok(_) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        },
        Request::Status => Response {
            ok: true,
            status: Some(tracker.status(socket)),
            counters: Some(crate::metrics::snapshot()),
            ..Default::default()
        },
        Request::Mode { disk, mode } => match tracker.set_mode(&disk, mode) {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        },
        Request::Dirty { disk } => match tracker.dirty(&disk) {
            Ok(extents) => Response {
                ok: true,
                extents: Some(extents),
                ..Default::default()
            },
            Err(e) => Response::error(e.to_string()),
        },
        Request::Clear { disk, upto_seal } => match tracker.clear(&disk, upto_seal) {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e.to_string()),
        },
        // Answered by `serve`, which holds the core's switch and the connection.
        Request::ReadOnly { .. } => Response::error("read_only is answered by the mount"),
        Request::OpenDisk { .. } | Request::OpenLog { .. } => {
            Response::error("open_disk and open_log are answered on the control socket")
        }
    }
}

/// Client side: connects to the tracker at `socket` and sends `req` as one line.
fn send_request(socket: &Path, req: &Request) -> anyhow::Result<UnixStream> {
    let mut conn = UnixStream::connect(socket).with_context(|| {
        format!(
            "connect to the tracker's control socket {} (is `hrl-tracker mount` running for this directory?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    conn.write_all(line.as_bytes())
        .context("send control request")?;
    Ok(conn)
}

/// Client side: sends one request to the tracker at `socket` and reads its answer.
pub fn request(socket: &Path, req: &Request) -> anyhow::Result<Response> {
    let conn = send_request(socket, req)?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .context("read control response")?;
    serde_json::from_str(&answer).with_context(|| format!("bad control response {answer:?}"))
}

/// Client side: sends one request (`open_disk`, `open_log`) to the tracker at `socket` and
/// reads its answer with the descriptor that came with it.
pub fn request_descriptor(
    socket: &Path,
    req: &Request,
) -> anyhow::Result<(Response, Option<OwnedFd>)> {
    let conn = send_request(socket, req)?;
    let (answer, fd) = recv_answer(&conn).context("read control response")?;
    let resp = serde_json::from_slice(&answer).with_context(|| {
        format!(
            "bad control response {:?}",
            String::from_utf8_lossy(&answer)
        )
    })?;
    Ok((resp, fd))
}
