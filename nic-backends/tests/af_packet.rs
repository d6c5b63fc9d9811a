//! AF_PACKET ports on a veth pair inside a fresh network namespace (run as root).

#![warn(clippy::undocumented_unsafe_blocks)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{rx_for, rx_until, NetNs};
use nic_backends::{open, Buffer, Fanout, Pool, Port, PortOptions, Queue};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
/// IEEE 802 local experimental EtherType: tells our frames from IPv6 noise on the link.
const ETH_TEST: [u8; 2] = [0x88, 0xb5];

/// A namespace with veth `va` (MAC_A) <-> `vb` (MAC_B), both up.
fn veth() -> NetNs {
    let ns = NetNs::enter("afp");
    ns.ip("link add va address 02:00:00:00:00:0a type veth peer name vb address 02:00:00:00:00:0b");
    ns.ip("link set va up");
    ns.ip("link set vb up");
    ns
}

fn port(name: &str, queues: usize, fanout: Fanout) -> Box<dyn Port> {
    open(&format!("af_packet:{name}"), &PortOptions { queues, fanout, mtu: None, mac: None }).unwrap()
}

/// Ethernet frame `dst <- src`, EtherType ETH_TEST, `len` bytes in all, carrying `seq`.
fn frame(pool: &Pool, dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Buffer {
    let mut b = pool.alloc().expect("pool");
    let d = b.append(len).unwrap();
    d[..6].copy_from_slice(&dst);
    d[6..12].copy_from_slice(&src);
    d[12..14].copy_from_slice(&ETH_TEST);
    d[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, x) in d[18..].iter_mut().enumerate() {
        *x = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    b
}

fn ours(b: &Buffer) -> bool {
    b.len() >= 18 && b.data()[12..14] == ETH_TEST
}

fn seq(b: &Buffer) -> u32 {
    u32::from_be_bytes(b.data()[14..18].try_into().unwrap())
}

fn send_all(q: &mut dyn Queue, mut v: Vec<Buffer>) {
    for _ in 0..1000 {
        if v.is_empty() {
            return;
        }
        if q.tx_burst(&mut v) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    panic!("{} frames not taken", v.len());
}

#[test]
fn frames_cross_the_veth_and_port_info_is_read() {
    let ns = veth();
    let mut a = port("va", 1, Fanout::Hash);
    let mut b = port("vb", 1, Fanout::Hash);
    let i = a.info();
    assert_eq!((i.name.as_str(), i.mac, i.mtu, i.kind), ("va", Some(MAC_A), 1500, "af_packet"));
    assert_eq!(b.info().mac, Some(MAC_B));
    assert!(a.link_up() && b.link_up());
    let (mut qa, mut qb) = (a.take_queue(0).unwrap(), b.take_queue(0).unwrap());
    assert!(a.take_queue(0).is_none());
    let pool = Pool::new("afp", 256).unwrap();

    let v: Vec<Buffer> = (0..10).map(|s| frame(&pool, MAC_A, MAC_B, s, 64 + s as usize)).collect();
    let sent: Vec<Vec<u8>> = v.iter().map(|b| b.data().to_vec()).collect();
    send_all(qb.as_mut(), v);
    let got = rx_until(qa.as_mut(), &pool, |g| g.iter().filter(|b| ours(b)).count() >= 10);
    let got: Vec<Vec<u8>> = got.iter().filter(|b| ours(b)).map(|b| b.data().to_vec()).collect();
    assert_eq!(got, sent);
    assert_eq!(qb.stats().tx_packets, 10);
    assert!(qa.stats().rx_packets >= 10);

    // Frames sent out of `va` by anyone else on this host (here: a second port on it, which the
    // kernel would otherwise loop back to every tap but the sending socket) are not received.
    let mut a2 = port("va", 1, Fanout::Hash);
    let mut qa2 = a2.take_queue(0).unwrap();
    send_all(qa2.as_mut(), vec![frame(&pool, MAC_B, MAC_A, 99, 80)]);
    let at_b = rx_until(qb.as_mut(), &pool, |g| g.iter().any(ours));
    assert_eq!(at_b.iter().filter(|b| ours(b)).map(seq).collect::<Vec<_>>(), [99]);
    let echo = rx_for(qa.as_mut(), &pool, Duration::from_millis(100));
    assert_eq!(echo.iter().filter(|b| ours(b)).count(), 0, "outgoing frames received");

    // And the other way.
    send_all(qa.as_mut(), vec![frame(&pool, MAC_B, MAC_A, 77, 1514)]);
    let got = rx_until(qb.as_mut(), &pool, |g| g.iter().any(ours));
    let f = got.iter().find(|b| ours(b)).unwrap();
    assert_eq!((seq(f), f.len(), f.headroom()), (77, 1514, nic_backends::HEADROOM));

    ns.ip("link set va down");
    assert!(!a.link_up());
}

#[test]
fn a_burst_of_1000_frames_of_varying_sizes_arrives_intact() {
    let _ns = veth();
    let (mut a, mut b) = (port("va", 1, Fanout::Hash), port("vb", 1, Fanout::Hash));
    let (mut qa, mut qb) = (a.take_queue(0).unwrap(), b.take_queue(0).unwrap());
    let txp = Pool::new("tx", 1024).unwrap();
    let rxp = Pool::new("rx", 2048).unwrap();
    let sizes = |s: u32| 18 + (s as usize * 7919) % (1514 - 18 + 1);
    let mut expect = Vec::new();
    let mut got = Vec::new();
    for chunk in 0..1000u32 / 50 {
        let v: Vec<Buffer> = (chunk * 50..chunk * 50 + 50).map(|s| frame(&txp, MAC_A, MAC_B, s, sizes(s))).collect();
        expect.extend(v.iter().map(|b| b.data().to_vec()));
        send_all(qb.as_mut(), v);
        qa.rx_burst(&rxp, &mut got, 64);
        got.retain(ours);
    }
    got.extend(rx_until(qa.as_mut(), &rxp, |g| g.iter().filter(|b| ours(b)).count() + got.len() >= 1000));
    got.retain(ours);
    assert_eq!(got.len(), 1000, "stats: {:?}", qa.stats());
    for (g, e) in got.iter().zip(&expect) {
        assert_eq!(g.data(), &e[..], "frame {}", seq(g));
    }
    assert_eq!(qa.stats().rx_dropped + qa.stats().rx_errors, 0);
    drop(got);
    assert_eq!(txp.available(), 1024, "sent buffers went back to their pool");
}

/// Send `n` frames b -> a and collect what each of a's queues got.
fn fanout_counts(fanout: Fanout, n: u32) -> (Vec<Vec<u32>>, NetNs) {
    let ns = veth();
    let mut a = port("va", 2, fanout);
    let mut b = port("vb", 1, Fanout::Hash);
    assert_eq!(a.num_queues(), 2);
    let mut qs = [a.take_queue(0).unwrap(), a.take_queue(1).unwrap()];
    let mut qb = b.take_queue(0).unwrap();
    let pool = Pool::new("fan", 1024).unwrap();
    let v = (0..n).map(|s| frame(&pool, MAC_A, MAC_B, s, 100)).collect();
    send_all(qb.as_mut(), v);
    let mut seen = vec![Vec::new(), Vec::new()];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.iter().map(Vec::len).sum::<usize>() < n as usize && std::time::Instant::now() < deadline {
        for (q, s) in qs.iter_mut().zip(seen.iter_mut()) {
            let mut out = Vec::new();
            q.rx_burst(&pool, &mut out, 64);
            s.extend(out.iter().filter(|b| ours(b)).map(seq));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    for (q, s) in qs.iter_mut().zip(seen.iter_mut()) {
        let mut out = Vec::new();
        q.rx_burst(&pool, &mut out, 512);
        s.extend(out.iter().filter(|b| ours(b)).map(seq));
    }
    (seen, ns)
}

fn each_once(seen: &[Vec<u32>], n: u32) {
    let all: Vec<u32> = seen.iter().flatten().copied().collect();
    assert_eq!(all.len(), n as usize, "duplicates or losses: {seen:?}");
    assert_eq!(all.iter().copied().collect::<HashSet<_>>(), (0..n).collect());
}

#[test]
fn load_balance_fanout_spreads_one_flow_over_both_queues() {
    let (seen, _ns) = fanout_counts(Fanout::LoadBalance, 200);
    each_once(&seen, 200);
    assert!(seen[0].len() >= 50 && seen[1].len() >= 50, "{} / {}", seen[0].len(), seen[1].len());
}

#[test]
fn hash_fanout_delivers_each_frame_once_and_keeps_a_flow_on_one_queue() {
    let (seen, _ns) = fanout_counts(Fanout::Hash, 200);
    each_once(&seen, 200);
    assert!(seen[0].is_empty() || seen[1].is_empty(), "one flow split: {} / {}", seen[0].len(), seen[1].len());
}

#[test]
fn vlan_tag_arrives_in_the_frame() {
    let _ns = veth();
    let (mut a, mut b) = (port("va", 1, Fanout::Hash), port("vb", 1, Fanout::Hash));
    let (mut qa, mut qb) = (a.take_queue(0).unwrap(), b.take_queue(0).unwrap());
    let pool = Pool::new("vlan", 64).unwrap();
    let mut f = pool.alloc().unwrap();
    let d = f.append(64).unwrap();
    d[..6].copy_from_slice(&MAC_A);
    d[6..12].copy_from_slice(&MAC_B);
    d[12..16].copy_from_slice(&[0x81, 0x00, 0x20, 0x0a]); // PCP 1, VID 10
    d[16..18].copy_from_slice(&ETH_TEST);
    d[18..].fill(0x5a);
    let want = d.to_vec();
    send_all(qb.as_mut(), vec![f]);
    let got = rx_until(qa.as_mut(), &pool, |g| g.iter().any(|b| b.data().starts_with(&want[..12])));
    let g = got.iter().find(|b| b.data().starts_with(&want[..12])).unwrap();
    assert_eq!(g.data(), &want[..]);
}

#[test]
fn bad_frames_are_counted_not_stuck_and_mtu_option_is_applied() {
    let ns = veth();
    let mut b =
        open("af_packet:vb", &PortOptions { queues: 1, fanout: Fanout::Hash, mtu: Some(1400), mac: None }).unwrap();
    assert_eq!(b.info().mtu, 1400);
    let (ok, out) = ns.ip_try("link show vb");
    assert!(ok && out.contains("mtu 1400"), "{out}");
    let mut qb = b.take_queue(0).unwrap();
    let pool = Pool::new("bad", 8).unwrap();
    let mut short = pool.alloc().unwrap();
    short.append(6).unwrap();
    let good = frame(&pool, MAC_A, MAC_B, 1, 60);
    let mut v = vec![short, good];
    assert_eq!(qb.tx_burst(&mut v), 2);
    let s = qb.stats();
    assert_eq!((s.tx_errors, s.tx_packets), (1, 1));
}

#[test]
fn errors_name_the_port() {
    let _ns = NetNs::enter("afperr");
    let e = open("af_packet:eth9", &PortOptions::default()).err().unwrap();
    assert_eq!(e.to_string(), "af_packet:eth9: no such interface (see `ip link`; is it in another network namespace?)");
    let e = open("af_packet:lo", &PortOptions::default()).err().unwrap();
    assert!(e.to_string().starts_with("af_packet:lo: not an Ethernet interface"), "{e}");
}
