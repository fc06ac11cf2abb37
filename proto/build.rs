//! Generates the vitals.v1 Rust code at build time with a pure-Rust .proto
//! compiler, so no system `protoc` is needed. The encoded descriptor set is
//! kept too: the collector serves it through gRPC server reflection.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "vitals/v1/snapshot.proto",
        "vitals/v1/enrollment.proto",
        "vitals/v1/agent.proto",
        "vitals/v1/specialist.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("vitals_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // The generated `connect` helper would clash with the `Connect` RPC;
        // callers build their own TLS channel anyway.
        .build_transport(false)
        // Small starting buffers per stream: see `src/codec.rs`.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(fds)?;
    Ok(())
}
