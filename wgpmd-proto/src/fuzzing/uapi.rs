//! Fuzz body for the UAPI text protocol: one request through [`parse_request`] and, for a `set`,
//! [`apply_set`] against a device that has a private key, three peers (one with an established
//! session) and a peer limit of five; for a `get`, [`format_get`].
//!
//! Checks (a panic is a finding):
//! - a `set` that parses encodes back ([`SetRequest::encode`]) to the same request;
//! - a refused `set` (the peer limit) changes nothing: the device's `get` answer is the same;
//! - after a `set`, the device keeps its peer limit and never lists its own key as a peer, its
//!   `get` answer is well formed and, without the read-only keys, parses as a `set` request;
//! - the established session survives any `set` that keeps its peer and the private key (as in
//!   the kernel and wireguard-go: `wg setconf` of the same file does not drop sessions).
//!
//! The device is built once and rebuilt only after a `set` changed it, so the inputs that do not
//! parse (most of them) cost no key generation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};

use super::device::HashDrbg;
use crate::crypto::PrivateKey;
use crate::device::{Device, Output, PeerId};
use crate::time::Timestamp;
use crate::uapi::{apply_set, format_get, parse_request, InterfaceState, Request, UapiError, IPC_ERROR_INVALID};

/// Private keys of the device (0) and of its peers (1 to 3), and of a key the fuzzer may add (4),
/// as bytes; their public keys are in the dictionary (`fuzz/dict/uapi_request.dict`).
pub const UAPI_KEYS: [[u8; 32]; 5] = [[0x11; 32], [0x22; 32], [0x33; 32], [0x44; 32], [0x55; 32]];
/// The device's peer limit.
pub const UAPI_MAX_PEERS: usize = 5;

const D_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const P1_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);

struct World {
    d: Device,
    iface: InterfaceState,
    rng: HashDrbg,
    now: Timestamp,
    out: Output,
    /// The peer with the session.
    live: PeerId,
    dirty: bool,
}

fn world() -> &'static Mutex<World> {
    static W: OnceLock<Mutex<World>> = OnceLock::new();
    W.get_or_init(|| Mutex::new(World::new()))
}

fn unix(t: Timestamp) -> (u64, u32) {
    let n = t.as_nanos();
    (1_700_000_000 + n / 1_000_000_000, (n % 1_000_000_000) as u32)
}

impl World {
    fn new() -> World {
        let mut rng = HashDrbg::new(2);
        let now = Timestamp::from_secs(1);
        let mut d = Device::new(&mut rng, 1_700_000_000_000_000_000);
        d.set_max_peers(UAPI_MAX_PEERS);
        let kd = PrivateKey::from_bytes(UAPI_KEYS[0]);
        let pd = kd.public_key();
        d.set_private_key(Some(kd));
        let mut ids = Vec::new();
        for (i, k) in UAPI_KEYS[1..4].iter().enumerate() {
            let id = d.add_peer(&mut rng, PrivateKey::from_bytes(*k).public_key()).expect("peer");
            d.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2 + i as u8)), 32).expect("allowed");
            ids.push(id);
        }
        d.set_endpoint(ids[0], P1_ADDR).expect("endpoint");
        // Peer 1 initiates a session with the device.
        let mut p1 = Device::new(&mut rng, 1_700_000_000_000_000_000);
        p1.set_private_key(Some(PrivateKey::from_bytes(UAPI_KEYS[1])));
        let pid = p1.add_peer(&mut rng, pd).expect("peer");
        p1.set_endpoint(pid, D_ADDR).expect("endpoint");
        let mut out = Output::with_capacity(16);
        p1.initiate(now, &mut rng, pid, &mut out).expect("initiate");
        let init = out.transmits.pop().expect("initiation").payload().to_vec();
        d.receive_handshake(now, &mut rng, P1_ADDR, &init, false, &mut out).expect("response");
        let resp = out.transmits.pop().expect("response").payload().to_vec();
        p1.receive_handshake(now, &mut rng, D_ADDR, &resp, false, &mut out).expect("complete");
        // The device confirms with a keepalive from peer 1.
        let mut ka = [0u8; crate::messages::DATA_MIN_LEN];
        let e = p1.encapsulate_to(now, pid, &mut ka, 0, &mut out).expect("keepalive");
        d.decapsulate(now, P1_ADDR, &mut ka[..e.len], &mut out).expect("confirmed");
        out.clear();
        let iface = InterfaceState { listen_port: 51820, fwmark: 0 };
        let w = World { d, iface, rng, now, out, live: ids[0], dirty: false };
        assert!(w.sends(w.live), "the world starts with a session");
        w
    }

    /// The device seals a packet for `id` on a current session.
    fn sends(&self, id: PeerId) -> bool {
        let mut out = Output::with_capacity(4);
        let mut buf = [0u8; crate::messages::DATA_MIN_LEN];
        self.d.encapsulate_to(self.now, id, &mut buf, 0, &mut out).is_ok()
    }

    fn get(&self) -> String {
        format_get(&self.d, &self.iface, unix)
    }
}

/// How far one input got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UapiReached {
    /// The request did not parse.
    Refused(UapiError),
    /// A `get`.
    Get,
    /// A `set` that the device refused (the peer limit).
    SetRefused,
    /// A `set` applied; the device has this many peers.
    Set {
        /// Peers after the request.
        peers: usize,
    },
}

/// The keys of a `get` answer that a `set` request does not take.
const READ_ONLY: [&str; 6] =
    ["last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes", "errno", "protocol_version"];

/// One request through the parser and, if it parses, the device (see the module doc).
pub fn uapi_request(data: &[u8]) -> UapiReached {
    let mut w = world().lock().unwrap_or_else(|e| e.into_inner());
    if w.dirty {
        *w = World::new();
    }
    let w = &mut *w;
    w.now = w.now + core::time::Duration::from_millis(1);
    let req = match parse_request(data) {
        Err(e) => {
            assert!(e.errno == IPC_ERROR_INVALID || e.errno == crate::uapi::IPC_ERROR_PROTOCOL, "{e}");
            return UapiReached::Refused(e);
        }
        Ok(Request::Get) => {
            check_get(&w.get(), &w.d);
            return UapiReached::Get;
        }
        Ok(Request::Set(req)) => req,
    };
    let encoded = req.encode();
    assert_eq!(parse_request(encoded.as_bytes()), Ok(Request::Set(req.clone())), "encode/parse: {encoded:?}");
    let before = w.get();
    let own = w.d.public_key();
    let live_key = *w.d.peer(w.live).expect("live peer").public_key();
    match apply_set(&mut w.d, &mut w.iface, &req, &mut w.rng, w.now, &mut w.out) {
        Err(e) => {
            assert_eq!(e.errno, IPC_ERROR_INVALID, "{e}");
            assert!(e.message.starts_with("failed to create new peer"), "an error other than the peer limit: {e}");
            assert_eq!(w.get(), before, "a refused set changed the device");
            w.out.clear();
            UapiReached::SetRefused
        }
        Ok(()) => {
            w.dirty = true;
            w.out.clear();
            let peers = w.d.peer_count();
            assert!(peers <= UAPI_MAX_PEERS, "{peers} peers past the limit");
            if let Some(k) = w.d.public_key() {
                assert!(w.d.peer_by_key(&k).is_none(), "the device lists its own key as a peer");
            }
            let after = w.get();
            check_get(&after, &w.d);
            let settable: String = after
                .lines()
                .filter(|l| !READ_ONLY.iter().any(|k| l.split('=').next() == Some(k)))
                .map(|l| format!("{l}\n"))
                .collect();
            let again = format!("set=1\n{}\n", settable.trim_end_matches('\n'));
            assert!(
                matches!(parse_request(again.as_bytes()), Ok(Request::Set(_))),
                "the get answer does not parse as a set: {again:?}"
            );
            // The session survives a set that keeps its peer and the private key.
            if w.d.public_key() == own && w.d.peer_by_key(&live_key) == Some(w.live) && w.d.peer(w.live).is_some() {
                let endpoint = w.d.peer(w.live).and_then(|p| p.endpoint());
                if endpoint.is_some() {
                    assert!(w.sends(w.live), "the session was lost by a set that kept its peer and key: {encoded:?}");
                }
            }
            UapiReached::Set { peers }
        }
    }
}

/// A `get` answer: `key=value` lines, one `public_key` per peer, ending with `errno=0` and the
/// empty line.
fn check_get(answer: &str, d: &Device) {
    assert!(answer.ends_with("errno=0\n\n"), "{answer:?}");
    let body = &answer[..answer.len() - 1];
    assert!(body.lines().all(|l| l.split_once('=').is_some_and(|(k, _)| !k.is_empty())), "{answer:?}");
    assert_eq!(body.lines().filter(|l| l.starts_with("public_key=")).count(), d.peer_count(), "{answer:?}");
}
