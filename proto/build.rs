//! Compiles the seed's .proto files with protox (pure Rust), so no system `protoc` is needed.
use prost::Message;

const FILES: &[&str] = &[
    "base.proto",
    "gateway.proto",
    "notify.proto",
    "user.proto",
    "friend.proto",
    "file.proto",
    "message.proto",
    "transmite.proto",
    "speech.proto",
    "internal.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(FILES, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // The descriptor set lets the gateway transcode proto3 JSON without hand-written mappings.
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Smaller first buffers than tonic's default (see src/codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        // Type names let the gateway find each message's descriptor for JSON.
        .compile_fds_with_config(fds, {
            let mut config = prost_build::Config::new();
            config.enable_type_names();
            config
        })?;
    Ok(())
}
