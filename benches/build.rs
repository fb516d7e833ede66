//! Compiles proto/etcdserverpb/kv.proto (the etcd KV/Put subset of the `--baseline etcd` run)
//! and proto/agent/agent.proto (controller and `lockstep-bench agent`)
//! with protox, a pure-Rust protobuf compiler, as crates/lockstep-proto/build.rs does: building
//! the harness never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest directory of this build, read when the script runs: the target directory is
    // shared by every clone on the machine (CI's fresh clones too), and a script compiled in
    // one clone must not read another clone's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let etcd = [root.join("etcdserverpb/kv.proto")];
    // The protocol between the controller and `lockstep-bench agent`: both sides.
    let agent = [root.join("agent/agent.proto")];
    for f in etcd.iter().chain(&agent) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(protox::compile(&etcd, [&root])?)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(protox::compile(&agent, [&root])?)?;
    Ok(())
}
