//! Parsing on the bytes `wg` sends (captured with strace from stock `wg` and from a `set` session),
//! applying with wireguard-go's semantics, and `get` against wireguard-go's answer.

use std::net::{IpAddr, SocketAddr};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::crypto::PrivateKey;
use crate::device::{Device, Event, Output, PeerId};
use crate::time::Timestamp;

const PRIV_A: &str = "08c32941890bd205fc2720cff87c5e0f9e57b42fa9800d85a0a792968d279a58";
const PUB_B: &str = "b9b608da874b848c3710fea258192814e8d57eef4e962fc4d9902a1ef9cd1646";
const PUB_C: &str = "afab5d57d5f2ede5dc2d2d989d2d5ef45e7879ec37be1d97d3b5197b72b20559";

/// What `wg show wga` sent (strace).
const WG_GET: &[u8] = b"get=1\n\n";
/// What `wg set wga peer <B> persistent-keepalive 5 allowed-ips 10.100.0.2/32` sent (strace).
const WG_SET_PEER: &[u8] = b"set=1\npublic_key=b9b608da874b848c3710fea258192814e8d57eef4e962fc4d9902a1ef9cd1646\npersistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=10.100.0.2/32\n\n";
/// The set transcript's requests, in order.
const T_ADD: &[u8] = b"set=1\npublic_key=afab5d57d5f2ede5dc2d2d989d2d5ef45e7879ec37be1d97d3b5197b72b20559\nendpoint=10.99.0.77:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.100.0.77/32\nallowed_ip=fd00::77/128\n\n";
const T_UPDATE_ONLY: &[u8] = b"set=1\npublic_key=afab5d57d5f2ede5dc2d2d989d2d5ef45e7879ec37be1d97d3b5197b72b20559\nupdate_only=true\npersistent_keepalive_interval=0\n\n";
const T_REMOVE: &[u8] =
    b"set=1\npublic_key=afab5d57d5f2ede5dc2d2d989d2d5ef45e7879ec37be1d97d3b5197b72b20559\nremove=true\n\n";
const T_BOGUS: &[u8] = b"set=1\nbogus_key=1\n\n";
const T_BAD_KEY: &[u8] = b"set=1\npublic_key=zz\n\n";
/// wireguard-go's answer to `get=1` in the get transcript (468 bytes).
const GO_GET_ANSWER: &str = "private_key=08c32941890bd205fc2720cff87c5e0f9e57b42fa9800d85a0a792968d279a58\nlisten_port=51820\npublic_key=b9b608da874b848c3710fea258192814e8d57eef4e962fc4d9902a1ef9cd1646\npreshared_key=0000000000000000000000000000000000000000000000000000000000000000\nprotocol_version=1\nendpoint=10.99.0.2:51820\nlast_handshake_time_sec=1795606928\nlast_handshake_time_nsec=900923004\ntx_bytes=740131476\nrx_bytes=634303604\npersistent_keepalive_interval=5\nallowed_ip=10.100.0.2/32\nerrno=0\n\n";

fn key(hex: &str) -> [u8; 32] {
    parse_hex_key(hex).unwrap()
}

fn set_req(bytes: &[u8]) -> SetRequest {
    match parse_request(bytes) {
        Ok(Request::Set(r)) => r,
        other => panic!("{other:?}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn parses_what_wg_sends() {
    assert_eq!(parse_request(WG_GET), Ok(Request::Get));
    assert_eq!(
        set_req(WG_SET_PEER),
        SetRequest {
            peers: vec![PeerSet {
                public_key: key(PUB_B),
                ops: vec![
                    PeerOp::PersistentKeepalive(5),
                    PeerOp::ReplaceAllowedIps,
                    PeerOp::AllowedIp(ip("10.100.0.2"), 32)
                ]
            }],
            ..SetRequest::default()
        }
    );
    assert_eq!(
        set_req(T_ADD).peers,
        vec![PeerSet {
            public_key: key(PUB_C),
            ops: vec![
                PeerOp::Endpoint("10.99.0.77:51820".parse().unwrap()),
                PeerOp::PersistentKeepalive(25),
                PeerOp::ReplaceAllowedIps,
                PeerOp::AllowedIp(ip("10.100.0.77"), 32),
                PeerOp::AllowedIp(ip("fd00::77"), 128),
            ]
        }]
    );
    assert_eq!(set_req(T_UPDATE_ONLY).peers[0].ops, vec![PeerOp::UpdateOnly, PeerOp::PersistentKeepalive(0)]);
    assert_eq!(set_req(T_REMOVE).peers[0].ops, vec![PeerOp::Remove]);
    // What we parse, we encode back byte for byte (wg's key order).
    for bytes in [WG_SET_PEER, T_ADD, T_UPDATE_ONLY, T_REMOVE] {
        assert_eq!(set_req(bytes).encode().as_bytes(), bytes);
    }
}

#[test]
fn the_transcripts_errors_are_einval_and_say_why() {
    let e = parse_request(T_BOGUS).unwrap_err();
    assert_eq!(e.errno, -22);
    assert_eq!(e.to_string(), "IPC error -22: invalid UAPI device key: bogus_key");
    let e = parse_request(T_BAD_KEY).unwrap_err();
    assert_eq!(e.to_string(), "IPC error -22: failed to get peer by public key: invalid hex key \"zz\"");
}

#[test]
fn every_key_and_its_value_are_checked() {
    let pb = format!("set=1\npublic_key={PUB_B}\n");
    let cases: Vec<(String, i32, String)> = vec![
        ("set=1\nlisten_port\n\n".into(), -71, "failed to parse line \"listen_port\"".into()),
        ("set=1\nallowed_ip=10.0.0.0/8\n\n".into(), -22, "invalid UAPI device key: allowed_ip".into()),
        (format!("{pb}listen_port=1\n\n"), -22, "invalid UAPI peer key: listen_port".into()),
        (format!("{pb}bogus=1\n\n"), -22, "invalid UAPI peer key: bogus".into()),
        ("set=1\nprivate_key=abc\n\n".into(), -22, "failed to set private_key: not 64 hex digits".into()),
        (
            format!("set=1\nprivate_key={}g\n\n", &PRIV_A[..63]),
            -22,
            "failed to set private_key: not 64 hex digits".into(),
        ),
        ("set=1\nlisten_port=65536\n\n".into(), -22, "failed to parse listen_port: invalid value \"65536\"".into()),
        ("set=1\nlisten_port=+1\n\n".into(), -22, "failed to parse listen_port: invalid value \"+1\"".into()),
        ("set=1\nlisten_port=\n\n".into(), -22, "failed to parse listen_port: invalid value \"\"".into()),
        ("set=1\nfwmark=4294967296\n\n".into(), -22, "invalid fwmark: \"4294967296\"".into()),
        ("set=1\nreplace_peers=false\n\n".into(), -22, "failed to set replace_peers, invalid value: false".into()),
        (format!("{pb}update_only=1\n\n"), -22, "failed to set update only, invalid value: 1".into()),
        (format!("{pb}remove=yes\n\n"), -22, "failed to set remove, invalid value: yes".into()),
        (format!("{pb}preshared_key=00\n\n"), -22, "failed to set preshared key: not 64 hex digits".into()),
        (
            format!("{pb}endpoint=example.com:51820\n\n"),
            -22,
            "failed to set endpoint example.com:51820: not an IP:port or [IPv6]:port".into(),
        ),
        (
            format!("{pb}endpoint=fd00::1:51820\n\n"),
            -22,
            "failed to set endpoint fd00::1:51820: not an IP:port or [IPv6]:port".into(),
        ),
        (
            format!("{pb}persistent_keepalive_interval=65536\n\n"),
            -22,
            "failed to set persistent keepalive interval: invalid value \"65536\"".into(),
        ),
        (format!("{pb}replace_allowed_ips=TRUE\n\n"), -22, "failed to replace allowedips, invalid value: TRUE".into()),
        (format!("{pb}allowed_ip=10.0.0.1\n\n"), -22, "failed to set allowed ip: invalid prefix \"10.0.0.1\"".into()),
        (
            format!("{pb}allowed_ip=10.0.0.0/08\n\n"),
            -22,
            "failed to set allowed ip: invalid prefix \"10.0.0.0/08\"".into(),
        ),
        (
            format!("{pb}allowed_ip=10.0.0.0/33\n\n"),
            -22,
            "failed to set allowed ip: invalid prefix \"10.0.0.0/33\"".into(),
        ),
        (
            format!("{pb}allowed_ip=fe80::1%eth0/128\n\n"),
            -22,
            "failed to set allowed ip: invalid prefix \"fe80::1%eth0/128\"".into(),
        ),
        (format!("{pb}protocol_version=2\n\n"), -22, "invalid protocol version: 2".into()),
        ("get=1\nx\n\n".into(), -22, "trailing characters in UAPI get: \"x\"".into()),
        ("set=2\n\n".into(), -22, "invalid UAPI operation: \"set=2\"".into()),
        ("".into(), -22, "empty UAPI request".into()),
    ];
    for (req, errno, msg) in &cases {
        let e = parse_request(req.as_bytes()).unwrap_err();
        assert_eq!((e.errno, &e.message), (*errno, msg), "{req:?}");
    }
    assert_eq!(parse_request(b"set=1\n\xff=1\n\n").unwrap_err().errno, -71);
    // A secret is never echoed.
    let e = parse_request(format!("set=1\nprivate_key={}x\n\n", &PRIV_A[..63]).as_bytes()).unwrap_err();
    assert!(!e.to_string().contains(&PRIV_A[..63]));
}

#[test]
fn lenient_where_wireguard_go_is() {
    // Upper-case hex, CRLF line ends, a request cut short without its empty line, and
    // anything after the empty line (the next request, which we do not read).
    let r = set_req(
        format!(
            "set=1\r\nprivate_key={}\r\nlisten_port=0051820\r\nfwmark=0\r\npublic_key={PUB_B}\r\nprotocol_version=1",
            PRIV_A.to_uppercase()
        )
        .as_bytes(),
    );
    assert_eq!(r.private_key.as_ref().map(|k| k.0), Some(key(PRIV_A)));
    assert_eq!(r.listen_port, Some(51820));
    assert_eq!(r.peers[0].ops, vec![PeerOp::ProtocolVersion]);
    assert_eq!(parse_request(b"get=1\n\nset=1\nbogus\n\n"), Ok(Request::Get));
    assert_eq!(parse_request(b"get=1\n"), Ok(Request::Get));
    let all = format!("set=1\nreplace_peers=true\npublic_key={PUB_B}\nremove=true\npublic_key={PUB_C}\nupdate_only=true\npreshared_key={PRIV_A}\nendpoint=[fd00::1]:7\nallowed_ip=::/0\nprotocol_version=1\n\n");
    assert_eq!(set_req(all.as_bytes()).encode(), all);
}

// ---- applying ----

struct Fixture {
    dev: Device,
    iface: InterfaceState,
    rng: ChaCha20Rng,
    out: Output,
    now: Timestamp,
}

impl Fixture {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut dev = Device::new(&mut rng, 1_700_000_000_000_000_000);
        dev.set_private_key(Some(PrivateKey::from_bytes(key(PRIV_A))));
        Fixture { dev, iface: InterfaceState::default(), rng, out: Output::default(), now: Timestamp::from_secs(100) }
    }
    /// What the server does with a request: parse it whole, then apply it.
    fn set(&mut self, bytes: &[u8]) -> Result<(), UapiError> {
        match parse_request(bytes)? {
            Request::Set(r) => apply_set(&mut self.dev, &mut self.iface, &r, &mut self.rng, self.now, &mut self.out),
            Request::Get => panic!("not a set"),
        }
    }
    fn get(&self) -> String {
        format_get(&self.dev, &self.iface, unix)
    }
    fn peer(&self, hex: &str) -> Option<PeerId> {
        self.dev.peer_by_key(&key(hex))
    }
    fn ips(&self, hex: &str) -> Vec<(IpAddr, u8)> {
        self.dev.allowed_ips(self.peer(hex).unwrap()).collect()
    }
}

/// The monotonic-to-Unix conversion of the tests: Unix second 1_795_606_000 at the epoch.
fn unix(t: Timestamp) -> (u64, u32) {
    let ns = 1_795_606_000_000_000_000 + t.as_nanos();
    (ns / 1_000_000_000, (ns % 1_000_000_000) as u32)
}

#[test]
fn the_transcripts_requests_add_update_and_remove_a_peer() {
    let mut f = Fixture::new();
    f.set(T_ADD).unwrap();
    let c = f.peer(PUB_C).expect("created");
    let p = f.dev.peer(c).unwrap().clone();
    assert_eq!(p.endpoint(), Some("10.99.0.77:51820".parse().unwrap()));
    assert_eq!(p.persistent_keepalive(), 25);
    assert_eq!(f.ips(PUB_C), vec![(ip("10.100.0.77"), 32), (ip("fd00::77"), 128)]);
    // Keepalive turned on without a session: the keepalive becomes a handshake request.
    assert!(f.out.events.contains(&Event::HandshakeWanted(c)), "{:?}", f.out.events);
    assert!(f.out.events.iter().any(|e| matches!(e, Event::Wake { peer, .. } if *peer == c)));

    f.set(T_UPDATE_ONLY).unwrap();
    assert_eq!(f.dev.peer(c).unwrap().persistent_keepalive(), 0);
    assert_eq!(f.dev.peer_count(), 1);

    f.set(T_REMOVE).unwrap();
    assert_eq!(f.peer(PUB_C), None);
    assert_eq!(f.dev.peer_count(), 0);
    // Removing or updating a missing peer creates nothing.
    f.set(T_REMOVE).unwrap();
    f.set(T_UPDATE_ONLY).unwrap();
    f.set(
        format!("set=1\npublic_key={PUB_C}\nendpoint=10.0.0.1:1\nallowed_ip=10.0.0.1/32\nupdate_only=true\n\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(f.dev.peer_count(), 0, "update_only after other keys drops the peer they created");
    assert_eq!(f.dev.route(ip("10.0.0.1")), None);
    // A bare public_key creates the peer.
    f.set(format!("set=1\npublic_key={PUB_C}\n\n").as_bytes()).unwrap();
    assert!(f.peer(PUB_C).is_some());
}

#[test]
fn replace_peers_and_replace_allowed_ips() {
    let mut f = Fixture::new();
    f.set(T_ADD).unwrap();
    f.set(WG_SET_PEER).unwrap();
    assert_eq!(f.dev.peer_count(), 2);
    // An existing prefix moves to the peer that claims it; order within a section matters.
    f.set(format!("set=1\npublic_key={PUB_B}\nallowed_ip=10.9.9.9/32\nreplace_allowed_ips=true\nallowed_ip=10.100.0.77/32\nallowed_ip=10.100.1.1/24\n\n").as_bytes()).unwrap();
    assert_eq!(
        f.ips(PUB_B),
        vec![(ip("10.100.0.77"), 32), (ip("10.100.1.0"), 24)],
        "cleared, then added; host bits masked"
    );
    assert_eq!(f.ips(PUB_C), vec![(ip("fd00::77"), 128)]);
    // Without replace_allowed_ips, prefixes add up.
    f.set(format!("set=1\npublic_key={PUB_B}\nallowed_ip=fd00::b/128\n\n").as_bytes()).unwrap();
    assert_eq!(f.ips(PUB_B).len(), 3);

    f.set(
        format!(
            "set=1\nlisten_port=51820\nfwmark=7\nreplace_peers=true\npublic_key={PUB_B}\nallowed_ip=10.0.0.2/32\n\n"
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(f.dev.peer_count(), 1);
    assert_eq!(f.peer(PUB_C), None);
    assert_eq!(f.ips(PUB_B), vec![(ip("10.0.0.2"), 32)], "the re-created peer starts empty");
    assert_eq!(f.iface, InterfaceState { listen_port: 51820, fwmark: 7 });
    f.set(b"set=1\nreplace_peers=true\n\n").unwrap();
    assert_eq!(f.dev.peer_count(), 0);
}

#[test]
fn preshared_key_set_and_removed_with_zeros() {
    let mut f = Fixture::new();
    let psk = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    f.set(format!("set=1\npublic_key={PUB_B}\npreshared_key={psk}\n\n").as_bytes()).unwrap();
    let b = f.peer(PUB_B).unwrap();
    assert_eq!(f.dev.peer(b).unwrap().preshared_key().0, key(psk));
    assert!(f.get().contains(&format!("preshared_key={psk}\n")));
    f.set(format!("set=1\npublic_key={PUB_B}\npreshared_key={}\n\n", "0".repeat(64)).as_bytes()).unwrap();
    assert!(f.dev.peer(b).unwrap().preshared_key().is_zero());
}

#[test]
fn private_key_rules() {
    let mut f = Fixture::new();
    let own_pub = f.dev.public_key().unwrap();
    let own_hex: String = own_pub.iter().map(|b| format!("{b:02x}")).collect();
    // A section naming our own public key is ignored.
    f.set(format!("set=1\npublic_key={own_hex}\nallowed_ip=10.0.0.0/8\n\n").as_bytes()).unwrap();
    assert_eq!(f.dev.peer_count(), 0);
    // All zeros removes the key; a peer with the new key's public key is removed with it.
    f.set(format!("set=1\nprivate_key={}\n\n", "0".repeat(64)).as_bytes()).unwrap();
    assert!(f.dev.private_key().is_none());
    assert!(!f.get().contains("private_key="));
    f.set(format!("set=1\npublic_key={own_hex}\n\n").as_bytes()).unwrap();
    assert_eq!(f.dev.peer_count(), 1);
    f.set(format!("set=1\nprivate_key={PRIV_A}\n\n").as_bytes()).unwrap();
    assert_eq!(f.dev.public_key(), Some(own_pub));
    assert_eq!(f.dev.peer_count(), 0);
}

/// Two devices with a session between them (A initiated); returns A's fixture and its peer B.
fn established() -> (Fixture, PeerId) {
    let mut a = Fixture::new();
    let b_priv = PrivateKey::from_bytes([0x42; 32]);
    let b_pub_hex: String = b_priv.public_key().iter().map(|x| format!("{x:02x}")).collect();
    a.set(format!("set=1\npublic_key={b_pub_hex}\nendpoint=192.0.2.2:51820\nallowed_ip=10.0.0.2/32\n\n").as_bytes())
        .unwrap();
    let pb = a.peer(&b_pub_hex).unwrap();

    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut b = Device::new(&mut rng, 1_700_000_000_000_000_000);
    b.set_private_key(Some(b_priv));
    let pa = b.add_peer(&mut rng, a.dev.public_key().unwrap()).unwrap();
    b.set_endpoint(pa, "192.0.2.1:51820".parse().unwrap()).unwrap();

    let from_a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
    let from_b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
    a.dev.initiate(a.now, &mut a.rng, pb, &mut a.out).unwrap();
    let init = a.out.transmits.pop().unwrap();
    let mut out_b = Output::default();
    b.receive_handshake(a.now, &mut rng, from_a, init.payload(), false, &mut out_b).unwrap();
    let resp = out_b.transmits.pop().unwrap();
    a.dev.receive_handshake(a.now, &mut a.rng, from_b, resp.payload(), false, &mut a.out).unwrap();
    assert!(a.dev.peer(pb).unwrap().current_local_index().is_some());
    a.out.clear();
    (a, pb)
}

#[test]
fn turning_persistent_keepalive_on_sends_a_keepalive() {
    let (mut a, pb) = established();
    let hex: String = a.dev.peer(pb).unwrap().public_key().iter().map(|x| format!("{x:02x}")).collect();
    a.set(format!("set=1\npublic_key={hex}\npersistent_keepalive_interval=5\n\n").as_bytes()).unwrap();
    assert_eq!(a.out.transmits.len(), 1, "one keepalive");
    let t = &a.out.transmits[0];
    assert_eq!((t.payload().len(), t.payload()[0]), (crate::messages::DATA_MIN_LEN, crate::messages::MESSAGE_DATA));
    assert_eq!(t.to, "192.0.2.2:51820".parse::<SocketAddr>().unwrap());
    // Already on: changing the interval sends nothing; nor does turning it off.
    a.out.clear();
    a.set(format!("set=1\npublic_key={hex}\npersistent_keepalive_interval=6\n\n").as_bytes()).unwrap();
    a.set(format!("set=1\npublic_key={hex}\npersistent_keepalive_interval=0\n\n").as_bytes()).unwrap();
    assert!(a.out.transmits.is_empty());
    // On, then removed in the same section: nothing is sent.
    a.set(format!("set=1\npublic_key={hex}\npersistent_keepalive_interval=5\nremove=true\n\n").as_bytes()).unwrap();
    assert!(a.out.transmits.is_empty() && a.dev.peer_count() == 0);
}

#[test]
fn resending_the_same_private_key_keeps_sessions() {
    let (mut a, pb) = established();
    let index = a.dev.peer(pb).unwrap().current_local_index();
    a.set(format!("set=1\nprivate_key={PRIV_A}\n\n").as_bytes()).unwrap();
    assert_eq!(a.dev.peer(pb).unwrap().current_local_index(), index);
    a.dev.send_keepalive(a.now, pb, &mut a.out).expect("the session still seals");
}

#[test]
fn get_matches_wireguard_go_byte_for_byte() {
    let mut f = Fixture::new();
    f.set(WG_SET_PEER).unwrap();
    f.set(format!("set=1\nlisten_port=51820\npublic_key={PUB_B}\nendpoint=10.99.0.2:51820\n\n").as_bytes()).unwrap();
    let p = f.dev.peer(f.peer(PUB_B).unwrap()).unwrap().clone();
    p.add_tx(740_131_476);
    p.add_rx(634_303_604);
    p.timers.handshake_complete(Timestamp::from_nanos(928_900_923_004));
    assert_eq!(f.get(), GO_GET_ANSWER);
    assert_eq!(f.get().len(), 468);

    // fwmark, a PSK, an IPv6 endpoint, several prefixes, a peer that never shook hands.
    let psk = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    f.set(format!("set=1\nfwmark=3\npublic_key={PUB_C}\npreshared_key={psk}\nendpoint=[fd00::77]:51821\nallowed_ip=10.100.0.77/32\nallowed_ip=fd00::77/128\n\n").as_bytes()).unwrap();
    let peer_c = format!(
        "public_key={PUB_C}\npreshared_key={psk}\nprotocol_version=1\nendpoint=[fd00::77]:51821\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\nallowed_ip=10.100.0.77/32\nallowed_ip=fd00::77/128\n"
    );
    let (head, peer_b) = GO_GET_ANSWER.strip_suffix("errno=0\n\n").unwrap().split_once("public_key=").unwrap();
    let expected = format!("{head}fwmark=3\npublic_key={peer_b}{peer_c}errno=0\n\n");
    assert_eq!(f.get(), expected);

    // No key, no port, no peers.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let bare = Device::new(&mut rng, 0);
    assert_eq!(format_get(&bare, &InterfaceState::default(), unix), "errno=0\n\n");
}

#[test]
fn a_malformed_request_changes_nothing() {
    let mut f = Fixture::new();
    f.set(T_ADD).unwrap();
    f.set(b"set=1\nlisten_port=51820\n\n").unwrap();
    let before = f.get();
    // wireguard-go would have applied every line before the bad one.
    for bad in [
        format!("set=1\nlisten_port=1\nreplace_peers=true\npublic_key={PUB_B}\nallowed_ip=10.100.0.77/32\nallowed_ip=10.0.0.0/99\n\n"),
        format!("set=1\nprivate_key={}\npublic_key={PUB_C}\nremove=true\nbogus_key=1\n\n", "0".repeat(64)),
        format!("set=1\npublic_key={PUB_C}\nreplace_allowed_ips=true\nprotocol_version=2\n\n"),
        format!("set=1\nfwmark=9\npublic_key={PUB_B}\nendpoint=1.2.3.4:5\npublic_key=zz\n\n"),
    ] {
        let e = f.set(bad.as_bytes()).unwrap_err();
        assert_eq!(e.errno, -22, "{bad}");
        assert_eq!(f.get(), before, "{bad}");
    }
}

#[test]
fn apply_config_is_setconf() {
    let mut f = Fixture::new();
    f.set(T_ADD).unwrap();
    let conf = "[Interface]\nListenPort = 51820\n[Peer]\nPublicKey = ubYI2odLhIw3EP6iWBkoFOjVfu9Oli/E2ZAqHvnNFkY=\nEndpoint = 10.99.0.2:51820\nPersistentKeepalive = 5\nAllowedIPs = 10.100.0.2/32\n";
    let cfg =
        crate::config::InterfaceConfig::parse_with_resolver(conf, |h, _| Err(format!("no resolver for {h}"))).unwrap();
    apply_config(&mut f.dev, &mut f.iface, &cfg, &mut f.rng, f.now, &mut f.out).unwrap();
    assert!(f.dev.private_key().is_none(), "no PrivateKey in the file removes the key, as setconf does");
    assert_eq!(f.peer(PUB_C), None, "replace_peers");
    assert_eq!(f.ips(PUB_B), vec![(ip("10.100.0.2"), 32)]);
    assert_eq!(f.iface.listen_port, 51820);
    assert_eq!(f.dev.peer(f.peer(PUB_B).unwrap()).unwrap().persistent_keepalive(), 5);
}

#[test]
fn mutated_requests_never_panic_and_parsed_ones_round_trip() {
    use rand::{Rng, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let seeds: [&[u8]; 5] = [WG_SET_PEER, T_ADD, T_UPDATE_ONLY, T_REMOVE, b"set=1\nprivate_key=08c32941890bd205fc2720cff87c5e0f9e57b42fa9800d85a0a792968d279a58\nlisten_port=1\nfwmark=2\nreplace_peers=true\n\n"];
    let alphabet = b"=\n\r/:[]0123456789abcdefxtrue.%";
    let mut parsed = 0;
    for i in 0..50_000 {
        let mut m = seeds[i % seeds.len()].to_vec();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..m.len());
            match rng.gen_range(0..3) {
                0 => m[at] = alphabet[rng.gen_range(0..alphabet.len())],
                1 => {
                    m.remove(at);
                }
                _ => m.insert(at, alphabet[rng.gen_range(0..alphabet.len())]),
            }
        }
        if let Ok(Request::Set(r)) = parse_request(&m) {
            parsed += 1;
            assert_eq!(set_req(r.encode().as_bytes()), r, "{:?}", String::from_utf8_lossy(&m));
        }
    }
    assert!(parsed > 1_000, "the mutations leave enough valid requests ({parsed})");
}

#[test]
fn a_setconf_section_costs_one_exact_allocation() {
    // What `wg setconf` sends per peer: two operations, kept in one allocation of two.
    let mut p = SetParser::new();
    for line in [format!("public_key={PUB_B}"), "replace_allowed_ips=true".into(), "allowed_ip=10.0.0.2/32".into()] {
        assert!(p.line(line.as_bytes()).unwrap());
    }
    for line in [format!("public_key={PUB_C}"), "allowed_ip=10.0.0.3/32".into()] {
        assert!(p.line(line.as_bytes()).unwrap());
    }
    let req = p.finish();
    assert_eq!(req.peers.len(), 2);
    assert_eq!(req.peers[0].ops, vec![PeerOp::ReplaceAllowedIps, PeerOp::AllowedIp(ip("10.0.0.2"), 32)]);
    assert_eq!(req.peers[0].ops.capacity(), 2);
    assert_eq!(req.peers[1].ops.len(), 1);
    assert!(req.peers[1].ops.capacity() <= 2);
    // Longer sections grow as usual and keep every operation in order.
    let mut p = SetParser::new();
    assert!(p.line(format!("public_key={PUB_B}").as_bytes()).unwrap());
    let ips: Vec<String> = (0..5).map(|i| format!("10.0.0.{i}")).collect();
    for a in &ips {
        assert!(p.line(format!("allowed_ip={a}/32").as_bytes()).unwrap());
    }
    let ops = &p.finish().peers[0].ops;
    assert_eq!(ops, &ips.iter().map(|a| PeerOp::AllowedIp(ip(a), 32)).collect::<Vec<_>>());
}
