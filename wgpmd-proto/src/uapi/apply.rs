//! Applying a validated `set` request to a [`Device`], with wireguard-go's semantics
//! (`device/uapi.go`: `handleDeviceLine`, `handlePublicKeyLine`, `handlePeerLine`,
//! `ipcSetPeer.handlePostConfig`):
//! - interface keys first: a private key equal to the current one changes nothing (sessions
//!   survive a `wg setconf` of the same file, as in the kernel); `replace_peers` removes every
//!   peer;
//! - a peer section names a peer by public key; our own public key makes the section a no-op;
//!   an unknown key creates the peer unless `update_only` comes; `remove` deletes it and makes
//!   the rest of the section a no-op;
//! - `replace_allowed_ips` clears the peer's prefixes, `allowed_ip` adds one (moving it from any
//!   other peer);
//! - turning persistent keepalive on (from 0) sends a keepalive when the section ends.

use rand_core::{CryptoRng, RngCore};

use super::{InterfaceState, PeerOp, PeerSet, SetRequest, UapiError};
use crate::config::InterfaceConfig;
use crate::crypto::{PrivateKey, Secret};
use crate::device::{Device, Output, PeerId};
use crate::messages::KEY_LEN;
use crate::time::Timestamp;

/// Apply a `set` request. Keepalives and timer wake-ups it causes go to `out`.
///
/// The only error after validation is the peer limit, which is checked before anything changes
/// (conservatively: a request that both removes and adds peers at the limit is refused).
pub fn apply_set<R: RngCore + CryptoRng>(
    dev: &mut Device,
    iface: &mut InterfaceState,
    req: &SetRequest,
    rng: &mut R,
    now: Timestamp,
    out: &mut Output,
) -> Result<(), UapiError> {
    check_capacity(dev, req)?;
    if let Some(k) = &req.private_key {
        set_private_key(dev, k);
    }
    if let Some(p) = req.listen_port {
        tracing::debug!("UAPI: Updating listen port");
        iface.listen_port = p;
    }
    if let Some(m) = req.fwmark {
        tracing::debug!("UAPI: Updating fwmark");
        iface.fwmark = m;
    }
    if req.replace_peers {
        tracing::debug!("UAPI: Removing all peers");
        dev.clear_peers();
    }
    let own = dev.public_key();
    for p in &req.peers {
        apply_peer(dev, p, own.as_ref(), rng, now, out)?;
    }
    Ok(())
}

/// Apply a configuration file as `wg setconf` does (what the daemon's `--config` does at
/// startup): every setting it names or omits, and `replace_peers`. See
/// [`InterfaceConfig::to_set_request`].
pub fn apply_config<R: RngCore + CryptoRng>(
    dev: &mut Device,
    iface: &mut InterfaceState,
    cfg: &InterfaceConfig,
    rng: &mut R,
    now: Timestamp,
    out: &mut Output,
) -> Result<(), UapiError> {
    apply_set(dev, iface, &cfg.to_set_request(), rng, now, out)
}

/// Refuse a request that could take the device past its peer limit: peers it keeps plus every
/// section naming a key the device does not have (all sections, after `replace_peers`).
fn check_capacity(dev: &Device, req: &SetRequest) -> Result<(), UapiError> {
    let kept = if req.replace_peers { 0 } else { dev.peer_count() };
    let new = req.peers.iter().filter(|p| req.replace_peers || dev.peer_by_key(&p.public_key).is_none()).count();
    let max = dev.max_peers();
    if kept.saturating_add(new) > max {
        return Err(UapiError::invalid(format!(
            "failed to create new peer: the device has {kept} peers and the request names {new} more (limit {max})"
        )));
    }
    Ok(())
}

/// Set or remove the private key, unless it is the one already in use.
fn set_private_key(dev: &mut Device, k: &Secret) {
    let new = (!k.is_zero()).then(|| PrivateKey::from_bytes(k.0));
    // Equal public keys mean equal (clamped) private keys; public keys compare in the clear.
    let unchanged = new.as_ref().map(PrivateKey::public_key) == dev.public_key();
    if !unchanged {
        tracing::debug!("UAPI: Updating private key");
        dev.set_private_key(new);
    }
}

/// What a peer section operates on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Nothing: our own key, `remove`d, or `update_only` on a missing peer.
    Dummy,
    /// A peer to be created by the first key that needs it (or at the end of the section).
    Missing,
    /// An existing peer, and whether this section created it.
    Peer(PeerId, bool),
}

fn apply_peer<R: RngCore + CryptoRng>(
    dev: &mut Device,
    ps: &PeerSet,
    own: Option<&[u8; KEY_LEN]>,
    rng: &mut R,
    now: Timestamp,
    out: &mut Output,
) -> Result<(), UapiError> {
    let mut target = if own == Some(&ps.public_key) {
        Target::Dummy
    } else {
        match dev.peer_by_key(&ps.public_key) {
            Some(id) => Target::Peer(id, false),
            None => Target::Missing,
        }
    };
    let mut keepalive_on = false;
    for op in &ps.ops {
        match op {
            PeerOp::UpdateOnly => match target {
                Target::Missing => target = Target::Dummy,
                Target::Peer(id, true) => {
                    let _ = dev.remove_peer(id);
                    target = Target::Dummy;
                }
                _ => {}
            },
            PeerOp::Remove => {
                if let Target::Peer(id, _) = target {
                    tracing::debug!("{} - UAPI: Removing", name(dev, id));
                    let _ = dev.remove_peer(id);
                }
                target = Target::Dummy;
            }
            _ => {
                let Some(id) = ensure_peer(dev, &mut target, &ps.public_key, rng)? else { continue };
                apply_peer_op(dev, id, op, now, out, &mut keepalive_on)?;
            }
        }
    }
    let id = ensure_peer(dev, &mut target, &ps.public_key, rng)?;
    if let (Some(id), true) = (id, keepalive_on) {
        // No session yet: this asks for a handshake (Event::HandshakeWanted) instead.
        let _ = dev.send_keepalive(now, id, out);
    }
    Ok(())
}

/// The peer a key applies to, creating it if the section is still waiting to.
fn ensure_peer<R: RngCore + CryptoRng>(
    dev: &mut Device,
    target: &mut Target,
    key: &[u8; KEY_LEN],
    rng: &mut R,
) -> Result<Option<PeerId>, UapiError> {
    match *target {
        Target::Dummy => Ok(None),
        Target::Peer(id, _) => Ok(Some(id)),
        Target::Missing => {
            let id =
                dev.add_peer(rng, *key).map_err(|e| UapiError::invalid(format!("failed to create new peer: {e}")))?;
            tracing::debug!("{} - UAPI: Created", name(dev, id));
            *target = Target::Peer(id, true);
            Ok(Some(id))
        }
    }
}

fn apply_peer_op(
    dev: &mut Device,
    id: PeerId,
    op: &PeerOp,
    now: Timestamp,
    out: &mut Output,
    keepalive_on: &mut bool,
) -> Result<(), UapiError> {
    match op {
        PeerOp::PresharedKey(k) => {
            tracing::debug!("{} - UAPI: Updating preshared key", name(dev, id));
            dev.set_preshared_key(id, k.clone()).map_err(|e| fail(dev, id, e))?;
        }
        PeerOp::Endpoint(e) => {
            tracing::debug!("{} - UAPI: Updating endpoint", name(dev, id));
            dev.set_endpoint(id, *e).map_err(|e| fail(dev, id, e))?;
        }
        PeerOp::PersistentKeepalive(secs) => {
            tracing::debug!("{} - UAPI: Updating persistent keepalive interval", name(dev, id));
            *keepalive_on = dev.set_persistent_keepalive(id, *secs, now, out).map_err(|e| fail(dev, id, e))?;
        }
        PeerOp::ReplaceAllowedIps => {
            tracing::debug!("{} - UAPI: Removing all allowedips", name(dev, id));
            dev.clear_allowed_ips(id);
        }
        PeerOp::AllowedIp(a, c) => {
            tracing::debug!("{} - UAPI: Adding allowedip", name(dev, id));
            dev.add_allowed_ip(id, *a, *c).map_err(|e| fail(dev, id, e))?;
        }
        PeerOp::ProtocolVersion | PeerOp::UpdateOnly | PeerOp::Remove => {}
    }
    Ok(())
}

fn name(dev: &Device, id: PeerId) -> String {
    dev.peer(id).map(|p| p.name().to_string()).unwrap_or_else(|| format!("peer #{id}"))
}

fn fail(dev: &Device, id: PeerId, e: crate::device::ConfigError) -> UapiError {
    UapiError::invalid(format!("{} - {e}", name(dev, id)))
}
