//! Wire-core throughput: node encode/decode over a corpus, and the transport cipher.
//!
//! The codec corpus is a JSON array of nodes in the JSON form. `scripts/bench-wire.sh` writes
//! one with the oracle's generator and times Baileys on the same file in the same run; it is
//! passed here as `WAFLEET_CODEC_CORPUS`. Without it, the Baileys byte vectors are used.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wafleet_protocol::binary::{self, json as node_json, Node};
use wafleet_protocol::noise::Transport;

fn corpus() -> Vec<Node> {
    let text = match std::env::var("WAFLEET_CODEC_CORPUS") {
        Ok(path) => std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")),
        Err(_) => {
            let v: serde_json::Value =
                serde_json::from_str(include_str!("../tests/data/baileys-vectors.json"))
                    .expect("vectors");
            let nodes: Vec<_> = v["binary_nodes"]
                .as_object()
                .expect("binary_nodes")
                .values()
                .map(|e| e["node"].clone())
                .collect();
            serde_json::to_string(&nodes).expect("json")
        }
    };
    let values: Vec<serde_json::Value> =
        serde_json::from_str(&text).expect("corpus is a JSON array");
    values
        .iter()
        .map(|v| node_json::from_value(v).expect("corpus node"))
        .collect()
}

fn codec(c: &mut Criterion) {
    let nodes = corpus();
    let encoded: Vec<Vec<u8>> = nodes
        .iter()
        .map(|n| binary::encode(n).expect("encodes"))
        .collect();
    let bytes: usize = encoded.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(bytes as u64));
    let mut buf = Vec::with_capacity(bytes);
    g.bench_function("encode_corpus", |b| {
        b.iter(|| {
            for n in &nodes {
                buf.clear();
                binary::encode_into(black_box(n), &mut buf).expect("encodes");
            }
        })
    });
    g.bench_function("decode_corpus", |b| {
        b.iter(|| {
            for e in &encoded {
                black_box(binary::decode(black_box(e)).expect("decodes"));
            }
        })
    });
    g.bench_function("encode_decode_corpus", |b| {
        b.iter(|| {
            for n in &nodes {
                let e = binary::encode(black_box(n)).expect("encodes");
                black_box(binary::decode(&e).expect("decodes"));
            }
        })
    });
    g.finish();
    println!("corpus: {} nodes, {} bytes encoded", nodes.len(), bytes);
}

fn transport(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport");
    for size in [64usize, 1024, 65536] {
        let plain = vec![1u8; size];
        let mut tx = Transport::new([7; 32], [9; 32]);
        let mut rx = Transport::new([9; 32], [7; 32]);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("encrypt_decrypt_{size}"), |b| {
            b.iter(|| {
                let ct = tx.encrypt(black_box(&plain)).expect("encrypt");
                black_box(rx.decrypt(&ct).expect("decrypt"));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, transport);
criterion_main!(benches);
