//! Builds the fast path's eBPF object (`bpf/fastpath.bpf.c`) with clang, for
//! `linux::fastpath` to embed. clang and libbpf's headers are Debian's
//! `clang` and `libbpf-dev` (`./x setup` installs them).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/fastpath.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("fastpath.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The multiarch include directory holds <asm/types.h> for the kernel's
    // headers.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-I", &multiarch, "-c", source, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to build {source} ({s}); it needs libbpf's headers (Debian: libbpf-dev)"),
        Err(e) => panic!("cannot run {clang} to build {source}: {e}; install clang (Debian: clang, libbpf-dev; ./x setup does)"),
    }
}
