//! `wafleet node decode|encode`: the binary node codec on the command line.
//!
//! `decode HEX` prints the node of a frame payload (flag byte included, zlib-flagged payloads
//! are inflated) as one line of JSON; `encode JSON` prints the payload as lowercase hex,
//! flag byte included. Without an argument each reads one item per line from stdin (blank
//! lines skipped) and writes one result per line, stopping at the first bad item with
//! `line N: …` as the error.

use std::io::{self, BufRead, Write};

use clap::Subcommand;
use wafleet_protocol::binary::{self, json};

/// `wafleet node …`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Decode a hex frame payload (leading flag byte included) to one line of JSON.
    Decode {
        /// The payload in hex. Without it, reads one payload per line from stdin.
        hex: Option<String>,
    },
    /// Encode a JSON node to a hex frame payload (leading 00 flag byte included).
    Encode {
        /// The node as JSON ({"tag", "attrs", "content"}). Without it, reads one per line
        /// from stdin.
        json: Option<String>,
    },
}

/// Turns one input item into one output line, or a one-line error.
type Convert = fn(&str) -> Result<String, String>;

/// Runs a `node` subcommand against the process's stdin and stdout.
pub fn run(command: NodeCommand) -> Result<(), String> {
    let (item, convert): (Option<String>, Convert) = match command {
        NodeCommand::Decode { hex } => (hex, decode_hex),
        NodeCommand::Encode { json } => (json, encode_json),
    };
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match item {
        Some(item) => {
            let line = convert(&item)?;
            writeln!(out, "{line}").map_err(|e| format!("writing output: {e}"))
        }
        None => run_lines(io::stdin().lock(), &mut out, convert),
    }
}

/// Converts each non-blank line of `input`, writing one result line per item to `out`.
fn run_lines(input: impl BufRead, out: &mut impl Write, convert: Convert) -> Result<(), String> {
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| format!("line {number}: reading input: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = convert(&line).map_err(|e| format!("line {number}: {e}"))?;
        writeln!(out, "{result}").map_err(|e| format!("writing output: {e}"))?;
    }
    out.flush().map_err(|e| format!("writing output: {e}"))
}

fn decode_hex(text: &str) -> Result<String, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("invalid hex: {e}"))?;
    let node = binary::decode(&bytes).map_err(|e| format!("cannot decode node: {e}"))?;
    Ok(json::to_string(&node))
}

fn encode_json(text: &str) -> Result<String, String> {
    let node = json::from_str(text).map_err(|e| format!("invalid node JSON: {e}"))?;
    let bytes = binary::encode(&node).map_err(|e| format!("cannot encode node: {e}"))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_blanks_and_stop_at_the_first_error() {
        let input = "00f80119\n\n  \n00f8039d70ff82515f\nzz\n00f80119\n";
        let mut out = Vec::new();
        let err = run_lines(input.as_bytes(), &mut out, decode_hex).unwrap_err();
        assert!(err.starts_with("line 5: invalid hex"), "{err}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"tag\":\"iq\",\"attrs\":{}}\n{\"tag\":\"stream:error\",\"attrs\":{\"code\":\"515\"}}\n"
        );
    }
}
