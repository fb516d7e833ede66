//! Compiles proto/lockstep/v1/*.proto with protox (a pure-Rust protobuf compiler), so building
//! Lockstep never needs a system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest directory of this build, read when the script runs: the target directory is
    // shared by every clone on the machine (CI's fresh clones too), and a script compiled in
    // one clone must not read another clone's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("lockstep/v1/lockstep.proto"),
        root.join("lockstep/v1/raft.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("lockstep_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
