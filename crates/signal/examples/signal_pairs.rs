//! Runs the 1:1 benchmark workload (`benches/support/workload.rs`, shared with
//! `benches/signal.rs`) a given number of times without
//! criterion, for instruction counts: the per-pair cost is the difference between two runs
//! divided by the difference in pairs, e.g.
//!
//! ```sh
//! cargo build --release -p wafleet-signal --example signal_pairs
//! for n in 1000 11000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n target/release/examples/signal_pairs $n
//! done
//! ```
//!
//! (`callgrind_annotate` on the larger run shows where the instructions go.)

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::hint::black_box;

#[path = "../benches/support/workload.rs"]
mod workload;

fn main() {
    let pairs: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut rng = StdRng::seed_from_u64(1);
    let mut session = workload::Established::new(&mut rng);
    let pt = [3u8; 64];
    for _ in 0..pairs {
        black_box(session.pair(black_box(&pt), &mut rng));
    }
}
