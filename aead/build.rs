//! Builds the libipsec-mb shim when the `ipsec-mb` feature is on (benchmark reference only).
fn main() {
    println!("cargo:rerun-if-changed=src/x86/ipsec_mb_shim.c");
    #[cfg(feature = "ipsec-mb")]
    {
        cc::Build::new().file("src/x86/ipsec_mb_shim.c").opt_level(2).compile("wgpmd_ipsec_mb_shim");
        println!("cargo:rustc-link-lib=IPSec_MB");
    }
}
