//! The control socket: a Unix stream socket (0600, root only) answering the line protocol of
//! [`hrl::control`] from a plain thread per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use hrl::control::{Request, Response};

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
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    if !peer_allowed(&conn) {
        tracing::warn!(uid = ?peer_uid(&conn), "refused a control connection from a non-root user");
        let r = Response::error(
            "the control socket answers only root; run hrl-shipper or hrl-tracker as root",
        );
        let mut text = serde_json::to_string(&r).unwrap_or_default();
        text.push('\n');
        let _ = out.write_all(text.as_bytes());
        return;
    }
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::ReadOnly { on }) => {
                let writers = gate.set_read_only(on);
                tracing::warn!(on, writers = writers.len(), "read-only switch");
                Response {
                    ok: true,
                    writers: Some(writers),
                    ..Default::default()
                }
            }
            Ok(req) => handle(tracker, socket, req),
            Err(e) => Response::error(format!(
                "bad request {line:?}: {e}; expected one JSON object per line such as {{\"op\":\"status\"}}"
            )),
        };
        let mut text = serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
            return;
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
        // Answered by `serve`, which holds the core's switch.
        Request::ReadOnly { .. } => Response::error("read_only is answered by the mount"),
    }
}

/// Client side: sends one request to the tracker at `socket` and reads its answer.
pub fn request(socket: &Path, req: &Request) -> anyhow::Result<Response> {
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
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .context("read control response")?;
    serde_json::from_str(&answer).with_context(|| format!("bad control response {answer:?}"))
}
