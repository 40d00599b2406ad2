//! A small HTTP proxy in front of a real store server (moto, Azurite) that loses what a
//! network loses: the reply to a request the server did handle, or the request itself.
//! With no rule it only records what passes ([`FaultyProxy::targets`]: which objects a
//! command read). One request per connection (both sides are told `Connection: close`), which keeps it
//! simple and is what a lost reply looks like to the client: the connection ends early.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What happens to requests matching a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwarded and handled by the server; its reply is dropped (the connection closes).
    LoseReply,
    /// Not forwarded; the connection closes.
    Refuse,
}

/// Requests with this method whose target (path and query) contains `contains` get
/// `fault`, `times` times (then they pass).
#[derive(Clone, Debug)]
pub struct Rule {
    pub method: &'static str,
    pub contains: String,
    pub fault: Fault,
    pub times: usize,
}

/// (method, target, fault applied) of every request seen.
pub type Seen = Arc<Mutex<Vec<(String, String, Option<Fault>)>>>;

pub struct FaultyProxy {
    pub port: u16,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub seen: Seen,
}

impl FaultyProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (a port of 127.0.0.1).
    pub fn start(upstream: u16) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let seen: Seen = Arc::default();
        let (r, s) = (Arc::clone(&rules), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, s) = (Arc::clone(&r), Arc::clone(&s));
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &r, &s);
                });
            }
        });
        FaultyProxy { port, rules, seen }
    }

    pub fn add(&self, rule: Rule) {
        self.rules.lock().unwrap().push(rule);
    }

    /// The environment that reaches `server` (moto or Azurite, the proxy's upstream)
    /// through this proxy: the shipper's every request is then seen here.
    pub fn env_for(&self, server: &crate::store::Server) -> Vec<(String, String)> {
        let through = format!("http://127.0.0.1:{}", self.port);
        let mut swapped = false;
        let env = server
            .env
            .iter()
            .map(|(k, v)| match k.as_str() {
                "AWS_ENDPOINT" | "AZURITE_BLOB_STORAGE_URL" => {
                    swapped = true;
                    (k.clone(), through.clone())
                }
                _ => (k.clone(), v.clone()),
            })
            .collect();
        assert!(swapped, "env_for: a moto or Azurite server only");
        env
    }

    /// The targets (path and query) of the requests seen with `method`, in order.
    pub fn targets(&self, method: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.0 == method)
            .map(|x| x.1.clone())
            .collect()
    }

    /// Forgets the requests seen so far.
    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// How many requests got a fault so far.
    pub fn faults(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|x| x.2.is_some())
            .count()
    }
}

fn serve(
    client: TcpStream,
    upstream: u16,
    rules: &Mutex<Vec<Rule>>,
    seen: &Mutex<Vec<(String, String, Option<Fault>)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let (head, body) = read_message(&mut reader)?;
    let first = head.lines().next().unwrap_or_default().to_string();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let fault = {
        let mut rs = rules.lock().unwrap();
        rs.iter_mut()
            .find(|r| r.times > 0 && r.method == method && target.contains(&r.contains))
            .map(|r| {
                r.times -= 1;
                r.fault
            })
    };
    seen.lock().unwrap().push((method, target, fault));
    if fault == Some(Fault::Refuse) {
        return Ok(()); // dropping the connection unanswered
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(with_connection_close(&head).as_bytes())?;
    up.write_all(&body)?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply)?;
    if fault == Some(Fault::LoseReply) {
        return Ok(()); // the server handled it; the client never hears
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(reply.len(), |p| p + 4);
    let reply_head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let mut client = client;
    client.write_all(with_connection_close(&reply_head).as_bytes())?;
    client.write_all(&reply[split..])?;
    client.flush()
}

/// Reads one HTTP message: its head (through the blank line) and its body (Content-Length
/// or chunked, kept as sent).
fn read_message(r: &mut BufReader<TcpStream>) -> std::io::Result<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            body.extend_from_slice(size.as_bytes());
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            if n == 0 {
                break;
            }
        }
    }
    Ok((head, body))
}

/// The message head with `Connection: close` instead of any Connection header.
fn with_connection_close(head: &str) -> String {
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}
