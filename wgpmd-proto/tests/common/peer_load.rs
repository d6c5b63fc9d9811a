//! Loading many peers into a [`Device`] the way the UAPI `set` does (`add_peer`, then
//! `add_allowed_ip` for each), and establishing sessions for a sample of them through real
//! handshakes with a second device. Shared by `tests/peer_memory.rs` (the CI bound) and
//! `examples/peer_memory.rs` (the report), which include it with `#[path]`.

#![allow(dead_code)] // each includer uses a part

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{Device, HandshakeOutcome, Output, PeerId};
use wgpmd_proto::time::Timestamp;

pub const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
pub const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);
/// Wall time at the devices' epoch (only the TAI64N timestamps use it).
const WALL: u64 = 1_700_000_000_000_000_000;
/// Virtual time between two handshakes: past the 20 ms initiation flood limit and the
/// 16.8 ms TAI64N granularity, so every initiation is newer than the last.
const STEP: Duration = Duration::from_millis(40);

/// The `i`-th peer's single allowed IP: 10.0.0.0 + i, a /32 (distinct for i < 2^24).
pub fn allowed_ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Our device, with its own key, and the RNG everything draws from.
pub struct Hub {
    pub dev: Device,
    pub rng: ChaCha20Rng,
    pub now: Timestamp,
    out: Output,
}

impl Hub {
    pub fn new(seed: u64) -> Hub {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut dev = Device::new(&mut rng, WALL);
        dev.set_private_key(Some(PrivateKey::generate(&mut rng)));
        Hub { dev, rng, now: Timestamp::from_secs(1), out: Output::with_capacity(64) }
    }

    /// Add peers `first..first + n` with random public keys (32 random bytes: a peer key is
    /// never checked for being on the curve until a handshake, and with lazy DH there is
    /// none), one /32 allowed IP each.
    pub fn add_random_peers(&mut self, first: u32, n: u32) -> Vec<PeerId> {
        (first..first + n)
            .map(|i| {
                let mut key = [0u8; 32];
                self.rng.fill_bytes(&mut key);
                self.add_peer(i, key)
            })
            .collect()
    }

    /// Add the `i`-th peer with `key`, as `apply_set` does for `public_key=` + `allowed_ip=`.
    pub fn add_peer(&mut self, i: u32, key: [u8; 32]) -> PeerId {
        let id = self.dev.add_peer(&mut self.rng, key).expect("under the peer limit");
        self.dev.add_allowed_ip(id, allowed_ip(i), 32).expect("valid prefix");
        id
    }
}

/// The other ends of a sample of peers: real key pairs, added to the hub as peers.
pub struct Remotes {
    keys: Vec<PrivateKey>,
    /// The hub's id of each remote, in key order.
    pub ids: Vec<PeerId>,
}

impl Remotes {
    /// `n` remote key pairs (not yet known to the hub).
    pub fn new(hub: &mut Hub, n: usize) -> Remotes {
        Remotes { keys: (0..n).map(|_| PrivateKey::generate(&mut hub.rng)).collect(), ids: Vec::new() }
    }

    /// Add every remote to the hub as a peer, with allowed IPs from `first` on.
    pub fn add_to_hub(&mut self, hub: &mut Hub, first: u32) {
        self.ids = self.keys.iter().zip(first..).map(|(k, i)| hub.add_peer(i, k.public_key())).collect();
    }

    /// A device that plays each remote in turn (its private key changes, one X25519 each).
    /// Create and drop it inside one measured region, so it adds nothing to the count.
    pub fn player(&self, hub: &mut Hub) -> Player {
        Player { dev: Device::new(&mut hub.rng, WALL), out: Output::with_capacity(64) }
    }

    /// The hub initiates to remote `j` and consumes its response: the hub then has a current
    /// keypair for it (previous, if it had one).
    pub fn hub_initiates(&self, player: &mut Player, hub: &mut Hub, j: usize) {
        let id = self.ids[j];
        player.become_remote(hub, &self.keys[j]);
        hub.now = hub.now + STEP;
        let now = hub.now;
        hub.dev.set_endpoint(id, B_ADDR).expect("peer exists");
        hub.out.clear();
        hub.dev.initiate(now, &mut hub.rng, id, &mut hub.out).expect("initiation sent");
        let init = hub.out.transmits.pop().expect("initiation");
        player.out.clear();
        let r = player.dev.receive_handshake(now, &mut hub.rng, A_ADDR, init.payload(), false, &mut player.out);
        assert!(matches!(r, Ok(HandshakeOutcome::Responded(_))), "remote answers: {r:?}");
        let resp = player.out.transmits.pop().expect("response");
        hub.out.clear();
        let r = hub.dev.receive_handshake(now, &mut hub.rng, B_ADDR, resp.payload(), false, &mut hub.out);
        assert_eq!(r, Ok(HandshakeOutcome::Completed(id)));
        hub.out.clear();
    }
}

/// The device playing the remotes.
pub struct Player {
    dev: Device,
    out: Output,
}

impl Player {
    /// Become the remote with `key`, with the hub as its only peer (fresh, so its own rate
    /// limits and replay state refuse nothing).
    fn become_remote(&mut self, hub: &mut Hub, key: &PrivateKey) -> PeerId {
        self.dev.set_private_key(Some(key.clone()));
        self.dev.clear_peers();
        let hub_key = hub.dev.public_key().expect("hub has a key");
        let id = self.dev.add_peer(&mut hub.rng, hub_key).expect("one peer");
        self.dev.set_endpoint(id, A_ADDR).expect("peer exists");
        id
    }
}
