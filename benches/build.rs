//! Compiles proto/etcdserverpb/kv.proto (the etcd KV/Put subset of the `--baseline etcd` run)
//! with protox, a pure-Rust protobuf compiler, as crates/lockstep-proto/build.rs does: building
//! the harness never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest directory of this build, read when the script runs: the target directory is
    // shared by every clone on the machine (CI's fresh clones too), and a script compiled in
    // one clone must not read another clone's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files = [root.join("etcdserverpb/kv.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
