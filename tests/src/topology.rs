//! The standard e2e topology: a concentrator namespace and N peer namespaces on one LAN.
//!
//! ```text
//!                      namespace "lan": bridge br0
//!          +---------------+------+------+-----------+
//!          |               |             |           |
//!   concentrator ns     peer0 ns      peer1 ns  ...  peerN-1 ns
//!   outer 10.99.0.1     10.99.0.10    10.99.0.11     10.99.0.(10+i)
//!   inner 10.100.0.1    10.100.0.10   10.100.0.11    10.100.0.(10+i)
//! ```
//! Each site has one veth end (`outer_if`) with its outer address /24; the other end is a port of
//! the bridge. The concentrator (wgpmd, or a stand-in) listens on 51820; it gives each peer its
//! own inner /32 as AllowedIPs; each peer routes the whole inner /24 to the concentrator.

use crate::keys::KeyPair;
use crate::netns::{Netns, VethPair};
use crate::wg::{DeviceConfig, PeerConfig};
use anyhow::{bail, Result};
use std::net::{Ipv4Addr, SocketAddr};

/// Outer (underlay) network of the LAN.
pub const OUTER_NET: &str = "10.99.0.0/24";
/// Inner (tunnel) network.
pub const INNER_NET: &str = "10.100.0.0/24";
/// UDP port of the concentrator and of every peer.
pub const CONCENTRATOR_PORT: u16 = 51820;

/// One namespace of the topology and the WireGuard identity meant for it.
pub struct Site {
    pub ns: Netns,
    /// The veth end inside `ns` (for a port backend such as `af_packet:<outer_if>`).
    pub outer_if: String,
    pub outer_ip: Ipv4Addr,
    pub inner_ip: Ipv4Addr,
    pub key: KeyPair,
    pub port: u16,
}

impl Site {
    /// `outer_ip:port`.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::from((self.outer_ip, self.port))
    }
}

/// See the module documentation. Dropping it removes every namespace and link (after the
/// devices and processes started in them, which hold their own handles, are dropped).
pub struct Topology {
    pub concentrator: Site,
    pub peers: Vec<Site>,
    /// The namespace holding the bridge.
    pub lan: Netns,
    pub bridge: String,
    links: Vec<VethPair>,
}

impl Topology {
    /// Builds the LAN with a concentrator and `n_peers` peers (at most 200), fresh keys for all.
    pub fn new(n_peers: usize) -> Result<Topology> {
        if n_peers > 200 {
            bail!("Topology supports at most 200 peers (10.99.0.10 ..= 10.99.0.209)");
        }
        let lan = Netns::new("lan")?;
        let bridge = "br0".to_string();
        lan.ip(&["link", "add", &bridge, "type", "bridge"])?;
        lan.ip(&["link", "set", &bridge, "up"])?;
        let mut links = Vec::new();
        let mut site = |label: &str, host: u8| -> Result<Site> {
            let ns = Netns::new(label)?;
            let outer_ip = Ipv4Addr::new(10, 99, 0, host);
            let link = VethPair::new(&lan, None, &ns, Some(&format!("{outer_ip}/24")))?;
            link.attach_a_to_bridge(&bridge)?;
            let s = Site {
                outer_if: link.b_if.clone(),
                ns,
                outer_ip,
                inner_ip: Ipv4Addr::new(10, 100, 0, host),
                key: KeyPair::generate(),
                port: CONCENTRATOR_PORT,
            };
            links.push(link);
            Ok(s)
        };
        let concentrator = site("conc", 1)?;
        let peers = (0..n_peers).map(|i| site(&format!("peer{i}"), 10 + i as u8)).collect::<Result<Vec<_>>>()?;
        Ok(Topology { concentrator, peers, lan, bridge, links })
    }

    /// Configuration for a WireGuard stand-in on the concentrator: inner 10.100.0.1/24, one
    /// `[Peer]` per peer with its inner /32 and no endpoint (learnt from the peer's handshake,
    /// as a concentrator does: the peers initiate).
    pub fn concentrator_device(&self) -> DeviceConfig {
        let mut cfg = DeviceConfig::new(
            self.concentrator.key.clone(),
            Some(self.concentrator.port),
            Some(&format!("{}/24", self.concentrator.inner_ip)),
        );
        for p in &self.peers {
            cfg = cfg.peer(self.concentrator_peer_entry(p));
        }
        cfg
    }

    /// The `[Peer]` entry the concentrator has for `peer`.
    pub fn concentrator_peer_entry(&self, peer: &Site) -> PeerConfig {
        PeerConfig::new(&peer.key.public_b64(), &[&format!("{}/32", peer.inner_ip)])
    }

    /// Configuration for peer `i`: inner address /24, the concentrator as its only peer
    /// (AllowedIPs = the inner /24, endpoint = the concentrator's outer address).
    pub fn peer_device(&self, i: usize) -> DeviceConfig {
        let p = &self.peers[i];
        DeviceConfig::new(p.key.clone(), Some(p.port), Some(&format!("{}/24", p.inner_ip))).peer(
            PeerConfig::new(&self.concentrator.key.public_b64(), &[INNER_NET]).endpoint(self.concentrator.endpoint()),
        )
    }

    /// Lets the concentrator namespace route between its peers (peer-to-peer through the
    /// concentrator's tunnel interface).
    pub fn enable_forwarding(&self) -> Result<()> {
        self.concentrator.ns.sysctl("net.ipv4.ip_forward", "1")
    }

    /// The veth links (LAN side first).
    pub fn links(&self) -> &[VethPair] {
        &self.links
    }
}
