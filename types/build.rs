//! Compiles the durable record schema with protox (pure Rust, no system protoc) into plain
//! prost messages: no gRPC code, so the cores that use records stay free of it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/txn/records/v1/records.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
