//! Least privilege after setup: the capabilities each port type still needs once its ports are
//! open, dropping the rest, and `PR_SET_NO_NEW_PRIVS` (docs/OPERATIONS.md, "Privileges").
//!
//! Linux keeps capabilities per thread: [`drop_after_setup`] runs on the main thread before the
//! daemon starts any thread of its own, so every worker, the UAPI and the stats threads inherit
//! the reduced sets. DPDK's EAL starts its threads during EAL initialisation, before the ports
//! exist; a `dpdk:` WAN therefore keeps more (see [`needed`]).

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities a daemon with these ports keeps after setup (the WAN and inner port
/// strings' backends):
/// - `af_packet:`, `tun:`, `mem:`: none. Sockets and queues are open; link state is read with
///   `SIOCGIFFLAGS`, which needs none; the UAPI and stats sockets live in root-owned
///   directories that the process (uid 0) owns.
/// - `tap:` (the exception path), `vhost-user:`: none. The vhost-user thread that accepts
///   frontends starts when the first queue is taken, after the drop, so it and its connection
///   threads have the reduced sets too.
/// - `af_xdp:`: `CAP_BPF`, to update the XDP program's maps (before Linux 6.5 with
///   `kernel.unprivileged_bpf_disabled` set, every `bpf(2)` call needs it).
/// - `vfio:`: `CAP_IPC_LOCK` (its DMA memory is locked hugepage memory; kept so that locked
///   memory beyond `RLIMIT_MEMLOCK` stays allowed).
/// - `dpdk:`: `CAP_IPC_LOCK`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_SYS_ADMIN`, `CAP_SYS_RAWIO`:
///   DPDK's poll-mode drivers and EAL's threads (started before the ports open, with all of
///   the process's capabilities) may use them after initialisation; not narrowed.
pub fn needed(ports: &[&str]) -> CapsHashSet {
    let mut keep = CapsHashSet::new();
    for p in ports {
        match p.split_once(':').map_or(*p, |(b, _)| b) {
            "vfio" => {
                keep.insert(Capability::CAP_IPC_LOCK);
            }
            // The steering maps of the XDP program are written after setup (listen-port
            // changes, each neighbour resolution wgpmd starts); before Linux 6.5, with
            // `kernel.unprivileged_bpf_disabled` set, that needs CAP_BPF even on an open map.
            "af_xdp" => {
                keep.insert(Capability::CAP_BPF);
            }
            "dpdk" => keep.extend([
                Capability::CAP_IPC_LOCK,
                Capability::CAP_NET_ADMIN,
                Capability::CAP_NET_RAW,
                Capability::CAP_SYS_ADMIN,
                Capability::CAP_SYS_RAWIO,
            ]),
            _ => {}
        }
    }
    keep
}

/// Keep only `keep` (of what the thread has) in the permitted, effective and bounding sets,
/// clear the inheritable and ambient sets, and set `PR_SET_NO_NEW_PRIVS` (no exec can gain
/// privileges again). Call on the main thread before starting others. Returns what is kept.
pub fn drop_after_setup(keep: &CapsHashSet) -> Result<CapsHashSet, String> {
    let err = |what: &str, e: caps::errors::CapsError| format!("dropping capabilities ({what}): {e}");
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("read", e))?;
    let kept: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set needs CAP_SETPCAP, which goes with the permitted set: first.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for c in caps::read(None, CapSet::Bounding).map_err(|e| err("read bounding", e))? {
            if !kept.contains(&c) {
                caps::drop(None, CapSet::Bounding, c).map_err(|e| err("bounding", e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("inheritable", e))?;
    caps::set(None, CapSet::Effective, &kept).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| err("permitted", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))?;
    Ok(kept)
}

/// Names for a log line: `CAP_IPC_LOCK, CAP_NET_RAW` or `none`.
pub fn describe(set: &CapsHashSet) -> String {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// wg(8)'s warning for a configuration file others can read that holds a secret: the text if
/// the file's mode gives the world any access and it has a `PrivateKey` or `PresharedKey`.
pub fn world_accessible_warning(path: &std::path::Path, mode: u32, text: &str) -> Option<String> {
    let secret = text.lines().any(|l| {
        let k = l.split('=').next().unwrap_or("").trim();
        k.eq_ignore_ascii_case("PrivateKey") || k.eq_ignore_ascii_case("PresharedKey")
    });
    (mode & 0o007 != 0 && secret).then(|| {
        format!(
            "Warning: `{}' is world accessible (mode {:o}) and holds a private or preshared key",
            path.display(),
            mode & 0o7777
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_need_what_the_table_says() {
        assert!(needed(&["af_packet:eth1", "tun:wg0"]).is_empty());
        assert!(needed(&["mem:a", "mem:b"]).is_empty());
        assert_eq!(needed(&["vfio:0000:00:02.0", "tun:wg0"]), [Capability::CAP_IPC_LOCK].into_iter().collect());
        assert_eq!(
            needed(&["af_xdp:eth1", "vhost-user:/run/wgpmd/vm0.sock"]),
            [Capability::CAP_BPF].into_iter().collect()
        );
        assert!(needed(&["af_packet:eth1", "tap:wgx0"]).is_empty());
        assert_eq!(needed(&["dpdk:0", "tun:wg0"]).len(), 5);
    }

    #[test]
    fn world_readable_key_files_are_named() {
        let p = std::path::Path::new("/etc/wgpmd/wg0.conf");
        let key = "[Interface]\nPrivateKey = x\n";
        let w = world_accessible_warning(p, 0o100644, key).unwrap();
        assert!(w.contains("`/etc/wgpmd/wg0.conf' is world accessible (mode 644)"), "{w}");
        assert!(world_accessible_warning(p, 0o100640, key).is_none(), "group only: wg(8) says nothing");
        assert!(world_accessible_warning(p, 0o100600, key).is_none());
        assert!(world_accessible_warning(p, 0o100604, "[Peer]\nPresharedKey=y\n").is_some());
        assert!(world_accessible_warning(p, 0o100644, "[Peer]\nPublicKey = z\n").is_none(), "no secret");
    }

    #[test]
    fn describe_sorts_names() {
        assert_eq!(describe(&CapsHashSet::new()), "none");
        let s: CapsHashSet = [Capability::CAP_NET_RAW, Capability::CAP_IPC_LOCK].into_iter().collect();
        assert_eq!(describe(&s), "CAP_IPC_LOCK, CAP_NET_RAW");
    }
}
