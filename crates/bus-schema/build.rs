//! Compiles `proto/wafleet/bus/**.proto` with protox (pure Rust, no system `protoc`) into
//! prost types, and generates their proto3 JSON serde impls with pbjson-build.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/wafleet/bus/v1/common.proto",
    "proto/wafleet/bus/v1/commands.proto",
    "proto/wafleet/bus/v1/events.proto",
    "proto/wafleet/bus/internal/v1/coordination.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"]).map_err(|e| io::Error::other(e.to_string()))?;
    let descriptors = fds.encode_to_vec();
    fs::write(out_dir.join("wafleet_bus_descriptors.bin"), &descriptors)?;

    prost_build::Config::new()
        // Well-known types come from pbjson-types, which has their proto3 JSON forms.
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        // Ordered maps: a message encodes to the same bytes every time.
        .btree_map(["."])
        .compile_fds(fds)?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .build(&[".wafleet"])?;
    Ok(())
}
