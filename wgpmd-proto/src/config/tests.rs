use std::net::{Ipv4Addr, Ipv6Addr};

use super::*;

const PRIV_B64: &str = "CMMpQYkL0gX8JyDP+HxeD55XtC+pgA2FoKeSlo0nmlg=";
const PRIV_HEX: &str = "08c32941890bd205fc2720cff87c5e0f9e57b42fa9800d85a0a792968d279a58";
const PUB_B: &str = "ubYI2odLhIw3EP6iWBkoFOjVfu9Oli/E2ZAqHvnNFkY=";
const PUB_B_HEX: &str = "b9b608da874b848c3710fea258192814e8d57eef4e962fc4d9902a1ef9cd1646";
const PUB_C: &str = "r6tdV9Xy7eXcLS2YnS1e9F54eew3vh2X07UZe3KyBVk=";
const PSK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn key(b64: &str) -> [u8; 32] {
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap().try_into().unwrap()
}

fn no_dns(host: &str, _: u16) -> Result<SocketAddr, String> {
    panic!("unexpected resolution of {host}")
}

fn parse(text: &str) -> Result<InterfaceConfig, ConfigError> {
    InterfaceConfig::parse_with_resolver(text, no_dns)
}

#[test]
fn a_full_file_with_every_key() {
    let text = format!(
        "# wga.conf\n\
         [Interface]\n\
         PrivateKey = {PRIV_B64}\n\
         listenport = 51820   # trailing comment\n\
         FwMark = 0x1f\n\
         \n\
         [peer]\n\
         PublicKey = {PUB_B}\n\
         PresharedKey = {PSK}\n\
         Endpoint = [fd00::1]:51821\n\
         PersistentKeepalive = 25\n\
         AllowedIPs = 10.100.0.2/32, fd00:100::/64\n\
         Allowed IPs = 192.168.7.9/24,10.7.7.7\n\
         \t\n\
         [Peer]\n\
         PublicKey={PUB_C}\r\n\
         Endpoint=10.99.0.77:51820\n\
         PersistentKeepalive = off\n\
         AllowedIPs = ::/0\n"
    );
    let cfg = parse(&text).unwrap();
    assert_eq!(cfg.private_key, Some(key(PRIV_B64)));
    assert_eq!(cfg.listen_port, Some(51820));
    assert_eq!(cfg.fwmark, Some(0x1f));
    assert_eq!(cfg.peers.len(), 2);
    let b = &cfg.peers[0];
    assert_eq!(b.public_key, key(PUB_B));
    assert_eq!(b.preshared_key, Some(key(PSK)));
    assert_eq!(b.endpoint, Some("[fd00::1]:51821".parse().unwrap()));
    assert_eq!(b.persistent_keepalive, Some(25));
    assert_eq!(
        b.allowed_ips,
        vec![
            (IpAddr::V4(Ipv4Addr::new(10, 100, 0, 2)), 32),
            (IpAddr::V6("fd00:100::".parse::<Ipv6Addr>().unwrap()), 64),
            // Host bits stay as written; the allowed-IPs table masks them.
            (IpAddr::V4(Ipv4Addr::new(192, 168, 7, 9)), 24),
            (IpAddr::V4(Ipv4Addr::new(10, 7, 7, 7)), 32),
        ]
    );
    let c = &cfg.peers[1];
    assert_eq!(c.public_key, key(PUB_C));
    assert_eq!(c.preshared_key, None);
    assert_eq!(c.endpoint, Some("10.99.0.77:51820".parse().unwrap()));
    assert_eq!(c.persistent_keepalive, Some(0));
    assert_eq!(c.allowed_ips, vec![(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)]);
    // Keys stay out of Debug output.
    let dbg = format!("{cfg:?}");
    assert!(!dbg.contains(PSK) && !dbg.contains(PRIV_B64) && dbg.contains(PUB_B), "{dbg}");
}

#[test]
fn small_values_and_repeats() {
    let cfg = parse(
        "[Interface]\nFwMark = off\nListenPort = 0\nFwMark = 4294967295\nPrivateKey = {PSK}\n"
            .replace("{PSK}", PSK)
            .as_str(),
    )
    .unwrap();
    assert_eq!(cfg.fwmark, Some(u32::MAX), "a later value replaces an earlier one");
    assert_eq!(cfg.listen_port, Some(0));
    assert_eq!(parse("[Interface]\nFwMark = OFF\n").unwrap().fwmark, Some(0));
    assert_eq!(parse("[Interface]\nFwMark = 0xffffffff\n").unwrap().fwmark, Some(u32::MAX));
    let empty = parse("# nothing\n\n").unwrap();
    assert_eq!(empty, InterfaceConfig::default());
    let v6 = parse(&format!("[Peer]\nPublicKey={PUB_B}\nEndpoint=fd00::9:51820\nPersistentKeepalive=65535\n")).unwrap();
    assert_eq!(
        v6.peers[0].endpoint,
        Some("[fd00::9]:51820".parse().unwrap()),
        "unbracketed IPv6 splits at the last colon, as wg does"
    );
    assert_eq!(v6.peers[0].persistent_keepalive, Some(65535));
}

#[test]
fn host_names_go_to_the_resolver() {
    let text = format!("[Peer]\nPublicKey = {PUB_B}\nEndpoint = vpn.example.net:51820\n");
    let mut asked = Vec::new();
    let cfg = InterfaceConfig::parse_with_resolver(&text, |h, p| {
        asked.push((h.to_string(), p));
        Ok("192.0.2.7:51820".parse().unwrap())
    })
    .unwrap();
    assert_eq!(asked, vec![("vpn.example.net".to_string(), 51820)]);
    assert_eq!(cfg.peers[0].endpoint, Some("192.0.2.7:51820".parse().unwrap()));

    let e = InterfaceConfig::parse_with_resolver(&text, |_, _| Err("Name or service not known".into())).unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(
        e.to_string(),
        "line 3: invalid Endpoint `vpn.example.net:51820`: cannot resolve `vpn.example.net`: Name or service not known"
    );
}

#[test]
fn each_error_names_its_line_and_problem() {
    let p = format!("[Peer]\nPublicKey = {PUB_B}\n");
    let cases: Vec<(String, usize, String)> = vec![
        ("[Interface]\n\nPrivateKey = abc\n".into(), 3, "line 3: invalid key `PrivateKey`: not 32 bytes of base64".into()),
        (
            // 44 characters, but the last one before `=` has bits that do not fit (non-canonical).
            "[Peer]\nPublicKey = ubYI2odLhIw3EP6iWBkoFOjVfu9Oli/E2ZAqHvnNFkZ=\n".into(),
            2,
            "line 2: invalid key `PublicKey`: not 32 bytes of base64".into(),
        ),
        ("[Peer]\nPublicKey = ubYI2odLhIw3EP6iWBkoFOjVfu9Oli/E2ZAqHvnNFkY\n".into(), 2, "line 2: invalid key `PublicKey`: not 32 bytes of base64".into()),
        (format!("{p}PresharedKey = {PUB_B}x\n"), 3, "line 3: invalid key `PresharedKey`: not 32 bytes of base64".into()),
        ("PrivateKey = x\n".into(), 1, "line 1: `PrivateKey` appears before any [Interface] or [Peer] section".into()),
        ("[Interfaces]\n".into(), 1, "line 1: unknown section `[Interfaces]` (expected [Interface] or [Peer])".into()),
        ("[Interface]\nListenPort\n".into(), 2, "line 2: expected a [Section] or `Key = Value`".into()),
        ("[Interface]\nListenPort =  \n".into(), 2, "line 2: `ListenPort` has no value".into()),
        ("[Interface]\nListenPort = 65536\n".into(), 2, "line 2: invalid ListenPort `65536`: not a port number 0-65535".into()),
        ("[Interface]\nListenPort = -1\n".into(), 2, "line 2: invalid ListenPort `-1`: not a port number 0-65535".into()),
        ("[Interface]\nFwMark = 0x100000000\n".into(), 2, "line 2: invalid FwMark `0x100000000`: neither off nor 0-0xffffffff".into()),
        ("[Interface]\nFwMark = 0x\n".into(), 2, "line 2: invalid FwMark `0x`: neither off nor 0-0xffffffff".into()),
        ("[Interface]\nFwMark = on\n".into(), 2, "line 2: invalid FwMark `on`: neither off nor 0-0xffffffff".into()),
        ("[Interface]\nPublicKey = x\n".into(), 2, "line 2: unknown key `PublicKey` in [Interface] section".into()),
        (format!("{p}ListenPort = 1\n"), 3, "line 3: unknown key `ListenPort` in [Peer] section".into()),
        (format!("{p}PersistentKeepalive = 65536\n"), 3, "line 3: invalid PersistentKeepalive `65536`: neither off nor 0-65535".into()),
        (format!("{p}PersistentKeepalive = +5\n"), 3, "line 3: invalid PersistentKeepalive `+5`: neither off nor 0-65535".into()),
        (format!("{p}Endpoint = 10.0.0.1\n"), 3, "line 3: invalid Endpoint `10.0.0.1`: no port".into()),
        (format!("{p}Endpoint = 10.0.0.1:\n"), 3, "line 3: invalid Endpoint `10.0.0.1:`: the port is not a number 0-65535".into()),
        (format!("{p}Endpoint = [fd00::1:51820\n"), 3, "line 3: invalid Endpoint `[fd00::1:51820`: no closing `]`".into()),
        (format!("{p}Endpoint = [fd00::1]51820\n"), 3, "line 3: invalid Endpoint `[fd00::1]51820`: no port".into()),
        (format!("{p}Endpoint = 10.0.0.1:99999\n"), 3, "line 3: invalid Endpoint `10.0.0.1:99999`: the port is not a number 0-65535".into()),
        (
            format!("{p}AllowedIPs = 10.0.0.0/24\nAllowedIPs = 10.0.0.0/33\n"),
            4,
            "line 4: invalid AllowedIPs entry `10.0.0.0/33`: expected an IPv4 or IPv6 address with an optional /prefix length".into(),
        ),
        (format!("{p}AllowedIPs = 10.0.0.1/32,\n"), 3, "line 3: invalid AllowedIPs entry ``: expected an IPv4 or IPv6 address with an optional /prefix length".into()),
        (format!("{p}AllowedIPs = fd00::/129\n"), 3, "line 3: invalid AllowedIPs entry `fd00::/129`: expected an IPv4 or IPv6 address with an optional /prefix length".into()),
        (format!("{p}AllowedIPs = 10.0.0.256\n"), 3, "line 3: invalid AllowedIPs entry `10.0.0.256`: expected an IPv4 or IPv6 address with an optional /prefix length".into()),
        (format!("{p}AllowedIPs = 10.0.0.1/x\n"), 3, "line 3: invalid AllowedIPs entry `10.0.0.1/x`: expected an IPv4 or IPv6 address with an optional /prefix length".into()),
        ("[Interface]\n[Peer]\nEndpoint = 10.0.0.1:1\n[Peer]\n".into(), 2, "line 2: [Peer] section has no PublicKey".into()),
    ];
    for (text, line, msg) in &cases {
        let e = parse(text).unwrap_err();
        assert_eq!((e.line, e.to_string()), (*line, msg.clone()), "{text:?}");
    }
    // The last [Peer] without a key is reported at its header, at the end of the file too.
    let e = parse(&format!("{p}[Peer]\nEndpoint = 10.0.0.1:1\n")).unwrap_err();
    assert_eq!((e.line, e.kind), (3, ConfigErrorKind::MissingPublicKey));
}

#[test]
fn a_public_key_used_twice_is_refused() {
    let text =
        format!("[Peer]\nPublicKey = {PUB_B}\n\n[Peer]\nPublicKey = {PUB_C}\n[Peer]\n# again\nPublicKey = {PUB_B}\n");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.line, 8);
    assert_eq!(
        e.to_string(),
        format!("line 8: PublicKey `{PUB_B}` is already used by the peer whose PublicKey is at line 2")
    );
}

#[test]
fn wg_quick_keys_are_refused_by_name() {
    for (written, name) in [
        ("Address = 10.0.0.1/24", "Address"),
        ("DNS = 1.1.1.1", "DNS"),
        ("mtu = 1420", "MTU"),
        ("Table = off", "Table"),
        ("PreUp = true", "PreUp"),
        ("PostUp = iptables -A FORWARD -i %i -j ACCEPT", "PostUp"),
        ("PreDown = true", "PreDown"),
        ("PostDown = true", "PostDown"),
        ("SaveConfig = true", "SaveConfig"),
    ] {
        let e = parse(&format!("[Interface]\nPrivateKey = {PRIV_B64}\n{written}\n")).unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(e.kind, ConfigErrorKind::WgQuickKey(name));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("line 3: `{name}` is a wg-quick(8) key")) && msg.contains("wg-quick strip"),
            "{msg}"
        );
    }
}

#[test]
fn showconf_output_and_round_trip() {
    let text = format!(
        "[Interface]\nPrivateKey={PRIV_B64}\nListenPort=51820\nFwMark=31\n[Peer]\nPublicKey={PUB_B}\nPresharedKey={PSK}\n\
         AllowedIPs=10.100.0.2/32\nAllowedIPs=fd00::2/128\nEndpoint=[fd00::1]:51821\nPersistentKeepalive=5\n\
         [Peer]\nPublicKey={PUB_C}\nPersistentKeepalive=off\n"
    );
    let cfg = parse(&text).unwrap();
    let out = cfg.to_wg_conf();
    assert_eq!(
        out,
        format!(
            "[Interface]\nListenPort = 51820\nFwMark = 0x1f\nPrivateKey = {PRIV_B64}\n\n\
             [Peer]\nPublicKey = {PUB_B}\nPresharedKey = {PSK}\nAllowedIPs = 10.100.0.2/32, fd00::2/128\n\
             Endpoint = [fd00::1]:51821\nPersistentKeepalive = 5\n\n[Peer]\nPublicKey = {PUB_C}\n"
        )
    );
    let back = parse(&out).unwrap();
    assert_eq!(back.to_wg_conf(), out);
    assert_eq!(back.peers[0], cfg.peers[0]);
    assert_eq!(back.peers[1].persistent_keepalive, None, "showconf leaves out a zero keepalive");
}

/// `wg setconf wga wga.conf` as strace saw it (the bytes stock `wg` wrote to the UAPI socket).
const WG_SETCONF_BYTES: &[u8] = b"set=1\nprivate_key=08c32941890bd205fc2720cff87c5e0f9e57b42fa9800d85a0a792968d279a58\nlisten_port=51820\nfwmark=0\nreplace_peers=true\npublic_key=b9b608da874b848c3710fea258192814e8d57eef4e962fc4d9902a1ef9cd1646\nendpoint=10.99.0.2:51820\npersistent_keepalive_interval=5\nreplace_allowed_ips=true\nallowed_ip=10.100.0.2/32\n\n";

#[test]
fn setconf_request_matches_what_wg_sends() {
    assert!(
        std::str::from_utf8(WG_SETCONF_BYTES).unwrap().contains(PRIV_HEX)
            && std::str::from_utf8(WG_SETCONF_BYTES).unwrap().contains(PUB_B_HEX)
    );
    let cfg = parse(&format!("[Interface]\nPrivateKey = {PRIV_B64}\nListenPort = 51820\n\n[Peer]\nPublicKey = {PUB_B}\nEndpoint = 10.99.0.2:51820\nPersistentKeepalive = 5\nAllowedIPs = 10.100.0.2/32\n")).unwrap();
    let req = cfg.to_set_request();
    assert_eq!(req.encode().as_bytes(), WG_SETCONF_BYTES);
    match crate::uapi::parse_request(WG_SETCONF_BYTES).unwrap() {
        crate::uapi::Request::Set(parsed) => assert_eq!(parsed, req),
        other => panic!("{other:?}"),
    }
    // A file without keys removes them: setconf sends zeros and zeros.
    let bare = parse("[Interface]\n").unwrap().to_set_request();
    assert_eq!(
        bare.encode(),
        format!("set=1\nprivate_key={}\nlisten_port=0\nfwmark=0\nreplace_peers=true\n\n", "0".repeat(64))
    );
}

#[test]
fn mutated_files_never_panic() {
    use rand::{Rng, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let seed = format!(
        "[Interface]\nPrivateKey={PRIV_B64}\nListenPort=51820\nFwMark=0x1f\n[Peer]\nPublicKey={PUB_B}\nPresharedKey={PSK}\n\
         AllowedIPs=10.100.0.2/32,fd00::/64\nEndpoint=[fd00::1]:51821\nPersistentKeepalive=5 # c\n"
    );
    let alphabet = b"=\n[]/:,#0123456789abcdefx. \tPeroff";
    let mut ok = 0;
    for _ in 0..20_000 {
        let mut m = seed.clone().into_bytes();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..m.len());
            m[at] = alphabet[rng.gen_range(0..alphabet.len())];
        }
        let Ok(text) = String::from_utf8(m) else { continue };
        match InterfaceConfig::parse_with_resolver(&text, |_, _| Err("no DNS in tests".into())) {
            Ok(cfg) => {
                ok += 1;
                let again = parse(&cfg.to_wg_conf()).unwrap();
                assert_eq!(again.to_wg_conf(), cfg.to_wg_conf());
            }
            Err(e) => assert!(e.line >= 1 && e.line <= text.split('\n').count(), "{e}"),
        }
    }
    assert!(ok > 1_000, "{ok}");
}

#[test]
fn sync_request_removes_only_the_peers_the_file_lacks() {
    let cfg = parse(&format!(
        "[Interface]\nPrivateKey = {PRIV_B64}\n[Peer]\nPublicKey = {PUB_B}\nAllowedIPs = 10.0.0.2/32\n"
    ))
    .unwrap();
    let req = cfg.to_sync_request([key(PUB_B), key(PUB_C)]);
    assert!(!req.replace_peers, "syncconf never removes every peer");
    assert_eq!(req.peers.len(), 2);
    assert_eq!(req.peers[0].public_key, key(PUB_B));
    assert!(req.peers[0].ops.contains(&PeerOp::ReplaceAllowedIps), "the file's allowed IPs replace the old ones");
    assert!(!req.peers[0].ops.contains(&PeerOp::Remove));
    assert_eq!((req.peers[1].public_key, &req.peers[1].ops[..]), (key(PUB_C), &[PeerOp::Remove][..]));
    // Everything else is what setconf sends.
    let mut set = cfg.to_set_request();
    set.replace_peers = false;
    set.peers.push(PeerSet { public_key: key(PUB_C), ops: vec![PeerOp::Remove] });
    assert!(req == set);
    assert_eq!(cfg.to_sync_request([]).peers.len(), 1, "no current peers: nothing to remove");
}
