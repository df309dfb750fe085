//! `wafleet node decode|encode`, run as the built binary.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const VECTORS: &str = include_str!("../../protocol/tests/data/baileys-vectors.json");

fn vector(name: &str) -> (serde_json::Value, String) {
    let all: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    let v = &all["binary_nodes"][name];
    (v["node"].clone(), v["hex"].as_str().unwrap().to_owned())
}

fn wafleet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wafleet"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn decode_a_vector() {
    let (node, hex) = vector("ad_jid_and_lid");
    let output = wafleet(&["node", "decode", &hex], None);
    assert!(output.status.success(), "{output:?}");
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0], node.to_string());
    assert!(output.stderr.is_empty());
}

#[test]
fn encode_a_vector() {
    let (node, hex) = vector("ping");
    let output = wafleet(&["node", "encode", &node.to_string()], None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_lines(&output), [hex]);
}

#[test]
fn stdin_mode_one_result_per_line() {
    let names = ["empty_iq", "group_and_double_token", "stream_error_515"];
    let vectors: Vec<_> = names.iter().map(|n| vector(n)).collect();

    let input: String = vectors
        .iter()
        .map(|(_, hex)| format!("{hex}\n\n"))
        .collect();
    let output = wafleet(&["node", "decode"], Some(&input));
    assert!(output.status.success(), "{output:?}");
    let want: Vec<_> = vectors.iter().map(|(node, _)| node.to_string()).collect();
    assert_eq!(stdout_lines(&output), want);

    let input: String = vectors
        .iter()
        .map(|(node, _)| format!("{node}\n"))
        .collect();
    let output = wafleet(&["node", "encode"], Some(&input));
    assert!(output.status.success(), "{output:?}");
    let want: Vec<_> = vectors.iter().map(|(_, hex)| hex.clone()).collect();
    assert_eq!(stdout_lines(&output), want);
}

#[test]
fn bad_hex_fails_with_one_stderr_line() {
    let output = wafleet(&["node", "decode", "00f8zz"], None);
    assert!(!output.status.success());
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: invalid hex"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn stream_mode_stops_at_the_first_bad_line() {
    let input = "00f80119\n\n00f801\n00f80119\n";
    let output = wafleet(&["node", "decode"], Some(input));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), [r#"{"tag":"iq","attrs":{}}"#]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: line 3: cannot decode node: unexpected end"),
        "{stderr}"
    );
}

#[test]
fn bad_json_and_unencodable_nodes_fail() {
    let output = wafleet(
        &["node", "encode", r#"{"tag":"iq","attrs":{"id":1}}"#],
        None,
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "error: invalid node JSON: $.attrs.id: expected a string\n"
    );
    let output = wafleet(&["node", "encode"], Some("{\"tag\":\"iq\"}\n[]\n"));
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout_lines(&output), ["00f80119"]);
    assert!(String::from_utf8(output.stderr)
        .unwrap()
        .starts_with("error: line 2: invalid node JSON"));
}
