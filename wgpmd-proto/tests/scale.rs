//! Carrier scale: 2^22 peers (the default limit) on one device, each with one allowed IP, added
//! through the configuration calls with no Diffie-Hellman; then lookups by public key and by
//! allowed IP for every peer, a key change, removal of a sixteenth of the peers, and the limit.
//!
//! `WGPMD_SCALE_PEERS=N` runs it with N peers instead (the release build takes a few seconds and
//! about 2.5 GB at 2^22). `examples/peer_memory.rs` reports memory and rates at this size.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{ConfigError, Device, PeerId};
use wgpmd_proto::messages::MAX_PEERS_PER_DEVICE;

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// The `i`-th peer's public key: 32 bytes derived from `i` by SplitMix64 (any 32 bytes are a
/// valid peer key until a handshake, and adding a peer does none).
fn key(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    let mut x = u64::from(i);
    for chunk in k.chunks_exact_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    k
}

#[test]
fn four_million_peers_on_one_device() {
    let n: u32 = std::env::var("WGPMD_SCALE_PEERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1 << 22);
    const { assert!(MAX_PEERS_PER_DEVICE >= 1 << 22) };
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut dev = Device::new(&mut rng, 0);
    assert_eq!(dev.max_peers(), MAX_PEERS_PER_DEVICE);
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    dev.set_max_peers(n as usize);

    let ids: Vec<PeerId> = (0..n)
        .map(|i| {
            let id = dev.add_peer(&mut rng, key(i)).unwrap();
            dev.add_allowed_ip(id, ip(i), 32).unwrap();
            id
        })
        .collect();
    assert_eq!(dev.peer_count(), n as usize);
    assert_eq!(dev.add_peer(&mut rng, key(n)), Err(ConfigError::TooManyPeers(n as usize)));
    assert_eq!(dev.add_peer(&mut rng, key(7)), Ok(ids[7]), "an existing key is not a new peer");

    for i in 0..n {
        let id = ids[i as usize];
        assert_eq!(dev.peer_by_key(&key(i)), Some(id), "peer {i} by key");
        assert_eq!(dev.route(ip(i)), Some(id), "peer {i} by allowed IP");
    }
    assert_eq!(dev.peer_by_key(&key(n + 1)), None);
    assert_eq!(dev.route(ip(n)), None);

    // A key change with every peer present: constant time, nothing lost.
    dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
    assert_eq!(dev.peer_count(), n as usize);

    // Remove every sixteenth peer; the others stay reachable; the slots are reused.
    for i in (0..n).step_by(16) {
        dev.remove_peer(ids[i as usize]).unwrap();
    }
    let removed = n.div_ceil(16);
    assert_eq!(dev.peer_count(), (n - removed) as usize);
    for i in 0..n {
        let (want_key, want_ip) =
            if i % 16 == 0 { (None, None) } else { (Some(ids[i as usize]), Some(ids[i as usize])) };
        assert_eq!(dev.peer_by_key(&key(i)), want_key, "peer {i} by key after removals");
        assert_eq!(dev.route(ip(i)), want_ip, "peer {i} by allowed IP after removals");
    }
    let again = dev.add_peer(&mut rng, key(0)).unwrap();
    assert!(ids.iter().step_by(16).any(|&id| id == again), "a freed slot is reused");
    dev.add_allowed_ip(again, ip(0), 32).unwrap();
    assert_eq!(dev.route(ip(0)), Some(again));
}
