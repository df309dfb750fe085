//! `wafleet sim`: runs the WhatsApp simulator (server and phones) on loopback until Ctrl-C.
//!
//! Prints the WebSocket URL, the root public key to pin (hex) and the control API URL, one
//! `key: value` line each, then one `phone: …` line per pre-created phone. Logs go to
//! stderr (`RUST_LOG` filters them; `info` by default).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use wafleet_sim::{SimConfig, Simulator};

/// `wafleet sim …`
#[derive(Debug, Args)]
pub struct SimArgs {
    /// WebSocket port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// HTTP control API port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
    /// Lifetime of the first QR ref, in seconds.
    #[arg(long, default_value_t = 60)]
    qr_ttl_first: u64,
    /// Lifetime of each later QR ref, in seconds.
    #[arg(long, default_value_t = 20)]
    qr_ttl_next: u64,
    /// Clients older than this version (e.g. 2.3000.1000000000) get failure 405.
    #[arg(long, value_parser = parse_version)]
    min_client_version: Option<[u32; 3]>,
    /// A phone to create at start, as E.164 digits (repeatable).
    #[arg(long = "phone")]
    phones: Vec<String>,
}

fn parse_version(s: &str) -> Result<[u32; 3], String> {
    let parts: Vec<u32> = s
        .split('.')
        .map(|p| p.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("version must be three numbers like 2.3000.1, got {s:?}"))?;
    <[u32; 3]>::try_from(parts)
        .map_err(|_| format!("version must be three numbers like 2.3000.1, got {s:?}"))
}

/// Runs the simulator until Ctrl-C.
pub fn run(args: SimArgs) -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(args))
}

async fn serve(args: SimArgs) -> Result<(), String> {
    let config = SimConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], args.port)),
        control_bind: Some(SocketAddr::from(([127, 0, 0, 1], args.control_port))),
        first_qr_ttl: Duration::from_secs(args.qr_ttl_first),
        next_qr_ttl: Duration::from_secs(args.qr_ttl_next),
        min_client_version: args.min_client_version,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config).await.map_err(|e| e.to_string())?;
    for phone in &args.phones {
        if let Err(e) = sim.add_phone(phone) {
            sim.shutdown().await;
            return Err(format!("--phone {phone}: {e}"));
        }
    }
    println!("ws: {}", sim.ws_url());
    println!("root public key: {}", hex::encode(sim.root_public_key()));
    if let Some(control) = sim.control_url() {
        println!("control: {control}");
    }
    for phone in &args.phones {
        println!("phone: {phone}");
    }
    let stopped = tokio::signal::ctrl_c().await;
    sim.shutdown().await;
    stopped.map_err(|e| format!("cannot wait for Ctrl-C: {e}"))
}
