//! Compiles the protos with the pure-Rust `protox` compiler, so no `protoc` is needed,
//! and keeps the encoded descriptor set for gRPC server reflection.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flash/loyalty/v1/programs.proto",
        "proto/flash/loyalty/v1/ledger.proto",
        "proto/flash/loyalty/v1/tiers.proto",
        "proto/flash/loyalty/v1/events.proto",
        "proto/flash/loyalty/v1/referrals.proto",
        "proto/flash/loyalty/v1/graph.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("flash_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // A request prost cannot decode is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::grpc::codec::ProtoCodec")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
