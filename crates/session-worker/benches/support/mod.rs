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
