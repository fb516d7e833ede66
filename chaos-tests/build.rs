//! Builds `slowdisk/slowdisk.c` into a shared library (the slow-disk fault's LD_PRELOAD shim)
//! with the C compiler RocksDB's build already needs (`$CC`, else `cc`). The binary embeds it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "slowdisk/slowdisk.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("libslowdisk.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(source)
        .arg("-ldl")
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler `{cc}` to build {source}: {e}; install gcc (scripts/prereqs does) or set CC")
        });
    assert!(
        status.success(),
        "`{cc}` failed to build {source} ({status})"
    );
}
