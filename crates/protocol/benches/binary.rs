//! Binary node codec throughput on Baileys' vectors.
//!
//! For comparison, CPU time per operation measured on the shared 2-core dev machine (Baileys
//! 7.0.0-rc14 on node 20, 1M iterations; wafleet release build, 10M iterations):
//!
//! | vector           | Baileys encode | wafleet encode | Baileys decode | wafleet decode |
//! |------------------|---------------:|---------------:|---------------:|---------------:|
//! | `ping`           |        1.40 µs |          76 ns |        0.73 µs |         250 ns |
//! | `ad_jid_and_lid` |        3.82 µs |         143 ns |        1.58 µs |         370 ns |
//!
//! Decoding is dominated by allocating the owned `String`s of the tree.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wafleet_protocol::binary::{decode, encode_into, json, token};

fn vectors() -> Vec<(String, wafleet_protocol::binary::Node, Vec<u8>)> {
    let all: serde_json::Value =
        serde_json::from_str(include_str!("../tests/data/baileys-vectors.json")).unwrap();
    ["ping", "ad_jid_and_lid"]
        .iter()
        .map(|name| {
            let v = &all["binary_nodes"][*name];
            let node = json::from_value(&v["node"]).unwrap();
            let bytes = hex::decode(v["hex"].as_str().unwrap()).unwrap();
            (name.to_string(), node, bytes)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let words = [
        "s.whatsapp.net",
        "xmlns",
        "read-self",
        "1234.5678-1",
        "hello world",
    ];
    c.bench_function("token_lookup/5_strings", |b| {
        b.iter(|| {
            for w in words {
                black_box(token::lookup(black_box(w)));
            }
        })
    });
    for (name, node, bytes) in vectors() {
        let mut buf = Vec::with_capacity(1024);
        c.bench_function(&format!("encode/{name}"), |b| {
            b.iter(|| {
                buf.clear();
                encode_into(black_box(&node), &mut buf).unwrap();
                black_box(buf.len())
            })
        });
        c.bench_function(&format!("decode/{name}"), |b| {
            b.iter(|| decode(black_box(&bytes)).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
