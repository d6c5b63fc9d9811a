//! In-memory demo of the protocol core: a wgpmd device and boringtun (an independent WireGuard
//! implementation) complete a handshake, exchange traffic both ways, rekey, and print what
//! happened. No NIC, no root, no network: the protocol core alone (scripts/demo.sh runs the
//! daemon).
//!
//!     cargo run --release -p wgpmd-proto --example demo [packets]
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519 as bx;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{Device, DropReason, Event, Output};
use wgpmd_proto::time::Timestamp;

const BT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 51820);
const OUR_INNER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BT_INNER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p
}

fn bt_rx(bt: &mut Tunn, msg: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut buf = vec![0u8; 2048];
    let (mut net, mut delivered) = (Vec::new(), 0);
    let mut d = msg.to_vec();
    loop {
        match bt.decapsulate(Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))), &d, &mut buf) {
            TunnResult::WriteToNetwork(p) => {
                net.push(p.to_vec());
                d.clear();
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                delivered += 1;
                break;
            }
            TunnResult::Done => break,
            TunnResult::Err(e) => {
                eprintln!("boringtun dropped a packet: {e:?}");
                break;
            }
        }
    }
    (net, delivered)
}

fn main() {
    let packets: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let mut rng = ChaCha20Rng::from_entropy();
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let start = Instant::now();
    let now = || Timestamp::from_nanos(1 + start.elapsed().as_nanos() as u64);

    let ours = PrivateKey::generate(&mut rng);
    let bt_secret = bx::StaticSecret::random_from_rng(&mut rng);
    let mut bt = Tunn::new(bt_secret.clone(), bx::PublicKey::from(ours.public_key()), None, None, 1, None);
    let mut dev = Device::new(&mut rng, wall);
    dev.set_private_key(Some(ours));
    let peer = dev.add_peer(&mut rng, bx::PublicKey::from(&bt_secret).to_bytes()).expect("add peer");
    dev.set_endpoint(peer, BT_ADDR).expect("endpoint");
    dev.add_allowed_ip(peer, IpAddr::V4(BT_INNER), 32).expect("allowed ip");
    let mut out = Output::with_capacity(64);
    println!(
        "wgpmd device {} <-> boringtun peer {}",
        peer,
        dev.peer(peer).map(|p| p.name().to_string()).unwrap_or_default()
    );

    // First packet: no session, so the core asks for a handshake.
    let inner = ipv4(OUR_INNER, BT_INNER, 1400);
    let mut buf = vec![0u8; 16 + 1400 + 32];
    buf[16..16 + 1400].copy_from_slice(&inner);
    assert_eq!(dev.encapsulate(now(), &mut buf, 1400, &mut out), Err(DropReason::NoSession));
    assert!(out.events.contains(&Event::HandshakeWanted(peer)));
    dev.initiate(now(), &mut rng, peer, &mut out).expect("initiate");
    let init = out.transmits.pop().expect("initiation");
    let (resp, _) = bt_rx(&mut bt, init.payload());
    dev.receive_handshake(now(), &mut rng, BT_ADDR, &resp[0], false, &mut out).expect("response accepted");
    dev.send_keepalive(now(), peer, &mut out).expect("keepalive");
    let ka = out.transmits.pop().expect("keepalive");
    bt_rx(&mut bt, ka.payload());
    println!("handshake complete in {:?}", start.elapsed());

    // Traffic: we seal, boringtun opens; boringtun seals, we open.
    let t = Instant::now();
    let mut delivered = 0;
    for _ in 0..packets {
        buf[16..16 + 1400].copy_from_slice(&inner);
        let e = dev.encapsulate(now(), &mut buf, 1400, &mut out).expect("seal");
        delivered += bt_rx(&mut bt, &buf[..e.len]).1;
    }
    let up = t.elapsed();
    let back = ipv4(BT_INNER, OUR_INNER, 1400);
    let mut bbuf = vec![0u8; 2048];
    let t = Instant::now();
    let mut received = 0;
    for _ in 0..packets {
        let m = match bt.encapsulate(&back, &mut bbuf) {
            TunnResult::WriteToNetwork(m) => m,
            _ => panic!("boringtun did not seal"),
        };
        if dev.decapsulate(now(), BT_ADDR, m, &mut out).is_ok() {
            received += 1;
        }
    }
    let down = t.elapsed();
    let gbps = |n: usize, d: Duration| (n * 1400 * 8) as f64 / d.as_secs_f64() / 1e9;
    println!(
        "wgpmd -> boringtun: {delivered}/{packets} packets of 1400 B delivered ({:.2} Gbit/s incl. boringtun's open)",
        gbps(delivered, up)
    );
    println!(
        "boringtun -> wgpmd: {received}/{packets} packets of 1400 B delivered ({:.2} Gbit/s incl. boringtun's seal)",
        gbps(received, down)
    );
    let p = dev.peer(peer).expect("peer");
    println!("peer counters: rx {} B, tx {} B; worker stats: {:?}", p.rx_bytes(), p.tx_bytes(), out.stats);
    if delivered != packets || received != packets {
        eprintln!("packets were lost");
        std::process::exit(1);
    }
}
