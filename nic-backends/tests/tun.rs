//! TUN ports inside a fresh network namespace (run as root).

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::NetNs;
use nic_backends::{open, Buffer, Pool, Port, PortOptions};

fn tun(name: &str, queues: usize, mtu: Option<usize>) -> Box<dyn Port> {
    open(&format!("tun:{name}"), &PortOptions { queues, mtu, ..Default::default() }).unwrap()
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4/UDP packet (UDP checksum 0: allowed over IPv4).
fn udp4(pool: &Pool, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Buffer {
    let mut b = pool.alloc().unwrap();
    let total = 28 + payload.len();
    let p = b.append(total).unwrap();
    p[..20].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.0.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.1.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    b
}

/// Is `b` an IPv4/UDP packet to `dst`? Then its source and payload.
fn parse_udp4(b: &Buffer, dst: (Ipv4Addr, u16)) -> Option<((Ipv4Addr, u16), Vec<u8>)> {
    let p = b.data();
    if p.len() < 28 || p[0] != 0x45 || p[9] != 17 || p[16..20] != dst.0.octets() || p[22..24] != dst.1.to_be_bytes() {
        return None;
    }
    let src = (Ipv4Addr::new(p[12], p[13], p[14], p[15]), u16::from_be_bytes([p[20], p[21]]));
    Some((src, p[28..].to_vec()))
}

#[test]
fn kernel_traffic_is_read_and_written_packets_reach_a_socket() {
    let ns = NetNs::enter("tun");
    let mut port = tun("nbtun0", 2, None);
    assert_eq!(
        (port.info().name.as_str(), port.info().mtu, port.info().mac, port.info().kind),
        ("nbtun0", 1420, None, "tun")
    );
    assert_eq!(port.num_queues(), 2);
    assert!(port.link_up());
    let (ok, out) = ns.ip_try("link show nbtun0");
    assert!(ok && out.contains("mtu 1420") && out.contains(",UP"), "{out}");
    ns.ip("addr add 10.77.0.1/24 dev nbtun0");
    let mut qs = [port.take_queue(0).unwrap(), port.take_queue(1).unwrap()];
    let pool = Pool::new("tun", 64).unwrap();

    let sock = UdpSocket::bind("10.77.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let me = (Ipv4Addr::new(10, 77, 0, 1), sock.local_addr().unwrap().port());
    let peer = (Ipv4Addr::new(10, 77, 0, 2), 9999);
    sock.send_to(b"hello tun", (peer.0, peer.1)).unwrap();

    // The kernel routes it into the TUN: it is read on one of the queues.
    let mut got = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.is_none() && Instant::now() < deadline {
        for q in qs.iter_mut() {
            let mut bufs = Vec::new();
            q.rx_burst(&pool, &mut bufs, 32);
            got = got.or_else(|| bufs.iter().find_map(|b| parse_udp4(b, peer)));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (src, payload) = got.expect("UDP packet read from the TUN");
    assert_eq!((src, payload.as_slice()), (me, &b"hello tun"[..]));
    assert!(qs.iter().map(|q| q.stats().rx_packets).sum::<u64>() >= 1);

    // A packet written into the TUN is delivered to the socket.
    let mut v = vec![udp4(&pool, peer, me, b"hello kernel")];
    assert_eq!(qs[1].tx_burst(&mut v), 1);
    assert!(v.is_empty());
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("packet written to the TUN reaches the socket");
    assert_eq!((&buf[..n], from), (&b"hello kernel"[..], (peer.0, peer.1).into()));
    assert_eq!(qs[1].stats().tx_packets, 1);

    // Not an IP packet: refused by the kernel, taken and counted.
    let mut junk = pool.alloc().unwrap();
    junk.append(20).unwrap().fill(0x11);
    let mut v = vec![junk];
    assert_eq!(qs[0].tx_burst(&mut v), 1);
    assert_eq!(qs[0].stats().tx_errors, 1);
}

#[test]
fn interface_disappears_when_the_port_and_all_queues_are_dropped() {
    let ns = NetNs::enter("tungone");
    let mut port = tun("nbtun1", 2, Some(1280));
    assert_eq!(port.info().mtu, 1280);
    let (ok, out) = ns.ip_try("link show nbtun1");
    assert!(ok && out.contains("mtu 1280"), "{out}");
    let q = port.take_queue(0).unwrap();
    drop(port);
    assert!(ns.ip_try("link show nbtun1").0, "one queue still open: the interface stays");
    drop(q);
    // The kernel unregisters the interface when the last queue closes; on a loaded machine that
    // can take a moment: poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns.ip_try("link show nbtun1").0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!ns.ip_try("link show nbtun1").0, "interface left behind");
}

#[test]
fn errors_name_the_port_and_what_to_do() {
    let ns = NetNs::enter("tunerr");
    ns.ip("link add nbveth0 type veth peer name nbveth1");
    let e = open("tun:nbveth0", &PortOptions::default()).err().unwrap();
    assert!(
        e.to_string().starts_with(
            "tun:nbveth0: TUNSETIFF failed (an interface of that name exists and is not a multi-queue TUN)"
        ),
        "{e}"
    );
    let e = open("tun:nbtun2", &PortOptions { mtu: Some(60), ..Default::default() }).err().unwrap();
    assert!(e.to_string().starts_with("tun:nbtun2: MTU 60 out of range"), "{e}");
    assert!(!ns.ip_try("link show nbtun2").0);
}

/// `tap:NAME`: Ethernet frames with the MAC we give it. The kernel answers an ARP request
/// written into the TAP for its address, from that MAC, and the reply is read back.
#[test]
fn tap_carries_ethernet_frames_with_our_mac() {
    let ns = NetNs::enter("tap");
    let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let mut port = open("tap:nbtap0", &PortOptions { mac: Some(mac), mtu: Some(1500), ..Default::default() }).unwrap();
    assert_eq!((port.info().kind, port.info().mac, port.info().mtu), ("tap", Some(mac), 1500));
    let (ok, out) = ns.ip_try("link show nbtap0");
    assert!(ok && out.contains("02:11:22:33:44:55") && out.contains(",UP"), "{out}");
    ns.ip("addr add 10.78.0.1/24 dev nbtap0");
    let mut q = port.take_queue(0).unwrap();
    let pool = Pool::new("tap", 64).unwrap();
    let asker = [0x02, 0, 0, 0, 0, 9];
    let mut req = pool.alloc().unwrap();
    let f = req.append(42).unwrap();
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&asker);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&asker);
    f[28..32].copy_from_slice(&[10, 78, 0, 2]);
    f[32..38].fill(0);
    f[38..42].copy_from_slice(&[10, 78, 0, 1]);
    let mut v = vec![req];
    assert_eq!(q.tx_burst(&mut v), 1);
    let got = common::rx_until(q.as_mut(), &pool, |bufs| {
        bufs.iter().any(|b| b.data().len() >= 42 && b.data()[12..14] == [8, 6] && b.data()[20..22] == [0, 2])
    });
    let reply = got.iter().find(|b| b.data()[12..14] == [8, 6] && b.data()[20..22] == [0, 2]).unwrap();
    assert_eq!(&reply.data()[..6], &asker);
    assert_eq!(&reply.data()[6..12], &mac, "the reply comes from the MAC we gave the TAP");
    assert_eq!(&reply.data()[22..28], &mac);
    assert_eq!(&reply.data()[28..32], &[10, 78, 0, 1]);
    assert_eq!(q.stats().tx_packets, 1);
}

/// A TUN deleted from outside (`ip link del`): its queues read and write `EBADFD`, and
/// `health()` reports the fault (the daemon then stops with the message); before, healthy.
#[test]
fn deleted_from_outside_is_a_fault() {
    let ns = NetNs::enter("tundel");
    let mut port = tun("nbtundel0", 2, None);
    let mut qs = [port.take_queue(0).unwrap(), port.take_queue(1).unwrap()];
    let pool = Pool::new("tundel", 16).unwrap();
    let mut out = Vec::new();
    // Whatever the kernel sends on a fresh interface (IPv6 solicitations) is read normally.
    qs[0].rx_burst(&pool, &mut out, 8);
    out.clear();
    assert!(qs[0].health().is_ok() && qs[1].health().is_ok());
    ns.ip("link del nbtundel0");
    assert_eq!(qs[0].rx_burst(&pool, &mut out, 8), 0);
    let e = qs[0].health().expect_err("a read on a deleted TUN is a fault");
    assert!(e.contains("nbtundel0") && e.contains("deleted"), "{e}");
    let mut bufs = vec![udp4(&pool, (Ipv4Addr::new(10, 1, 0, 1), 1), (Ipv4Addr::new(10, 1, 0, 2), 2), b"x")];
    qs[1].tx_burst(&mut bufs);
    assert!(qs[1].health().is_err(), "a write on a deleted TUN is a fault");
}
