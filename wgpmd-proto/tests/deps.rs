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
//!
//! Not visible here: C code that calls the C library without a crate. aws-lc (under aws-lc-rs,
//! the X25519) allocates with malloc/free and reads `OPENSSL_ia32cap` from the environment
//! once, when it first detects the CPU; ring's C code calls nothing of the kind.
#![forbid(unsafe_code)]

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

/// `cargo tree -e normal -i SPEC`: the crates that depend on SPEC (`name@version`), as
/// `(depth, name)`.
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

/// `cargo tree -e normal` as `(name, version)`, one entry per line.
fn normal_tree_versions() -> Vec<(String, String)> {
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
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_string();
            let version = words.next()?.trim_start_matches('v').to_string();
            Some((name, version))
        })
        .collect()
}

fn normal_tree() -> Vec<String> {
    normal_tree_versions().into_iter().map(|(name, _)| name).collect()
}

/// The `name@version` of every version of `krate` in the normal tree. (The lock file may hold
/// other versions on other paths, e.g. a build script's dependencies for another target, which
/// makes a bare `cargo tree -i NAME` ambiguous; each version found here is checked.)
fn specs(krate: &str) -> Vec<String> {
    let mut v: Vec<String> =
        normal_tree_versions().into_iter().filter(|(n, _)| n == krate).map(|(n, ver)| format!("{n}@{ver}")).collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn no_io_crate_among_the_normal_dependencies() {
    let tree = normal_tree();
    assert!(tree.iter().any(|c| c == "wgpmd-proto"), "the tree names the crate itself: {tree:?}");
    assert!(tree.iter().any(|c| c == "aws-lc-sys"), "the tree lists transitive dependencies: {tree:?}");
    let found: Vec<&String> = tree.iter().filter(|c| FORBIDDEN.contains(&c.as_str())).collect();
    assert!(found.is_empty(), "I/O crates in wgpmd-proto's normal dependencies: {found:?}");
}

#[test]
fn libc_and_getrandom_come_only_through_ring() {
    // the version parsing works: ring is in the tree, once
    let ring = specs("ring");
    assert!(ring.len() == 1 && ring[0].starts_with("ring@0."), "{ring:?}");
    for spec in specs("getrandom") {
        let who = inverted(&spec);
        let parents: Vec<&str> = who.iter().filter(|(d, _)| *d == 1).map(|(_, n)| n.as_str()).collect();
        assert_eq!(parents, ["ring"], "{spec} is depended on by {parents:?}; only ring may: {who:?}");
    }
    for spec in specs("libc") {
        let who = inverted(&spec);
        let parents: Vec<&str> = who.iter().filter(|(d, _)| *d == 1).map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            parents,
            ["getrandom"],
            "{spec} is depended on by {parents:?}; only getrandom (under ring) may: {who:?}"
        );
    }
}
