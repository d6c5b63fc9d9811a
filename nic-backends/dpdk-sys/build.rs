//! Generate bindings to the system's DPDK with bindgen and compile the static-inline wrappers
//! (`wrap_static_fns`) and `shim.c` with the DPDK cflags.

use std::env;
use std::path::PathBuf;

const INSTALL_HINT: &str = "DPDK development files not found (pkg-config libdpdk failed). \
Install them: apt-get install --no-install-recommends libdpdk-dev libclang-dev clang pkg-config \
(Debian 12 ships DPDK 22.11). The dpdk feature of nic-backends/wgpmd needs them; builds without \
--features dpdk do not.";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    let lib = match pkg_config::Config::new().atleast_version("21.11").cargo_metadata(true).probe("libdpdk") {
        Ok(l) => l,
        Err(e) => panic!("{INSTALL_HINT}\n{e}"),
    };
    // The DPDK cflags: include paths, `-include rte_config.h`, `-march=...`.
    let cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let static_fns = out.join("static_fns");
    let mut b = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&cflags)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&static_fns)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in [
        "rte_eal_init",
        "rte_eal_cleanup",
        "rte_strerror",
        "rte_lcore_id",
        "rte_socket_id",
        "rte_thread_register",
        "rte_thread_unregister",
        "rte_eth_dev_count_avail",
        "rte_eth_dev_get_port_by_name",
        "rte_eth_dev_get_name_by_port",
        "rte_eth_dev_is_valid_port",
        "rte_eth_dev_info_get",
        "rte_eth_dev_configure",
        "rte_eth_dev_socket_id",
        "rte_eth_rx_queue_setup",
        "rte_eth_tx_queue_setup",
        "rte_eth_dev_start",
        "rte_eth_dev_stop",
        "rte_eth_dev_close",
        "rte_eth_dev_adjust_nb_rx_tx_desc",
        "rte_eth_macaddr_get",
        "rte_eth_dev_get_mtu",
        "rte_eth_promiscuous_enable",
        "rte_eth_link_get_nowait",
        "rte_eth_rx_burst",
        "rte_eth_tx_burst",
        "rte_eth_xstats_get",
        "rte_eth_xstats_get_names",
        "rte_eth_stats_get",
        "rte_pktmbuf_pool_create",
        "rte_pktmbuf_pool_create_extbuf",
        "rte_pktmbuf_alloc",
        "rte_pktmbuf_alloc_bulk",
        "rte_pktmbuf_free",
        "rte_pktmbuf_free_bulk",
        "rte_pktmbuf_append",
        "rte_mempool_free",
        "rte_mempool_avail_count",
        "rte_mempool_in_use_count",
        "rte_memzone_reserve_aligned",
        "rte_memzone_free",
        "wgpmd_.*",
    ] {
        b = b.allowlist_function(f);
    }
    for t in ["rte_eth_conf", "rte_eth_dev_info", "rte_eth_link", "rte_ether_addr", "rte_eth_xstat.*", "rte_memzone"] {
        b = b.allowlist_type(t);
    }
    for v in
        ["RTE_MEMZONE_.*", "RTE_ETH_.*", "RTE_MAX_ETHPORTS", "RTE_ETH_NAME_MAX_LEN", "SOCKET_ID_ANY", "LCORE_ID_ANY"]
    {
        b = b.allowlist_var(v);
    }
    let bindings = b.generate().unwrap_or_else(|e| panic!("bindgen over the DPDK headers failed: {e}\n{INSTALL_HINT}"));
    bindings.write_to_file(out.join("bindings.rs")).expect("write bindings.rs");

    let mut cc = cc::Build::new();
    cc.file(static_fns.with_extension("c")).file("shim.c").include(".").warnings(false);
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("wgpmd_dpdk_shim");
    // The shim calls into the DPDK libraries: link them after it.
    for l in &lib.libs {
        println!("cargo:rustc-link-lib={l}");
    }
}
