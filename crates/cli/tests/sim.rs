//! `wafleet sim`, run as the built binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// Kills the simulator when the test ends, pass or fail.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[test]
fn prints_urls_and_root_key_and_serves_the_control_api() {
    let child = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["sim", "--phone", "15551234567", "--phone", "4915112345678"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sim = Running(child);
    let mut lines = BufReader::new(sim.0.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let ws = next();
    let root = next();
    let control = next();
    assert_eq!(next(), "phone: 15551234567");
    assert_eq!(next(), "phone: 4915112345678");

    let ws = ws.strip_prefix("ws: ").unwrap();
    assert!(
        ws.starts_with("ws://127.0.0.1:") && ws.ends_with("/ws/chat"),
        "{ws}"
    );
    let root = root.strip_prefix("root public key: ").unwrap();
    assert_eq!(hex::decode(root).unwrap().len(), 32);
    let control = control.strip_prefix("control: ").unwrap();

    // The pre-created phones exist: adding one again conflicts.
    let (status, error) = http(control, "POST", "/phones", r#"{"phone":"15551234567"}"#);
    assert_eq!(status, 409);
    assert_eq!(error["error"]["code"], "phone_exists");
    let (status, counters) = http(control, "GET", "/counters", "");
    assert_eq!(status, 200);
    assert_eq!(counters["replaced_sent"], 0);
}

#[test]
fn a_bad_phone_is_a_one_line_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(["sim", "--phone", "0123"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: --phone 0123:"), "{stderr}");
    assert!(output.stdout.is_empty());
}
