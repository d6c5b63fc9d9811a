//! Fuzz body for the wg.conf(5) parser ([`InterfaceConfig::parse_with_resolver`], what the
//! daemon's `--config` reads), with a resolver that answers the host name `resolves` and refuses
//! every other name.
//!
//! Checks, for a file that parses: `to_wg_conf` (what `wg showconf` prints) parses again and is a
//! fixed point; the `set` request `wg setconf` would send encodes and parses back to itself; and
//! applied to a fresh device it gives that device the private key and one peer per `[Peer]`
//! (but the device's own key), within the peer limit.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::device::HashDrbg;
use crate::config::{ConfigError, InterfaceConfig};
use crate::device::{Device, Output};
use crate::time::Timestamp;
use crate::uapi::{apply_config, parse_request, InterfaceState, Request};

/// The resolver of the body: `resolves` has an address, nothing else does.
pub fn conf_resolver(host: &str, port: u16) -> Result<SocketAddr, String> {
    if host == "resolves" {
        Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), port))
    } else {
        Err("no such host".to_string())
    }
}

/// One file through the parser (see the module doc). Input that is not UTF-8 is read lossily.
pub fn wg_conf(data: &[u8]) -> Result<usize, ConfigError> {
    let text = String::from_utf8_lossy(data);
    let cfg = InterfaceConfig::parse_with_resolver(&text, conf_resolver)?;
    let shown = cfg.to_wg_conf();
    let again = InterfaceConfig::parse_with_resolver(&shown, conf_resolver)
        .unwrap_or_else(|e| panic!("showconf output does not parse: {e}: {shown:?}"));
    assert_eq!(again.to_wg_conf(), shown, "showconf is not a fixed point");
    assert_eq!(again.peers.len(), cfg.peers.len());
    let req = cfg.to_set_request();
    let encoded = req.encode();
    assert_eq!(parse_request(encoded.as_bytes()), Ok(Request::Set(req)), "setconf request: {encoded:?}");

    let mut rng = HashDrbg::new(3);
    let mut d = Device::new(&mut rng, 1_700_000_000_000_000_000);
    let mut iface = InterfaceState::default();
    let mut out = Output::with_capacity(4);
    let applied = apply_config(&mut d, &mut iface, &cfg, &mut rng, Timestamp::from_secs(1), &mut out);
    let own = cfg.private_key.filter(|k| *k != [0; 32]).map(|k| crate::crypto::PrivateKey::from_bytes(k).public_key());
    let expected = cfg.peers.iter().filter(|p| Some(p.public_key) != own).count();
    match applied {
        Ok(()) => {
            assert_eq!(d.peer_count(), expected);
            assert_eq!(d.public_key(), own);
            assert_eq!(iface.listen_port, cfg.listen_port.unwrap_or(0));
        }
        Err(e) => assert!(expected > d.max_peers(), "{e} with {expected} peers"),
    }
    Ok(expected)
}
