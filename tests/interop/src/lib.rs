//! Test support for the interop suite: a handle on the oracle peer (`oracle/peer.mjs`), a
//! Node.js process running Baileys 7.0.0-rc14 and libsignal-node 6.0.0 from npm.
//!
//! The peer is installed by `scripts/install-oracle.sh` (run here on first use) and spoken
//! to in JSON lines. A missing `node` is a test failure, never a skip: the suite exists to
//! prove interoperability, and a silent pass would prove nothing.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Once;

use serde_json::Value;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the idempotent oracle install once per test process.
pub fn install_oracle() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/install-oracle.sh"))
            .status()
            .expect("cannot run scripts/install-oracle.sh");
        assert!(status.success(), "scripts/install-oracle.sh failed");
    });
}

/// A running oracle peer.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `node oracle/peer.mjs`.
    pub fn start() -> Peer {
        Peer::start_script("peer.mjs")
    }

    /// Starts `node oracle/<script>`, a JSON-lines peer (one request per line in, one
    /// reply per line out).
    pub fn start_script(script: &str) -> Peer {
        install_oracle();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle");
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "cannot start node: the interop suite needs Node.js (apt-get install nodejs npm)",
            );
        let stdin = child.stdin.take().expect("peer stdin");
        let stdout = BufReader::new(child.stdout.take().expect("peer stdout"));
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends one request line and returns the raw reply, whatever its shape.
    pub fn request(&mut self, request: &Value) -> Value {
        let mut line = serde_json::to_string(request).expect("request serializes");
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .expect("write to oracle peer");
        self.stdin.flush().expect("flush oracle peer");
        let mut reply = String::new();
        let n = self
            .stdout
            .read_line(&mut reply)
            .expect("read from oracle peer");
        assert!(n > 0, "oracle peer exited (request was {})", request["op"]);
        serde_json::from_str(&reply).expect("oracle reply is JSON")
    }

    /// Sends one request and returns the reply, panicking on an error reply.
    pub fn call(&mut self, request: Value) -> Value {
        let reply = self.try_call(request.clone());
        match reply {
            Ok(v) => v,
            Err(e) => panic!("oracle refused {}: {e}", request["op"]),
        }
    }

    /// Sends one request to `peer.mjs`; `Err` carries the peer's error text.
    pub fn try_call(&mut self, request: Value) -> Result<Value, String> {
        let v = self.request(&request);
        if v["ok"] == Value::Bool(true) {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hex-decodes a JSON string value.
pub fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

/// The first place two JSON trees differ, as `path: left != right`, or `None` when equal.
/// Keeps assertion messages short on large trees.
pub fn first_diff(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, path: &mut String) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let xk: Vec<_> = x.keys().collect();
                let yk: Vec<_> = y.keys().collect();
                if xk != yk {
                    return Some(format!("{path}: keys {xk:?} != {yk:?}"));
                }
                for (k, v) in x {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if let Some(d) = walk(v, &y[k], path) {
                        return Some(d);
                    }
                    path.truncate(len);
                }
                None
            }
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return Some(format!("{path}: length {} != {}", x.len(), y.len()));
                }
                for (i, (v, w)) in x.iter().zip(y).enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    if let Some(d) = walk(v, w, path) {
                        return Some(d);
                    }
                    path.truncate(len);
                }
                None
            }
            _ if a == b => None,
            _ => {
                let cut = |v: &Value| {
                    let s = v.to_string();
                    if s.len() > 200 {
                        format!(
                            "{}…",
                            &s[..s.char_indices().nth(200).map_or(s.len(), |(i, _)| i)]
                        )
                    } else {
                        s
                    }
                };
                Some(format!("{path}: {} != {}", cut(a), cut(b)))
            }
        }
    }
    walk(a, b, &mut String::from("$"))
}

/// An oracle script that prints JSON events, one per line, until it is killed (e.g.
/// `oracle/link.mjs`, a stock Baileys socket). A reader thread collects the lines; the
/// script is killed on drop.
pub struct EventScript {
    child: Child,
    events: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl EventScript {
    /// Starts `node oracle/<script> <args…>`. Its stdin stays open (the script may exit when
    /// it closes); its stderr is inherited.
    pub fn start(script: &str, args: &[&str]) -> EventScript {
        install_oracle();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle");
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect(
                "cannot start node: the interop suite needs Node.js (apt-get install nodejs npm)",
            );
        let stdout = BufReader::new(child.stdout.take().expect("script stdout"));
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "unparsed", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        EventScript {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for the next event named `name` (`{"event": name, …}`), skipping others, and
    /// panics after `timeout` or if the script exits first. Blocking: call it from a plain
    /// thread or inside `tokio::task::block_in_place`.
    pub fn wait_for(&mut self, name: &str, timeout: std::time::Duration) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if event["event"] == name {
                        return event;
                    }
                }
                Err(e) => panic!(
                    "no {name:?} event from the script ({e}); events so far: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Collects the events that arrive within `wait` into [`EventScript::seen`].
    pub fn settle(&mut self, wait: std::time::Duration) {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(_) => return,
            }
        }
    }

    /// Every event received so far, in order.
    pub fn seen(&self) -> &[Value] {
        &self.seen
    }

    /// Writes one JSON line to the script's stdin (a command, for scripts that take them).
    pub fn send(&mut self, command: &Value) {
        let stdin = self.child.stdin.as_mut().expect("script stdin is piped");
        let mut line = serde_json::to_string(command).expect("command serializes");
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write to the script's stdin");
    }

    /// Waits until `pick` accepts an event (skipping others), and returns what it returned;
    /// panics after `timeout` or if the script exits first. Blocking, as [`Self::wait_for`].
    pub fn wait_until<T>(
        &mut self,
        timeout: std::time::Duration,
        mut pick: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Err(e) => panic!(
                    "the awaited event did not come ({e}); events so far: {:?}",
                    self.seen
                ),
            }
        }
    }
}

impl Drop for EventScript {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
