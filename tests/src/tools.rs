//! The external programs the e2e tests drive, and where to find them.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Binaries looked up on PATH, with the Debian package that provides each.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("wireguard-go", "wireguard-go"),
    ("wg", "wireguard-tools"),
    ("iperf3", "iperf3"),
    ("ping", "iputils-ping"),
    ("sysctl", "procps"),
    ("tcpdump", "tcpdump"),
];

/// The boringtun-cli binary: `$WGPMD_E2E_BORINGTUN` if set, else `<repo>/.tools/bin/boringtun-cli`
/// (where scripts/test.sh installs version 0.7.1), else `boringtun-cli` on PATH.
pub fn boringtun_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("WGPMD_E2E_BORINGTUN") {
        return PathBuf::from(p);
    }
    let repo_tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/boringtun-cli");
    if repo_tools.is_file() {
        return repo_tools;
    }
    find_on_path("boringtun-cli").unwrap_or_else(|| PathBuf::from("boringtun-cli"))
}

fn find_on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Fails (the tests do not skip) unless we run as root and every tool is present, naming what
/// is missing and how to get it.
pub fn require_tools() -> Result<()> {
    let mut missing = Vec::new();
    for (bin, pkg) in TOOLS {
        if find_on_path(bin).is_none() {
            missing.push(format!("`{bin}` (Debian package {pkg})"));
        }
    }
    let bt = boringtun_cli();
    if !is_executable(&bt) && find_on_path(&bt.to_string_lossy()).is_none() {
        missing.push(format!(
            "`boringtun-cli` 0.7.1 (looked for $WGPMD_E2E_BORINGTUN, {}, PATH; \
             `cargo install boringtun-cli --version 0.7.1 --locked --root .tools`)",
            bt.display()
        ));
    }
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing: {}", missing.join(", ")));
    }
    if !nix::unistd::geteuid().is_root() {
        problems
            .push("not running as root: the e2e tests create network namespaces, veths and TUN devices".to_string());
    }
    if !Path::new("/dev/net/tun").exists() {
        problems.push("/dev/net/tun does not exist: wireguard-go and boringtun need TUN".into());
    }
    if !problems.is_empty() {
        bail!(
            "the e2e tests (crate wgpmd-e2e) cannot run: {}.\nscripts/test.sh installs the tools \
             (apt packages and boringtun-cli into .tools/); see docs/TESTING.md",
            problems.join("; ")
        );
    }
    Ok(())
}
