//! A stand-in tracker speaking the real control protocol over a real Unix socket, for
//! shipper tests that need no FUSE: writes go to the image and a real .hrl log, as the real
//! tracker's do, and the test can break what the real one never would (lose a sealed log,
//! switch a disk to bitmap mode by hand).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hrl::control::{DiskMode, DiskStatus, MountStatus, Request, Response, SealedLog};
use hrl::log::{LogHeader, LogWriter};

/// One disk of the stand-in tracker: the image, its active log, its sealed logs.
struct FakeDisk {
    name: String,
    disk_id: [u8; 16],
    generation: u64,
    seq: u64,
    writer: Option<LogWriter>,
    prev: hrl::Digest,
    sealed: Vec<SealedLog>,
    mode: DiskMode,
    /// Dirty marks as (seal id when made, offset, len), like the tracker's bitmap.
    marks: Vec<(u64, u64, u64)>,
}

struct FakeState {
    dir: PathBuf,
    disks: BTreeMap<String, FakeDisk>,
    seal_id: u64,
}

/// A tracker stand-in: writes go to the image and the active log, as the real tracker does.
pub struct FakeTracker {
    state: Arc<Mutex<FakeState>>,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    socket: PathBuf,
}

impl FakeTracker {
    /// Serves `dir` on the control socket under `run_dir`.
    pub fn start(dir: &Path, run_dir: &Path) -> FakeTracker {
        std::fs::create_dir_all(run_dir).unwrap();
        let socket = hrl::control::socket_path_in(run_dir, dir);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            dir: dir.to_path_buf(),
            disks: BTreeMap::new(),
            seal_id: 0,
        }));
        let st = Arc::clone(&state);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let st = Arc::clone(&st);
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        let resp = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => handle(&st, req),
                            Err(e) => Response::error(format!("bad request: {e}")),
                        };
                        let mut out = serde_json::to_vec(&resp).unwrap();
                        out.push(b'\n');
                        if w.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeTracker {
            state,
            dir: dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
            socket,
        }
    }

    /// Adds a disk (creating its image of `size` bytes) and starts its first log.
    pub fn add_disk(&self, name: &str, size: u64) {
        let mut s = self.state.lock().unwrap();
        let path = s.dir.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        f.set_len(size).unwrap();
        let mut id = [0u8; 16];
        id.copy_from_slice(&blake3::hash(name.as_bytes()).as_bytes()[..16]);
        let header = LogHeader::new(id, 1, 1, size, [0; 32]);
        let writer = LogWriter::create(&hrl::naming::active_log_path(&path), &header).unwrap();
        s.disks.insert(
            name.to_string(),
            FakeDisk {
                name: name.into(),
                disk_id: id,
                generation: 1,
                seq: 1,
                writer: Some(writer),
                prev: [0; 32],
                sealed: vec![],
                mode: DiskMode::Log,
                marks: vec![],
            },
        );
    }

    /// Writes `data` at `offset` into the image and logs it.
    pub fn write(&self, name: &str, offset: u64, data: &[u8]) {
        let mut s = self.state.lock().unwrap();
        let path = s.dir.join(name);
        let seal_id = s.seal_id;
        let d = s.disks.get_mut(name).unwrap();
        d.marks.push((seal_id, offset, data.len() as u64));
        if d.mode == DiskMode::Log {
            d.writer
                .as_mut()
                .unwrap()
                .append_write(offset, data)
                .unwrap();
        }
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(data, offset).unwrap();
    }

    /// Removes a sealed log file behind the shipper's back (a chain break).
    pub fn lose_sealed_log(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        let dir = s.dir.clone();
        let d = s.disks.get_mut(name).unwrap();
        let l = d.sealed.remove(0);
        std::fs::remove_file(dir.join(&l.log)).unwrap();
    }

    pub fn pending_count(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .disks
            .values()
            .map(|d| d.sealed.len())
            .sum()
    }

    /// Switches a disk between logging and bitmap-only tracking (as the 50% rule would).
    pub fn set_mode(&self, name: &str, mode: DiskMode) {
        let r = handle(
            &self.state,
            Request::Mode {
                disk: name.into(),
                mode,
            },
        );
        assert!(r.ok);
    }

    /// Seals now (as the shipper would), for tests that need a log sealed outside a cycle.
    pub fn seal_now(&self) {
        handle(&self.state, Request::Seal);
    }
}

impl Drop for FakeTracker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn sealed_entry(
    d: &FakeDisk,
    seq: u64,
    bytes: u64,
    hash: hrl::Digest,
    prev: hrl::Digest,
    records: u64,
    size: u64,
) -> SealedLog {
    SealedLog {
        disk: d.name.clone(),
        disk_id: hrl::to_hex(&d.disk_id),
        generation: d.generation,
        seq,
        log: hrl::naming::sealed_log_path(Path::new(&d.name), seq, &hrl::to_hex(&d.disk_id))
            .display()
            .to_string(),
        bytes,
        hash: hrl::to_hex(&hash),
        prev_hash: hrl::to_hex(&prev),
        records,
        disk_size: size,
        mode: d.mode,
        changed_outside: false,
    }
}

fn handle(st: &Mutex<FakeState>, req: Request) -> Response {
    let mut s = st.lock().unwrap();
    let dir = s.dir.clone();
    match req {
        Request::Seal => {
            s.seal_id += 1;
            let mut out = Vec::new();
            for d in s.disks.values_mut() {
                let path = dir.join(&d.name);
                let size = std::fs::metadata(&path).unwrap().len();
                let w = d.writer.take().unwrap();
                let records = w.record_count();
                let info = w.seal().unwrap();
                let sealed_path =
                    hrl::naming::sealed_log_path(&path, d.seq, &hrl::to_hex(&d.disk_id));
                std::fs::rename(hrl::naming::active_log_path(&path), &sealed_path).unwrap();
                let bytes = std::fs::metadata(&sealed_path).unwrap().len();
                let e = sealed_entry(d, d.seq, bytes, info.hash, d.prev, records, size);
                d.sealed.push(e.clone());
                out.push(e);
                d.prev = info.hash;
                d.seq += 1;
                let header = LogHeader::new(d.disk_id, d.generation, d.seq, size, d.prev);
                d.writer =
                    Some(LogWriter::create(&hrl::naming::active_log_path(&path), &header).unwrap());
            }
            Response {
                ok: true,
                seal_id: Some(s.seal_id),
                time_ns: Some(hrl::now_ns()),
                disks: Some(out),
                ..Default::default()
            }
        }
        Request::Pending => Response {
            ok: true,
            disks: Some(s.disks.values().flat_map(|d| d.sealed.clone()).collect()),
            ..Default::default()
        },
        Request::Ack { disk, seq, .. } => match s.disks.get_mut(&disk) {
            Some(d) => {
                let (gone, keep): (Vec<_>, Vec<_>) = d.sealed.drain(..).partition(|l| l.seq <= seq);
                for l in gone {
                    let _ = std::fs::remove_file(dir.join(&l.log));
                }
                d.sealed = keep;
                Response::ok()
            }
            None => Response::error(format!("no disk {disk}")),
        },
        Request::Mode { disk, mode } => match s.disks.get_mut(&disk) {
            Some(d) => {
                d.mode = mode;
                Response::ok()
            }
            None => Response::error(format!("no disk {disk}")),
        },
        Request::Status => {
            let disks = s
                .disks
                .values()
                .map(|d| DiskStatus {
                    disk: d.name.clone(),
                    mode: d.mode,
                    active_log_bytes: d.writer.as_ref().map_or(0, |w| w.len()),
                    active_seq: d.seq,
                    pending_logs: d.sealed.len() as u64,
                    pending_sealed_bytes: d.sealed.iter().map(|l| l.bytes).sum(),
                    disk_size: std::fs::metadata(dir.join(&d.name))
                        .map(|m| m.len())
                        .unwrap_or(0),
                    dirty_extents: 0,
                    unclean_extents: vec![],
                    torn_log_tail_at: None,
                    disk_id: hrl::to_hex(&d.disk_id),
                    warnings: vec![],
                    changed_outside: None,
                })
                .collect();
            Response {
                ok: true,
                status: Some(MountStatus {
                    mount: dir.display().to_string(),
                    socket: String::new(),
                    pid: std::process::id(),
                    disks,
                    untracked: vec![],
                }),
                ..Default::default()
            }
        }
        Request::Dirty { disk } => match s.disks.get(&disk) {
            Some(d) => Response {
                ok: true,
                extents: Some(d.marks.iter().map(|m| (m.1, m.2)).collect()),
                ..Default::default()
            },
            None => Response::error(format!("no disk {disk}")),
        },
        // Marks made before seal `upto_seal` are covered by the point.
        Request::Clear { disk, upto_seal } => match s.disks.get_mut(&disk) {
            Some(d) => {
                d.marks.retain(|m| m.0 >= upto_seal);
                Response::ok()
            }
            None => Response::error(format!("no disk {disk}")),
        },
        Request::ReadOnly { .. } => {
            Response::error("the stand-in tracker has no read-only switch; use a real mount")
        }
        // Like an older tracker: the shipper reads through the directory.
        Request::OpenDisk { .. } | Request::OpenLog { .. } => {
            Response::error("the stand-in tracker hands out no descriptors")
        }
    }
}
