//! Compiles the XDP program of the `af_xdp:` port (bpf/xdp_steer.c) with clang into OUT_DIR,
//! where src/af_xdp.rs embeds it. Needs clang (with the BPF target), libbpf-dev (bpf_helpers.h)
//! and linux-libc-dev (the kernel UAPI headers): `apt-get install clang libbpf-dev linux-libc-dev`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/xdp_steer.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("xdp_steer.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    for dir in [format!("/usr/include/{arch}-linux-gnu"), "/usr/include/x86_64-linux-gnu".to_string()] {
        if std::path::Path::new(&dir).is_dir() {
            cmd.arg(format!("-I{dir}"));
            break;
        }
    }
    cmd.args(["-c", src, "-o"]).arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{clang} failed ({s}) compiling {src} (the af_xdp port's XDP program): install clang, libbpf-dev and \
             linux-libc-dev (apt-get install clang libbpf-dev linux-libc-dev)"
        ),
        Err(e) => panic!(
            "cannot run `{clang}` to compile {src} (the af_xdp port's XDP program): {e}; install clang, libbpf-dev \
             and linux-libc-dev (apt-get install clang libbpf-dev linux-libc-dev), or set CLANG"
        ),
    }
}
