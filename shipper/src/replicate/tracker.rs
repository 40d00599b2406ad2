//! Client of the tracker's control socket (one JSON object per line each way; the answers
//! of `open_disk` and `open_log` carry a descriptor, SCM_RIGHTS).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hrl::control::{DiskMode, Request, Response, SealedLog};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A connection to the tracker serving one mount directory.
pub struct TrackerClient {
    socket: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

/// The tracker answered, but refused or could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("tracker at {socket} refused {op}: {message}")]
pub struct TrackerRefused {
    pub socket: String,
    pub op: String,
    pub message: String,
}

/// A seal: the instant and the logs it sealed.
#[derive(Debug, Clone)]
pub struct Seal {
    pub seal_id: u64,
    pub time_ns: u64,
    pub disks: Vec<SealedLog>,
}

/// What a replication cycle asks of the tracker: the control socket's operations. The
/// cycle holds a `dyn Tracker`, so a test can run it in-process against a stand-in.
#[async_trait::async_trait]
pub trait Tracker: Send + Sync {
    /// Mount-wide and per-disk state.
    async fn status(&mut self) -> Result<hrl::control::MountStatus>;
    /// Seals the active logs of every disk at one instant.
    async fn seal(&mut self) -> Result<Seal>;
    /// Sealed logs not acked yet.
    async fn pending(&mut self) -> Result<Vec<SealedLog>>;
    /// The logs of `disk` up to `seq` are in a committed point: delete them.
    async fn ack(&mut self, disk: &str, disk_id: Option<&str>, seq: u64) -> Result<()>;
    /// Clears the marks of `disk` made before seal `upto_seal`.
    async fn clear(&mut self, disk: &str, upto_seal: u64) -> Result<()>;
    /// The marked extents of `disk`.
    async fn dirty(&mut self, disk: &str) -> Result<Vec<(u64, u64)>>;
    /// Switches `disk` between log and bitmap tracking.
    async fn set_mode(&mut self, disk: &str, mode: DiskMode) -> Result<()>;
    /// A read-only descriptor of `disk`'s backing image; `None` when the tracker hands out
    /// none (an older tracker, a stand-in, a refusal): read through the mount then.
    async fn open_disk(&mut self, _disk: &str) -> Result<Option<OwnedFd>> {
        Ok(None)
    }
    /// A read-only descriptor of the sealed log `log` (as [`Tracker::open_disk`]).
    async fn open_log(&mut self, _log: &SealedLog) -> Result<Option<OwnedFd>> {
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Tracker for TrackerClient {
    async fn status(&mut self) -> Result<hrl::control::MountStatus> {
        TrackerClient::status(self).await
    }
    async fn seal(&mut self) -> Result<Seal> {
        TrackerClient::seal(self).await
    }
    async fn pending(&mut self) -> Result<Vec<SealedLog>> {
        TrackerClient::pending(self).await
    }
    async fn ack(&mut self, disk: &str, disk_id: Option<&str>, seq: u64) -> Result<()> {
        TrackerClient::ack(self, disk, disk_id, seq).await
    }
    async fn clear(&mut self, disk: &str, upto_seal: u64) -> Result<()> {
        TrackerClient::clear(self, disk, upto_seal).await
    }
    async fn dirty(&mut self, disk: &str) -> Result<Vec<(u64, u64)>> {
        TrackerClient::dirty(self, disk).await
    }
    async fn set_mode(&mut self, disk: &str, mode: DiskMode) -> Result<()> {
        TrackerClient::set_mode(self, disk, mode).await
    }
    async fn open_disk(&mut self, disk: &str) -> Result<Option<OwnedFd>> {
        let req = Request::OpenDisk {
            disk: disk.to_string(),
        };
        TrackerClient::descriptor(self, &req).await
    }
    async fn open_log(&mut self, log: &SealedLog) -> Result<Option<OwnedFd>> {
        let req = Request::OpenLog {
            disk: log.disk.clone(),
            seq: log.seq,
            disk_id: Some(log.disk_id.clone()),
        };
        TrackerClient::descriptor(self, &req).await
    }
}

impl TrackerClient {
    /// Connects to the tracker of `mount_dir` (socket from `hrl::control::socket_path`).
    pub async fn connect(mount_dir: &Path) -> Result<TrackerClient> {
        Self::connect_socket(mount_dir, hrl::control::socket_path(mount_dir)).await
    }

    /// Connects to the tracker of `mount_dir` listening at `socket`.
    pub async fn connect_socket(mount_dir: &Path, socket: PathBuf) -> Result<TrackerClient> {
        let stream = UnixStream::connect(&socket).await.with_context(|| {
            format!(
                "cannot reach the tracker of {} at {}: is `hrl-tracker mount {}` running?",
                mount_dir.display(),
                socket.display(),
                mount_dir.display()
            )
        })?;
        let (r, w) = stream.into_split();
        Ok(TrackerClient {
            socket,
            reader: BufReader::new(r),
            writer: w,
        })
    }

    async fn send(&mut self, req: &Request) -> Result<String> {
        let mut line = serde_json::to_vec(req).context("encode control request")?;
        line.push(b'\n');
        let op = format!("{req:?}");
        self.writer
            .write_all(&line)
            .await
            .with_context(|| format!("send {op} to tracker at {}", self.socket.display()))?;
        Ok(op)
    }

    async fn call(&mut self, req: &Request) -> Result<Response> {
        let op = self.send(req).await?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).await.with_context(|| {
            format!(
                "read answer to {op} from tracker at {}",
                self.socket.display()
            )
        })?;
        if n == 0 {
            bail!(
                "tracker at {} closed the connection during {op}",
                self.socket.display()
            );
        }
        self.answer(&op, &answer)
    }

    /// Parses an answer line; a refusal is a [`TrackerRefused`].
    fn answer(&self, op: &str, answer: &str) -> Result<Response> {
        let op = op.to_string();
        let resp: Response = serde_json::from_str(answer.trim_end()).with_context(|| {
            format!(
                "tracker at {} sent an answer that is not valid: {answer:?}",
                self.socket.display()
            )
        })?;
        if !resp.ok {
            return Err(TrackerRefused {
                socket: self.socket.display().to_string(),
                op,
                message: resp.error.unwrap_or_else(|| "no reason given".into()),
            }
            .into());
        }
        Ok(resp)
    }

    /// Sends `open_disk` or `open_log` and reads the answer with its descriptor. A refusal
    /// (an older tracker answers that it does not know the request) is `None`; a tracker
    /// that went away is an error.
    async fn descriptor(&mut self, req: &Request) -> Result<Option<OwnedFd>> {
        if !self.reader.buffer().is_empty() {
            // Never happens (one answer per request); the descriptor would be lost.
            return Ok(None);
        }
        let op = self.send(req).await?;
        let stream: &UnixStream = self.reader.get_ref().as_ref();
        let (line, fd) = recv_answer(stream).await.with_context(|| {
            format!(
                "read answer to {op} from tracker at {}",
                self.socket.display()
            )
        })?;
        match self.answer(&op, &String::from_utf8_lossy(&line)) {
            Ok(r) if r.fd == Some(true) && fd.is_some() => Ok(fd),
            Ok(_) => Ok(None),
            Err(e) if e.downcast_ref::<TrackerRefused>().is_some() => {
                tracing::debug!("{e:#}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Seals the active logs of every disk at one instant.
    pub async fn seal(&mut self) -> Result<Seal> {
        let r = self.call(&Request::Seal).await?;
        Ok(Seal {
            seal_id: r.seal_id.unwrap_or(0),
            time_ns: r.time_ns.unwrap_or_else(hrl::now_ns),
            disks: r.disks.unwrap_or_default(),
        })
    }

    /// Every sealed log not acked yet.
    pub async fn pending(&mut self) -> Result<Vec<SealedLog>> {
        Ok(self
            .call(&Request::Pending)
            .await?
            .disks
            .unwrap_or_default())
    }

    /// Lets the tracker delete `disk`'s sealed logs up to `seq` (they are in a committed point).
    pub async fn ack(&mut self, disk: &str, disk_id: Option<&str>, seq: u64) -> Result<()> {
        self.call(&Request::Ack {
            disk: disk.to_string(),
            seq,
            disk_id: disk_id.map(str::to_string),
        })
        .await?;
        Ok(())
    }

    /// Lets the tracker clear `disk`'s dirty marks made before seal `upto_seal` (a committed
    /// point covers them).
    pub async fn clear(&mut self, disk: &str, upto_seal: u64) -> Result<()> {
        self.call(&Request::Clear {
            disk: disk.to_string(),
            upto_seal,
        })
        .await?;
        Ok(())
    }

    /// Extents marked in `disk`'s dirty bitmap (byte ranges).
    pub async fn dirty(&mut self, disk: &str) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .call(&Request::Dirty {
                disk: disk.to_string(),
            })
            .await?
            .extents
            .unwrap_or_default())
    }

    pub async fn set_mode(&mut self, disk: &str, mode: DiskMode) -> Result<()> {
        self.call(&Request::Mode {
            disk: disk.to_string(),
            mode,
        })
        .await?;
        Ok(())
    }

    /// Switches the mount read-only (every change through it gets EROFS) or back; returns
    /// the backing paths of the files open for writing.
    pub async fn read_only(&mut self, on: bool) -> Result<Vec<String>> {
        Ok(self
            .call(&Request::ReadOnly { on })
            .await?
            .writers
            .unwrap_or_default())
    }

    pub async fn status(&mut self) -> Result<hrl::control::MountStatus> {
        self.call(&Request::Status)
            .await?
            .status
            .context("tracker answered status without a status")
    }
}

/// Reads one answer line from `stream` with the descriptor that came with it (SCM_RIGHTS;
/// any more are closed).
async fn recv_answer(stream: &UnixStream) -> Result<(Vec<u8>, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::io::IoSliceMut;
    use std::mem::MaybeUninit;
    let mut line = Vec::new();
    let mut fd: Option<OwnedFd> = None;
    loop {
        stream
            .readable()
            .await
            .context("wait for the tracker's answer")?;
        let mut chunk = [0u8; 4096];
        let got = stream.try_io(tokio::io::Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
            let mut anc = RecvAncillaryBuffer::new(&mut space);
            let r = rustix::net::recvmsg(
                stream,
                &mut [IoSliceMut::new(&mut chunk)],
                &mut anc,
                RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
            )?;
            for m in anc.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = m {
                    for f in fds {
                        fd.get_or_insert(f);
                    }
                }
            }
            Ok(r.bytes)
        });
        let n = match got {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receive the tracker's answer"),
        };
        if n == 0 {
            bail!("the tracker closed the connection");
        }
        line.extend_from_slice(&chunk[..n]);
        if line.ends_with(b"\n") {
            line.pop();
            return Ok((line, fd));
        }
    }
}
