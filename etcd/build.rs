//! Compiles the subset of etcd's v3 API the coordinator uses with protox (pure Rust), like the
//! project's own protocol, so no system protoc is needed. (The `etcd-client` crate compiles
//! etcd's protos with protoc at build time, which this workspace does not require anyone to
//! install; the client here is the few calls the coordinator makes.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/etcdserverpb/v3.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
