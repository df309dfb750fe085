//! Compiles `proto/*.proto` with protox (pure Rust, no system `protoc`) and prost-build.

use std::io;

const PROTOS: &[&str] = &[
    "proto/wa6.proto",
    "proto/cert.proto",
    "proto/adv.proto",
    "proto/companion_reg.proto",
    "proto/e2e.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
