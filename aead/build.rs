//! Builds the libipsec-mb shim when the `ipsec-mb` feature is on (benchmark reference only).
fn main() {
    println!("cargo:rerun-if-changed=src/x86/ipsec_mb_shim.c");
    // x86-64 only (the library's code paths are x86's); elsewhere the feature builds nothing,
    // and `wgpmd_aead::ipsec_mb` is absent (lib.rs).
    #[cfg(feature = "ipsec-mb")]
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        cc::Build::new().file("src/x86/ipsec_mb_shim.c").opt_level(2).compile("wgpmd_ipsec_mb_shim");
        println!("cargo:rustc-link-lib=IPSec_MB");
    }
}
