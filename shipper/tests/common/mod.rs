//! Test support: a stand-in tracker speaking the real control protocol over a real Unix
//! socket (for cycle tests that do not need FUSE), object-store servers (moto, Azurite)
//! started on 127.0.0.1 and killed on Drop, and helpers to run the shipper binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hrl::control::{DiskMode, DiskStatus, MountStatus, Request, Response, SealedLog};
use hrl::log::{LogHeader, LogWriter};

pub mod proxy;

pub fn shipper_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hrl-shipper"))
}

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
    /// Refuse acks (to test that logs stay when a point is not committed).
    fail_seal: bool,
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
            fail_seal: false,
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
    }
}

/// A child process killed on Drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `sync` (a command with `HRL_SHIPPER_STOP_AT=at` set) until it reaches the stop point
/// `at` — its `marker` file appears — and kills it there with SIGKILL. Returns its exit status.
pub fn kill9_at_stop_point(mut sync: Command, marker: &Path, at: &str) -> std::process::ExitStatus {
    let _ = std::fs::remove_file(marker);
    let child = sync
        .env("HRL_SHIPPER_STOP_AT", at)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "sync exited before reaching {at}"
        );
        assert!(Instant::now() < deadline, "sync did not reach {at}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    child.0.wait().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited before listening on port {port}: {st}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 60 s");
}

fn require_binary(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed, and this test needs a real server: install it with `{install}` (scripts/install-deps does)"))
}

/// A store server for the tests, and the environment the shipper needs to reach it.
pub struct Server {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub port: u16,
    child: Option<KillOnDrop>,
    kind: ServerKind,
    data: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Local,
    Moto,
    Azurite,
}

pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Server {
    pub fn start(kind: ServerKind, bucket: &str) -> Server {
        let data = tempfile::tempdir().unwrap();
        let mut s = Server {
            url: String::new(),
            env: vec![],
            port: 0,
            child: None,
            kind,
            data,
        };
        match kind {
            ServerKind::Local => {
                s.url = format!("file://{}", s.data.path().join("store").display());
            }
            ServerKind::Moto | ServerKind::Azurite => {
                s.port = free_port();
                s.spawn();
                s.create_bucket(bucket);
                match kind {
                    ServerKind::Moto => {
                        s.url = format!("s3://{bucket}/hrl");
                        s.env = vec![
                            (
                                "AWS_ENDPOINT".into(),
                                format!("http://127.0.0.1:{}", s.port),
                            ),
                            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
                            ("AWS_ALLOW_HTTP".into(), "true".into()),
                        ];
                    }
                    _ => {
                        s.url = format!("az://{bucket}/hrl");
                        s.env = vec![
                            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
                            (
                                "AZURITE_BLOB_STORAGE_URL".into(),
                                format!("http://127.0.0.1:{}", s.port),
                            ),
                            (
                                "AZURE_STORAGE_ACCOUNT_NAME".into(),
                                "devstoreaccount1".into(),
                            ),
                            ("AZURE_STORAGE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
                        ];
                    }
                }
            }
        }
        s
    }

    /// (Re)starts the server process on the same port and data directory.
    pub fn spawn(&mut self) {
        let child = match self.kind {
            ServerKind::Local => return,
            ServerKind::Moto => {
                let bin = require_binary("moto_server", "pip install 'moto[server]'");
                Command::new(bin)
                    .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
            ServerKind::Azurite => {
                let bin = require_binary("azurite-blob", "npm install -g azurite");
                Command::new(bin)
                    .args([
                        "--blobHost",
                        "127.0.0.1",
                        "--blobPort",
                        &self.port.to_string(),
                        "--location",
                    ])
                    .arg(self.data.path())
                    .args(["--skipApiVersionCheck", "--silent", "--disableTelemetry"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            }
        };
        let mut k = KillOnDrop(child);
        wait_port(self.port, &format!("{:?}", self.kind), &mut k.0);
        self.child = Some(k);
    }

    /// Stops the server (the store "goes away"); moto loses its data on restart, Azurite keeps it.
    /// Azurite gets SIGTERM first so that it saves its metadata (a SIGKILL loses it).
    pub fn stop(&mut self) {
        if let Some(k) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &k.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = k.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.child = None;
    }

    fn create_bucket(&self, bucket: &str) {
        let script = match self.kind {
            ServerKind::Moto => format!(
                "import urllib.request\nr=urllib.request.Request('http://127.0.0.1:{}/{bucket}',method='PUT')\nurllib.request.urlopen(r).read()\n",
                self.port
            ),
            ServerKind::Azurite => format!(
                r#"import urllib.request,hmac,hashlib,base64,email.utils
acct='devstoreaccount1';key=base64.b64decode('{AZURITE_KEY}')
date=email.utils.formatdate(usegmt=True)
hdrs={{'x-ms-date':date,'x-ms-version':'2021-08-06'}}
canon_h=''.join(f'{{k}}:{{v}}\n' for k,v in sorted(hdrs.items()))
canon_r=f'/{{acct}}/{{acct}}/{bucket}\nrestype:container'
sts='PUT\n'+'\n'*11+canon_h+canon_r
sig=base64.b64encode(hmac.new(key,sts.encode(),hashlib.sha256).digest()).decode()
r=urllib.request.Request('http://127.0.0.1:{port}/'+acct+'/{bucket}?restype=container',method='PUT',headers=dict(hdrs,Authorization=f'SharedKey {{acct}}:{{sig}}'))
urllib.request.urlopen(r).read()
"#,
                port = self.port
            ),
            ServerKind::Local => return,
        };
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("python3 is needed to create the test bucket");
        assert!(
            out.status.success(),
            "creating bucket {bucket} on {:?} failed: {}",
            self.kind,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs the shipper with the test's environment and returns its output.
pub fn shipper(
    args: &[&str],
    env: &[(String, String)],
    run_dir: &Path,
    state_dir: &Path,
) -> Output {
    Command::new(shipper_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("HRL_RUN_DIR", run_dir)
        .env("HRL_STATE_DIR", state_dir)
        .env("HRL_LOG", "info")
        .output()
        .unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "shipper failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_same_file(a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    assert_eq!(
        x.len(),
        y.len(),
        "{} and {} differ in size",
        a.display(),
        b.display()
    );
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{} and {} differ at byte {i}", a.display(), b.display());
    }
}

/// Allocated bytes of a file (to check sparseness).
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}
