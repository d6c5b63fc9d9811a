//! Tests: the kernel's `selftest/allowedips.c` hand cases, edge cases, and randomized runs
//! against a naive linear model (the kernel's "horrible_allowedips").

use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn ip6(a: u32, b: u32, c: u32, d: u32) -> IpAddr {
    let v = u128::from(a) << 96 | u128::from(b) << 64 | u128::from(c) << 32 | u128::from(d);
    IpAddr::V6(Ipv6Addr::from(v))
}

/// Peers of the kernel selftest.
const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;
const D: u32 = 4;
const E: u32 = 5;
const F: u32 = 6;
const G: u32 = 7;
const H: u32 = 8;

fn kernel_selftest_table() -> AllowedIps<u32> {
    let mut t = AllowedIps::new();
    let ins = |t: &mut AllowedIps<u32>, peer, addr, cidr| t.insert(addr, cidr, peer).unwrap();
    ins(&mut t, A, ip4(192, 168, 4, 0), 24);
    ins(&mut t, B, ip4(192, 168, 4, 4), 32);
    ins(&mut t, C, ip4(192, 168, 0, 0), 16);
    ins(&mut t, D, ip4(192, 95, 5, 64), 27);
    // Replaces the previous entry, and masking the host bits is required.
    ins(&mut t, C, ip4(192, 95, 5, 65), 27);
    ins(&mut t, D, ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128);
    ins(&mut t, C, ip6(0x26075300, 0x60006b00, 0, 0), 64);
    ins(&mut t, E, ip4(0, 0, 0, 0), 0);
    ins(&mut t, E, ip6(0, 0, 0, 0), 0);
    // Replaces the previous entry.
    ins(&mut t, F, ip6(0, 0, 0, 0), 0);
    ins(&mut t, G, ip6(0x24046800, 0, 0, 0), 32);
    // Masking is required.
    ins(&mut t, H, ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef), 64);
    ins(&mut t, A, ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef), 128);
    ins(&mut t, C, ip6(0x24446800, 0x40e40800, 0xdeaebeef, 0x0defbeef), 128);
    ins(&mut t, B, ip6(0x24446800, 0xf0e40800, 0xeeaebeef, 0), 98);
    ins(&mut t, G, ip4(64, 15, 112, 0), 20);
    // Masking is required.
    ins(&mut t, H, ip4(64, 15, 123, 211), 25);
    ins(&mut t, A, ip4(10, 0, 0, 0), 25);
    ins(&mut t, B, ip4(10, 0, 0, 128), 25);
    ins(&mut t, A, ip4(10, 1, 0, 0), 30);
    ins(&mut t, B, ip4(10, 1, 0, 4), 30);
    ins(&mut t, C, ip4(10, 1, 0, 8), 29);
    ins(&mut t, D, ip4(10, 1, 0, 16), 29);
    t
}

#[test]
fn kernel_selftest_lookups() {
    let t = kernel_selftest_table();
    let cases = [
        (A, ip4(192, 168, 4, 20)),
        (A, ip4(192, 168, 4, 0)),
        (B, ip4(192, 168, 4, 4)),
        (C, ip4(192, 168, 200, 182)),
        (C, ip4(192, 95, 5, 68)),
        (E, ip4(192, 95, 5, 96)),
        (D, ip6(0x26075300, 0x60006b00, 0, 0xc05f0543)),
        (C, ip6(0x26075300, 0x60006b00, 0, 0xc02e01ee)),
        (F, ip6(0x26075300, 0x60006b01, 0, 0)),
        (G, ip6(0x24046800, 0x40040806, 0, 0x1006)),
        (G, ip6(0x24046800, 0x40040806, 0x1234, 0x5678)),
        (F, ip6(0x240467ff, 0x40040806, 0x1234, 0x5678)),
        (F, ip6(0x24046801, 0x40040806, 0x1234, 0x5678)),
        (H, ip6(0x24046800, 0x40040800, 0x1234, 0x5678)),
        (H, ip6(0x24046800, 0x40040800, 0, 0)),
        (H, ip6(0x24046800, 0x40040800, 0x10101010, 0x10101010)),
        (A, ip6(0x24046800, 0x40040800, 0xdeadbeef, 0xdeadbeef)),
        (G, ip4(64, 15, 116, 26)),
        (G, ip4(64, 15, 127, 3)),
        (G, ip4(64, 15, 123, 1)),
        (H, ip4(64, 15, 123, 128)),
        (H, ip4(64, 15, 123, 129)),
        (A, ip4(10, 0, 0, 52)),
        (B, ip4(10, 0, 0, 220)),
        (A, ip4(10, 1, 0, 2)),
        (B, ip4(10, 1, 0, 6)),
        (C, ip4(10, 1, 0, 10)),
        (D, ip4(10, 1, 0, 20)),
    ];
    for (i, (peer, addr)) in cases.into_iter().enumerate() {
        assert_eq!(t.lookup(addr), Some(peer), "case {i}: {addr}");
    }
    // 23 inserts, two of which replaced an existing prefix.
    assert_eq!(t.len(), 21);
    // The replaced /27 moved from D to C.
    assert!(t.iter_peer(D).all(|e| e != (ip4(192, 95, 5, 64), 27)));
    assert!(t.iter_peer(C).any(|e| e == (ip4(192, 95, 5, 64), 27)));
    assert_eq!(t.iter_peer(E).collect::<Vec<_>>(), vec![(ip4(0, 0, 0, 0), 0)]);
}

#[test]
fn kernel_selftest_remove_by_peer() {
    let mut t = kernel_selftest_table();
    for first in [1, 64, 128, 192, 255] {
        t.insert(ip4(first, 0, 0, 0), 32, A).unwrap();
    }
    t.remove_peer(A);
    for first in [1, 64, 128, 192, 255] {
        assert_ne!(t.lookup(ip4(first, 0, 0, 0)), Some(A));
        // The default route of E shows through again.
        assert_eq!(t.lookup(ip4(first, 0, 0, 0)), Some(E));
    }
    assert_eq!(t.iter_peer(A).count(), 0);

    let mut t = AllowedIps::new();
    t.insert(ip4(192, 168, 0, 0), 16, A).unwrap();
    t.insert(ip4(192, 168, 0, 0), 24, A).unwrap();
    t.remove_peer(A);
    assert_eq!(t.lookup(ip4(192, 168, 0, 1)), None);
    assert!(t.is_empty());
    assert_eq!(t.stats().v4_nodes, 0, "empty table keeps no nodes");
}

#[test]
fn kernel_selftest_v6_single_bit_siblings() {
    // 128 /128s each differing from all-ones in one bit: the deepest splits there are.
    let mut t = AllowedIps::new();
    for i in 0..128u32 {
        let addr = !(1u128 << i);
        t.insert(IpAddr::V6(addr.into()), 128, i).unwrap();
    }
    assert_eq!(t.len(), 128);
    for i in 0..128u32 {
        assert_eq!(t.lookup_v6((!(1u128 << i)).into()), Some(i));
    }
    assert_eq!(t.lookup_v6(Ipv6Addr::from(u128::MAX)), None);
    assert!(t.stats().v6_nodes <= 2 * 128 + 1);
    for i in 0..128u32 {
        assert!(t.remove(IpAddr::V6((!(1u128 << i)).into()), 128, i));
    }
    assert!(t.is_empty());
    assert_eq!(t.stats().v6_nodes, 0);
}

#[test]
fn kernel_selftest_iteration_masks_and_orders() {
    let mut t = AllowedIps::new();
    t.insert(ip4(192, 95, 5, 93), 27, A).unwrap();
    t.insert(ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128, A).unwrap();
    t.insert(ip4(10, 1, 0, 20), 29, A).unwrap();
    t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 83, A).unwrap();
    t.insert(ip6(0x26075300, 0x6d8a6bf8, 0xdab1f1df, 0xc05f1523), 21, A).unwrap();
    let got: Vec<_> = t.iter_peer(A).collect();
    assert_eq!(
        got,
        vec![
            (ip4(192, 95, 5, 64), 27),
            (ip6(0x26075300, 0x60006b00, 0, 0xc05f0543), 128),
            (ip4(10, 1, 0, 16), 29),
            (ip6(0x26075300, 0x6d8a6bf8, 0xdab1e000, 0), 83),
            (ip6(0x26075000, 0, 0, 0), 21),
        ]
    );
}

#[test]
fn default_routes_and_exact_hosts() {
    let mut t = AllowedIps::new();
    assert_eq!(t.lookup(ip4(1, 2, 3, 4)), None, "empty table");
    t.insert(ip4(8, 8, 8, 8), 0, 1u32).unwrap();
    t.insert(ip6(0xffff, 1, 2, 3), 0, 2).unwrap();
    assert_eq!(t.iter_peer(1).collect::<Vec<_>>(), vec![(ip4(0, 0, 0, 0), 0)]);
    assert_eq!(t.lookup(ip4(255, 255, 255, 255)), Some(1));
    assert_eq!(t.lookup(ip4(0, 0, 0, 0)), Some(1));
    assert_eq!(t.lookup(ip6(0, 0, 0, 0)), Some(2));
    assert_eq!(t.lookup(ip6(u32::MAX, u32::MAX, u32::MAX, u32::MAX)), Some(2));
    t.insert(ip4(255, 255, 255, 255), 32, 3).unwrap();
    t.insert(ip6(u32::MAX, u32::MAX, u32::MAX, u32::MAX), 128, 4).unwrap();
    assert_eq!(t.lookup(ip4(255, 255, 255, 255)), Some(3));
    assert_eq!(t.lookup(ip4(255, 255, 255, 254)), Some(1));
    assert_eq!(t.lookup(ip6(u32::MAX, u32::MAX, u32::MAX, u32::MAX)), Some(4));
    assert_eq!(t.lookup(ip6(u32::MAX, u32::MAX, u32::MAX, u32::MAX - 1)), Some(2));
    // Families do not leak into each other.
    assert!(t.remove(ip4(0, 0, 0, 0), 0, 1));
    assert_eq!(t.lookup(ip4(1, 1, 1, 1)), None);
    assert_eq!(t.lookup(ip6(0, 0, 0, 1)), Some(2));
    t.clear();
    assert!(t.is_empty());
    assert_eq!(t.lookup(ip6(0, 0, 0, 1)), None);
    assert_eq!(t.iter_peer(2).count(), 0);
}

#[test]
fn batch_lookup_of_empty_table_and_short_output() {
    let mut t = AllowedIps::<u32>::new();
    let addrs = [Ipv4Addr::new(1, 2, 3, 4); 20];
    let mut out = [Some(9); 20];
    t.lookup_v4_batch(&addrs, &mut out);
    assert_eq!(out, [None; 20]);
    t.insert(ip4(1, 2, 0, 0), 16, 5).unwrap();
    let mut short = [None; 11];
    t.lookup_v4_batch(&addrs, &mut short);
    assert_eq!(short, [Some(5); 11]);
    let mut out6 = [Some(9); 3];
    t.lookup_v6_batch(&[Ipv6Addr::LOCALHOST; 2], &mut out6);
    assert_eq!(out6, [None, None, Some(9)]);
}

#[test]
fn invalid_cidr_is_an_error() {
    let mut t = AllowedIps::new();
    assert_eq!(t.insert(ip4(10, 0, 0, 0), 33, 1u32), Err(AllowedIpsError::InvalidCidr { cidr: 33, max: 32 }));
    assert_eq!(t.insert(ip6(0, 0, 0, 0), 129, 1), Err(AllowedIpsError::InvalidCidr { cidr: 129, max: 128 }));
    assert_eq!(
        t.insert(ip6(0, 0, 0, 0), 255, 1).unwrap_err().to_string(),
        "prefix length /255 is longer than the 128-bit address"
    );
    assert!(!t.remove(ip4(10, 0, 0, 0), 33, 1));
    assert!(t.is_empty());
    assert_eq!(t.iter_peer(1).count(), 0);
}

#[test]
fn remove_needs_the_owning_peer_and_falls_back() {
    let mut t = AllowedIps::new();
    t.insert(ip4(10, 0, 0, 0), 8, 1u32).unwrap();
    t.insert(ip4(10, 1, 0, 0), 16, 2).unwrap();
    t.insert(ip4(10, 1, 2, 0), 24, 3).unwrap();
    assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(3));
    assert!(!t.remove(ip4(10, 1, 2, 0), 24, 2), "wrong peer");
    assert!(!t.remove(ip4(10, 1, 2, 0), 23, 3), "wrong length");
    assert!(t.remove(ip4(10, 1, 2, 99), 24, 3), "host bits are masked on removal too");
    assert!(!t.remove(ip4(10, 1, 2, 0), 24, 3), "already gone");
    assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(2));
    assert!(t.remove(ip4(10, 1, 0, 0), 16, 2));
    assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(1));
    // Replacement moves the prefix between peers' lists.
    t.insert(ip4(10, 9, 9, 9), 8, 4).unwrap();
    assert_eq!(t.iter_peer(1).count(), 0);
    assert!(!t.remove(ip4(10, 0, 0, 0), 8, 1));
    assert_eq!(t.lookup(ip4(10, 1, 2, 3)), Some(4));
    assert_eq!(t.len(), 1);
    t.remove_peer(1);
    assert_eq!(t.len(), 1);
    t.remove_peer(4);
    assert!(t.is_empty());
}

#[test]
fn nested_short_prefixes_fall_back_in_order() {
    // Prefixes shorter than the direct table's 12 bits are expanded into its slots; removing
    // one must uncover the next shorter one, in both families.
    let mut t = AllowedIps::new();
    for (cidr, peer) in [(0, 10u32), (4, 14), (8, 18), (11, 21), (12, 22), (20, 30)] {
        t.insert(ip4(10, 31, 255, 255), cidr, peer).unwrap();
        t.insert(ip6(0x0a1f_ffff, 0, 0, 1), cidr, 100 + peer).unwrap();
    }
    let (a4, a6) = (ip4(10, 31, 255, 1), ip6(0x0a1f_ffff, 9, 9, 9));
    for (cidr, next) in [(20, 22), (12, 21), (8, 21), (11, 14), (4, 10), (0, 0)] {
        assert!(t.remove(ip4(10, 31, 255, 255), cidr, if cidr == 0 { 10 } else { u32::from(cidr) + 10 }));
        assert!(t.remove(ip6(0x0a1f_ffff, 0, 0, 1), cidr, if cidr == 0 { 110 } else { u32::from(cidr) + 110 }));
        let want = |base: u32| if next == 0 { None } else { Some(base + next) };
        assert_eq!(t.lookup(a4), want(0), "v4 after removing /{cidr}");
        assert_eq!(t.lookup(a6), want(100), "v6 after removing /{cidr}");
    }
    assert!(t.is_empty());
    // A short prefix elsewhere leaves other slots alone.
    t.insert(ip4(128, 0, 0, 0), 1, 1).unwrap();
    t.insert(ip4(192, 0, 0, 0), 2, 2).unwrap();
    assert_eq!(t.lookup(ip4(127, 255, 255, 255)), None);
    assert_eq!(t.lookup(ip4(128, 0, 0, 0)), Some(1));
    assert_eq!(t.lookup(ip4(191, 255, 255, 255)), Some(1));
    assert_eq!(t.lookup(ip4(192, 0, 0, 0)), Some(2));
    t.insert(ip4(128, 0, 0, 0), 1, 3).unwrap();
    assert_eq!(t.lookup(ip4(130, 0, 0, 0)), Some(3), "replacing a short prefix updates its slots");
    assert_eq!(t.lookup(ip4(200, 0, 0, 0)), Some(2));
}

#[test]
fn reinsert_moves_to_tail_like_the_kernel() {
    let mut t = AllowedIps::new();
    t.insert(ip4(10, 0, 0, 1), 32, 1u32).unwrap();
    t.insert(ip4(10, 0, 0, 2), 32, 1).unwrap();
    t.insert(ip4(10, 0, 0, 1), 32, 1).unwrap();
    assert_eq!(t.iter_peer(1).collect::<Vec<_>>(), vec![(ip4(10, 0, 0, 2), 32), (ip4(10, 0, 0, 1), 32)]);
    assert_eq!(t.len(), 2);
}

/// The kernel's "horrible_allowedips": a list, most specific match wins.
#[derive(Default)]
struct Model {
    /// (network as u128, cidr, is_v6, peer, insertion sequence)
    entries: Vec<(u128, u8, bool, u32, u64)>,
    seq: u64,
}

fn bits(addr: IpAddr) -> (u128, bool, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), false, 32),
        IpAddr::V6(a) => (u128::from(a), true, 128),
    }
}

fn mask(v: u128, cidr: u8, width: u8) -> u128 {
    if cidr == 0 {
        0
    } else {
        v & (u128::MAX >> (128 - width)) & !((1u128 << (width - cidr)).wrapping_sub(1))
    }
}

fn to_addr(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    }
}

impl Model {
    fn insert(&mut self, addr: IpAddr, cidr: u8, peer: u32) {
        let (v, v6, w) = bits(addr);
        let net = mask(v, cidr, w);
        self.seq += 1;
        let seq = self.seq;
        match self.entries.iter_mut().find(|e| e.0 == net && e.1 == cidr && e.2 == v6) {
            Some(e) => {
                e.3 = peer;
                e.4 = seq;
            }
            None => self.entries.push((net, cidr, v6, peer, seq)),
        }
    }
    fn remove(&mut self, addr: IpAddr, cidr: u8, peer: u32) -> bool {
        let (v, v6, w) = bits(addr);
        let net = mask(v, cidr, w);
        let before = self.entries.len();
        self.entries.retain(|e| !(e.0 == net && e.1 == cidr && e.2 == v6 && e.3 == peer));
        before != self.entries.len()
    }
    fn remove_peer(&mut self, peer: u32) {
        self.entries.retain(|e| e.3 != peer);
    }
    fn lookup(&self, addr: IpAddr) -> Option<u32> {
        let (v, v6, w) = bits(addr);
        self.entries.iter().filter(|e| e.2 == v6 && mask(v, e.1, w) == e.0).max_by_key(|e| e.1).map(|e| e.3)
    }
    fn iter_peer(&self, peer: u32) -> Vec<(IpAddr, u8)> {
        let mut mine: Vec<_> = self.entries.iter().filter(|e| e.3 == peer).collect();
        mine.sort_by_key(|e| e.4);
        mine.into_iter().map(|e| (to_addr(e.0, e.2), e.1)).collect()
    }
}

/// A random address of the family, often derived from `near` (sharing a random number of
/// leading bits) so prefixes cluster and split each other.
fn random_addr(rng: &mut ChaCha20Rng, v6: bool, near: Option<u128>) -> IpAddr {
    let width = if v6 { 128 } else { 32 };
    let fresh: u128 = rng.gen::<u128>() & (u128::MAX >> (128 - width));
    let v = match near {
        Some(base) if rng.gen_bool(0.7) => {
            let keep = rng.gen_range(0..=width);
            mask(base, keep, width) | (fresh & !mask(u128::MAX, keep, width))
        }
        _ => fresh,
    };
    to_addr(v, v6)
}

/// Prefix length, biased toward the interesting middle but covering 0 and the full width.
fn random_cidr(rng: &mut ChaCha20Rng, v6: bool) -> u8 {
    let width = if v6 { 128 } else { 32 };
    match rng.gen_range(0..10) {
        0 => 0,
        1 => width,
        2..=4 => rng.gen_range(0..=width),
        _ => rng.gen_range(width / 4..=width / 4 * 3),
    }
}

fn check_lookups(t: &AllowedIps<u32>, m: &Model, rng: &mut ChaCha20Rng, v6: bool, count: usize) {
    let nets: Vec<_> = m.entries.iter().filter(|e| e.2 == v6).map(|e| e.0).collect();
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        let near = if nets.is_empty() { None } else { Some(nets[rng.gen_range(0..nets.len())]) };
        // Half inside or next to inserted networks, half uniformly random.
        let near = if rng.gen_bool(0.5) { near } else { None };
        let addr = random_addr(rng, v6, near);
        assert_eq!(t.lookup(addr), m.lookup(addr), "lookup {addr}");
        addrs.push(addr);
    }
    // The batched lookup agrees, including a ragged last group of lanes.
    let len = count - 3;
    let mut out = vec![Some(u32::MAX); count];
    if v6 {
        let a: Vec<Ipv6Addr> = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V6(a) => *a,
                _ => unreachable!(),
            })
            .collect();
        t.lookup_v6_batch(&a[..len], &mut out);
    } else {
        let a: Vec<Ipv4Addr> = addrs
            .iter()
            .map(|a| match a {
                IpAddr::V4(a) => *a,
                _ => unreachable!(),
            })
            .collect();
        t.lookup_v4_batch(&a[..len], &mut out);
    }
    for (i, addr) in addrs.iter().enumerate() {
        let want = if i < len { m.lookup(*addr) } else { Some(u32::MAX) };
        assert_eq!(out[i], want, "batched lookup {i} {addr}");
    }
}

fn randomized(seed: u64, v6: bool, rounds: usize) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut t = AllowedIps::new();
    let mut m = Model::default();
    let peers = 40u32;
    let mut inserted: Vec<(IpAddr, u8)> = Vec::new();
    for round in 0..rounds {
        // Grow by about 400 prefixes, half of them close to existing ones.
        for _ in 0..400 {
            let near = inserted.last().map(|&(a, _)| bits(a).0);
            let near = if rng.gen_bool(0.5) { near } else { None };
            let addr = random_addr(&mut rng, v6, near);
            let cidr = random_cidr(&mut rng, v6);
            let peer = rng.gen_range(0..peers);
            t.insert(addr, cidr, peer).unwrap();
            m.insert(addr, cidr, peer);
            inserted.push((addr, cidr));
        }
        check_lookups(&t, &m, &mut rng, v6, 2000);
        // Replace some existing prefixes (host bits varied), remove some with the right peer
        // and some with a wrong one.
        for _ in 0..100 {
            let (addr, cidr) = inserted[rng.gen_range(0..inserted.len())];
            let peer = rng.gen_range(0..peers);
            t.insert(addr, cidr, peer).unwrap();
            m.insert(addr, cidr, peer);
        }
        for _ in 0..150 {
            let (addr, cidr) = inserted[rng.gen_range(0..inserted.len())];
            let owner = m.lookup_exact(addr, cidr);
            let peer = match owner {
                Some(p) if rng.gen_bool(0.8) => p,
                _ => rng.gen_range(0..peers),
            };
            assert_eq!(t.remove(addr, cidr, peer), m.remove(addr, cidr, peer), "remove {addr}/{cidr} {peer}");
        }
        check_lookups(&t, &m, &mut rng, v6, 2000);
        // Drop a whole peer.
        let gone = rng.gen_range(0..peers);
        t.remove_peer(gone);
        m.remove_peer(gone);
        assert_eq!(t.iter_peer(gone).count(), 0);
        check_lookups(&t, &m, &mut rng, v6, 2000);
        // Every other round, repack; later rounds then mutate the repacked arenas.
        if round % 2 == 1 {
            let before = t.memory_bytes();
            t.compact();
            assert!(t.memory_bytes() <= before);
            check_lookups(&t, &m, &mut rng, v6, 2000);
        }
        assert_eq!(t.len(), m.entries.len(), "round {round}");
        for peer in 0..peers {
            assert_eq!(t.iter_peer(peer).collect::<Vec<_>>(), m.iter_peer(peer), "peer {peer}");
        }
        let s = t.stats();
        let (nodes, len) = if v6 { (s.v6_nodes, s.v6_prefixes) } else { (s.v4_nodes, s.v4_prefixes) };
        assert!(nodes <= 2 * len + 1, "{nodes} nodes for {len} prefixes: not canonical");
    }
    for peer in 0..peers {
        t.remove_peer(peer);
    }
    assert!(t.is_empty());
    let s = t.stats();
    assert_eq!((s.v4_nodes, s.v6_nodes), (0, 0));
}

impl Model {
    fn lookup_exact(&self, addr: IpAddr, cidr: u8) -> Option<u32> {
        let (v, v6, w) = bits(addr);
        let net = mask(v, cidr, w);
        self.entries.iter().find(|e| e.0 == net && e.1 == cidr && e.2 == v6).map(|e| e.3)
    }
}

#[test]
fn randomized_v4_against_linear_model() {
    randomized(0x4a11_0ed4, false, 6);
}

#[test]
fn randomized_v6_against_linear_model() {
    randomized(0x4a11_0ed6, true, 6);
}

#[test]
fn randomized_dense_v4_against_linear_model() {
    // A few thousand prefixes packed under one /16: deep, crowded nodes and many splits.
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let mut t = AllowedIps::new();
    let mut m = Model::default();
    for _ in 0..3000 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a0b_0000 | rng.gen::<u32>() & 0xffff));
        let cidr = rng.gen_range(16..=32);
        let peer = rng.gen_range(0..8);
        t.insert(addr, cidr, peer).unwrap();
        m.insert(addr, cidr, peer);
    }
    for _ in 0..5000 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a0b_0000 | rng.gen::<u32>() & 0x1_ffff));
        assert_eq!(t.lookup(addr), m.lookup(addr), "{addr}");
    }
    t.remove_peer(3);
    m.remove_peer(3);
    for _ in 0..5000 {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0a0b_0000 | rng.gen::<u32>() & 0xffff));
        assert_eq!(t.lookup(addr), m.lookup(addr), "{addr}");
    }
    assert_eq!(t.len(), m.entries.len());
}

#[test]
fn memory_per_prefix_is_small() {
    // 100k random IPv4 /16../32 and IPv6 /32../128: bytes per prefix, tries alone and with the
    // per-peer index, before and after compaction.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut t = AllowedIps::new();
    for i in 0..100_000u32 {
        t.insert(IpAddr::V4(rng.gen::<u32>().into()), rng.gen_range(16..=32), i % 1000).unwrap();
    }
    for i in 0..100_000u32 {
        t.insert(IpAddr::V6(rng.gen::<u128>().into()), rng.gen_range(32..=128), i % 1000).unwrap();
    }
    let per_prefix = |s: AllowedIpsStats| {
        (
            s.v4_trie_bytes as f64 / s.v4_prefixes as f64,
            s.v6_trie_bytes as f64 / s.v6_prefixes as f64,
            s.total_bytes as f64 / (s.v4_prefixes + s.v6_prefixes) as f64,
        )
    };
    let grown = per_prefix(t.stats());
    let probe: Vec<IpAddr> = (0..1000).map(|_| IpAddr::V4(rng.gen::<u32>().into())).collect();
    let answers: Vec<_> = probe.iter().map(|&a| t.lookup(a)).collect();
    t.compact();
    let packed = per_prefix(t.stats());
    eprintln!("{:?}\nB/prefix v4 trie, v6 trie, all-in: grown {grown:.1?}, compacted {packed:.1?}", t.stats());
    assert_eq!(probe.iter().map(|&a| t.lookup(a)).collect::<Vec<_>>(), answers);
    assert!(grown.0 < 60.0 && grown.1 < 100.0 && grown.2 < 130.0, "{grown:?}");
    assert!(packed.0 < 45.0 && packed.1 < 75.0 && packed.2 < 100.0, "{packed:?}");
}

#[test]
fn churn_keeps_memory_bounded_and_answers_right() {
    // 20k prefixes, then rounds replacing a tenth of them: recycled blocks (and repacking,
    // were they not enough) keep the tables from growing with the number of updates, and
    // lookups stay exact throughout.
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut t = AllowedIps::new();
    let mut m = Model::default();
    let mut live: Vec<(IpAddr, u8, u32)> = Vec::new();
    let fresh = |rng: &mut ChaCha20Rng, i: u32| {
        let v6 = i % 2 == 1;
        let addr = random_addr(rng, v6, None);
        let cidr = if v6 { rng.gen_range(32..=128) } else { rng.gen_range(8..=32) };
        (addr, cidr, i % 5000)
    };
    for i in 0..20_000 {
        let (a, c, p) = fresh(&mut rng, i);
        t.insert(a, c, p).unwrap();
        m.insert(a, c, p);
        live.push((a, c, p));
    }
    let mut peak = 0;
    for round in 0..30u32 {
        for k in 0..2000u32 {
            let victim = rng.gen_range(0..live.len());
            let (a, c, p) = live.swap_remove(victim);
            assert_eq!(t.remove(a, c, p), m.remove(a, c, p));
            let (a, c, p) = fresh(&mut rng, round * 2000 + k);
            t.insert(a, c, p).unwrap();
            m.insert(a, c, p);
            live.push((a, c, p));
        }
        if round >= 10 {
            peak = peak.max(t.memory_bytes());
        }
    }
    assert_eq!(t.len(), m.entries.len());
    check_lookups(&t, &m, &mut rng, false, 1000);
    check_lookups(&t, &m, &mut rng, true, 1000);
    let settled = t.memory_bytes();
    t.compact();
    let packed = t.memory_bytes();
    eprintln!("churn: peak {peak} B, settled {settled} B, compacted {packed} B");
    assert!(peak < packed * 2, "churn grew the table to {peak} B against {packed} B packed");
}

#[test]
fn node_layout_stays_compact() {
    // The memory figures in the module doc assume these sizes (u32 peer ids).
    assert_eq!(core::mem::size_of::<trie::Node<u32, Route<u32>>>(), 40);
    assert_eq!(core::mem::size_of::<trie::Node<u128, Route<u32>>>(), 56);
}
