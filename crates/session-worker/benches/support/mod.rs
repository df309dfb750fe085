//! Shared by the benches that measure wafleet beside stock Baileys on one simulator:
//! percentiles, the report line, and running a node script of `tests/interop/oracle`.

use std::time::Duration;

use wafleet_sim::Simulator;

/// The `p`th percentile (nearest rank) of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints p50, p99 and max of `values`, the label padded to `width`.
pub fn report(label: &str, width: usize, mut values: Vec<Duration>) {
    values.sort();
    println!(
        "  {label:<width$} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms",
        percentile(&values, 50.0).as_secs_f64() * 1e3,
        percentile(&values, 99.0).as_secs_f64() * 1e3,
        values.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

/// Runs `node <script> <ws url> <root key hex> <control url> <count> <concurrency>
/// <prefix>` in `tests/interop/oracle` against `sim`; returns its stdout, or `None` (and
/// says why) when Baileys is not installed, the simulator has no control API, or the
/// script failed.
pub fn run_oracle(
    sim: &Simulator,
    script: &str,
    count: usize,
    concurrency: usize,
    prefix: &str,
) -> Option<String> {
    let oracle =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/oracle");
    if !oracle.join("node_modules/baileys").exists() {
        println!("Baileys: not installed (bash scripts/install-oracle.sh); no peer measured");
        return None;
    }
    let Some(control) = sim.control_url() else {
        println!("Baileys: the simulator has no control API");
        return None;
    };
    let root: String = sim
        .root_public_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let output = std::process::Command::new("node")
        .current_dir(&oracle)
        .args([
            script,
            &sim.ws_url(),
            &root,
            &control,
            &count.to_string(),
            &concurrency.to_string(),
            prefix,
        ])
        .output()
        .expect("node runs");
    if !output.status.success() {
        println!(
            "Baileys: failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// CPU time used so far by this process' threads whose name starts with `prefix`: the sum
/// of the first field (ns on a CPU) of `/proc/self/task/*/schedstat`. Threads that ended
/// are not counted, so the runtimes measured keep theirs alive.
#[allow(dead_code)] // messaging.rs uses it, link_latency.rs does not
pub fn threads_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let named = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix));
        if !named {
            continue;
        }
        if let Ok(stat) = std::fs::read_to_string(path.join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}
