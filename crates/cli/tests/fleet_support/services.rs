//! Private service instances for tests that stop and restart them: a 3-node NATS cluster
//! (`scripts/nats-cluster.sh`), a PostgreSQL server (`scripts/pg-private.sh`, the
//! machine's binaries, initdb on a free port), a SeaweedFS S3 server (`scripts/s3.sh
//! --data`). Each is stopped when dropped. Never the shared NATS (14222), S3 (18333) or
//! the machine's PostgreSQL (5432).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Runs `bash scripts/<script> args…`; returns stdout's last line, or panics with stderr.
pub fn run_script(script: &str, args: &[String]) -> String {
    let output = Command::new("bash")
        .arg(scripts_dir().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run scripts/{script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        panic!(
            "scripts/{script} {} failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout.lines().last().unwrap_or_default().trim().to_string()
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port nothing listens on (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A base port P with P..P+4 and P+10000..P+10004 free (SeaweedFS takes them all).
fn free_port_block() -> u16 {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 97) % 9_000) as u16;
        if (0..5).all(|i| port_free(base + i) && port_free(base + 10_000 + i)) {
            return base;
        }
    }
    panic!("no free block of ports for SeaweedFS");
}

/// A 3-node NATS 2.15.1 cluster with JetStream (`scripts/nats-cluster.sh`), on free ports.
pub struct NatsCluster {
    ports: [u16; 3],
    cluster_ports: [u16; 3],
    dir: PathBuf,
    no_advertise: bool,
}

impl NatsCluster {
    /// Starts the three nodes under `dir` and waits for a JetStream meta leader.
    /// `no_advertise`: clients know only the URLs they were given.
    pub fn start(dir: &Path, no_advertise: bool) -> NatsCluster {
        let mut ports = [0u16; 3];
        let mut cluster_ports = [0u16; 3];
        loop {
            for p in ports.iter_mut().chain(cluster_ports.iter_mut()) {
                *p = free_port();
            }
            let mut all: Vec<u16> = ports.iter().chain(cluster_ports.iter()).copied().collect();
            all.sort_unstable();
            all.dedup();
            if all.len() == 6 {
                break;
            }
        }
        let cluster = NatsCluster {
            ports,
            cluster_ports,
            dir: dir.to_path_buf(),
            no_advertise,
        };
        run_script("nats-cluster.sh", &cluster.args("start", None));
        cluster
    }

    fn args(&self, action: &str, node: Option<usize>) -> Vec<String> {
        let list = |p: &[u16; 3]| {
            p.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut args = vec![action.to_string()];
        if let Some(n) = node {
            args.push(n.to_string());
        }
        args.extend([
            "--ports".to_string(),
            list(&self.ports),
            "--cluster-ports".to_string(),
            list(&self.cluster_ports),
            "--dir".to_string(),
            self.dir.display().to_string(),
        ]);
        if self.no_advertise {
            args.push("--no-advertise".to_string());
        }
        args
    }

    /// Client URL of node `n` (1..=3).
    pub fn url(&self, n: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[n - 1])
    }

    /// All three client URLs.
    pub fn urls(&self) -> Vec<String> {
        (1..=3).map(|n| self.url(n)).collect()
    }

    /// Stops node `n` (SIGTERM, or SIGKILL with `kill`).
    pub fn stop_node(&self, n: usize, kill: bool) {
        let mut args = self.args("stop-node", Some(n));
        if kill {
            args.push("--kill".into());
        }
        run_script("nats-cluster.sh", &args);
    }

    /// Starts node `n` again (same store and ports); returns once it accepts clients.
    pub fn start_node(&self, n: usize) {
        run_script("nats-cluster.sh", &self.args("start-node", Some(n)));
    }

    /// Stops all three nodes.
    pub fn stop_all(&self, kill: bool) {
        let mut args = self.args("stop", None);
        if kill {
            args.push("--kill".into());
        }
        run_script("nats-cluster.sh", &args);
    }

    /// Starts every stopped node; returns once a JetStream meta leader is elected.
    pub fn start_all(&self) {
        run_script("nats-cluster.sh", &self.args("start", None));
    }

    /// Starts every stopped node; returns once each accepts clients (JetStream may still
    /// be electing its leaders).
    pub fn start_all_nodes(&self) {
        let mut args = self.args("start", None);
        args.push("--no-wait-leader".into());
        run_script("nats-cluster.sh", &args);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let mut args = self.args("stop", None);
        args.push("--kill".into());
        let _ = Command::new("bash")
            .arg(scripts_dir().join("nats-cluster.sh"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private PostgreSQL server (`scripts/pg-private.sh`) on a free port.
pub struct PrivatePg {
    port: u16,
    dir: PathBuf,
    /// postgres://postgres@127.0.0.1:PORT/postgres
    pub url: String,
}

impl PrivatePg {
    /// initdb (as the postgres user) and start under `dir`, which must be reachable by
    /// that user (the fleet makes its temp dir world-readable).
    pub fn start(dir: &Path) -> PrivatePg {
        let port = free_port();
        let mut pg = PrivatePg {
            port,
            dir: dir.to_path_buf(),
            url: String::new(),
        };
        pg.url = run_script("pg-private.sh", &pg.args("start"));
        pg
    }

    fn args(&self, action: &str) -> Vec<String> {
        vec![
            action.to_string(),
            "--port".into(),
            self.port.to_string(),
            "--dir".into(),
            self.dir.display().to_string(),
        ]
    }

    /// Stops the server (immediate shutdown with `kill`, as a crash would).
    pub fn stop(&self, kill: bool) {
        let mut args = self.args("stop");
        if kill {
            args.push("--kill".into());
        }
        run_script("pg-private.sh", &args);
    }

    /// Starts it again on its data; returns once it accepts connections.
    pub fn start_again(&self) {
        run_script("pg-private.sh", &self.args("start"));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let mut args = self.args("stop");
        args.push("--kill".into());
        let _ = Command::new("bash")
            .arg(scripts_dir().join("pg-private.sh"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private SeaweedFS S3 server (`scripts/s3.sh --port P --data DIR`).
pub struct PrivateS3 {
    port: u16,
    data: PathBuf,
    /// http://127.0.0.1:P
    pub endpoint: String,
}

impl PrivateS3 {
    pub fn start(data: &Path) -> PrivateS3 {
        let port = free_port_block();
        let mut s3 = PrivateS3 {
            port,
            data: data.to_path_buf(),
            endpoint: String::new(),
        };
        s3.endpoint = run_script("s3.sh", &s3.args("start"));
        s3
    }

    fn args(&self, action: &str) -> Vec<String> {
        vec![
            action.to_string(),
            "--port".into(),
            self.port.to_string(),
            "--data".into(),
            self.data.display().to_string(),
        ]
    }

    /// SIGKILL (SeaweedFS may take > 30 s to stop on SIGTERM).
    pub fn stop(&self) {
        let mut args = self.args("stop");
        args.push("--kill".into());
        run_script("s3.sh", &args);
    }

    /// Starts it again on its data; returns once the S3 port answers and the bucket is
    /// there (reads may still fail for a few seconds: see `scripts/s3.sh`).
    pub fn start_again(&self) {
        run_script("s3.sh", &self.args("start"));
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let mut args = self.args("stop");
        args.push("--kill".into());
        let _ = Command::new("bash")
            .arg(scripts_dir().join("s3.sh"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
