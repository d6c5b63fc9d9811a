//! The protocol crate's normal dependencies hold no I/O crate: no NIC backend, VFIO or DPDK, no
//! socket or event-loop crate, no signal handling, CPU pinning, inter-core queue, CLI, logging
//! setup or boringtun, and not the daemon. Code cannot name a crate it does not depend on, so
//! the compiler keeps those out. (`std`'s own sockets, files, threads and clocks stay nameable;
//! that the crate uses none of them outside its tests is a rule of `src/lib.rs`, not something
//! this test can see.) This reads `cargo tree -e normal` (the tree a user of the crate builds)
//! and refuses each crate that would bring I/O in.
//!
//! One exception, checked as narrowly as it can be: ring (the data path's ChaCha20-Poly1305)
//! always depends on getrandom, and getrandom on libc, for ring's own `SystemRandom`, which this
//! crate never calls (randomness comes from the caller). So `getrandom` and `libc` may appear
//! only on that one path: `ring -> getrandom -> libc`, and nowhere else.

use std::process::Command;

/// Crates that must never be a normal (non-dev) dependency of `wgpmd-proto`, directly or not.
const FORBIDDEN: &[&str] = &[
    "nic-backends",
    "vfio",
    "dpdk-sys",
    "wgpmd",
    "clap",
    "tracing-subscriber",
    "signal-hook",
    "core_affinity",
    "nix",
    // libc: only under ring -> getrandom (libc_and_getrandom_come_only_through_ring).
    "boringtun",
    "crossbeam-queue",
    "socket2",
    "mio",
    "tokio",
];

/// `cargo tree -e normal -i CRATE`: the crates that depend on CRATE, as `(depth, name)`.
fn inverted(krate: &str) -> Vec<(usize, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "wgpmd-proto",
            "-e",
            "normal",
            "-i",
            krate,
            "--prefix",
            "depth",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree -i {krate} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let digits = l.chars().take_while(char::is_ascii_digit).count();
            let depth = l[..digits].parse().ok()?;
            Some((depth, l[digits..].split_whitespace().next()?.to_string()))
        })
        .collect()
}

fn normal_tree() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-p", "wgpmd-proto", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn no_io_crate_among_the_normal_dependencies() {
    let tree = normal_tree();
    assert!(tree.iter().any(|c| c == "wgpmd-proto"), "the tree names the crate itself: {tree:?}");
    assert!(tree.iter().any(|c| c == "x25519-dalek"), "the tree lists transitive dependencies: {tree:?}");
    let found: Vec<&String> = tree.iter().filter(|c| FORBIDDEN.contains(&c.as_str())).collect();
    assert!(found.is_empty(), "I/O crates in wgpmd-proto's normal dependencies: {found:?}");
}

#[test]
fn libc_and_getrandom_come_only_through_ring() {
    let tree = normal_tree();
    if tree.iter().any(|c| c == "getrandom") {
        let who = inverted("getrandom");
        let parents: Vec<&str> = who.iter().filter(|(d, _)| *d == 1).map(|(_, n)| n.as_str()).collect();
        assert_eq!(parents, ["ring"], "getrandom is depended on by {parents:?}; only ring may: {who:?}");
    }
    if tree.iter().any(|c| c == "libc") {
        let who = inverted("libc");
        let parents: Vec<&str> = who.iter().filter(|(d, _)| *d == 1).map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            parents,
            ["getrandom"],
            "libc is depended on by {parents:?}; only getrandom (under ring) may: {who:?}"
        );
    }
}
