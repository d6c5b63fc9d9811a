//! Fuzz body for a device with live sessions: the device under test (D) and a real peer (I, the
//! same code on the other side) exchange data, handshakes, cookies and keepalives over a
//! simulated network, and the input is a script of operations on them: data each way, replays and
//! forgeries of recorded messages, messages from another address (roaming), time jumps that fire
//! the timers (rekey, keepalive, retransmission, key expiry), handshakes started by either side,
//! load that makes D answer with cookies, and a network that loses, duplicates and reorders.
//!
//! The input is 4-byte operations `[op, a, b, c]` (see [`device_live`]). Checks, on every step
//! (a panic is a finding):
//! - what D opens from I is exactly what I sealed, and what I opens from D is what D sealed;
//! - a data message D has opened never opens again (replay), and a message that differs from
//!   what I sealed anywhere but the three reserved header bytes never opens (forgery);
//! - after an opened message, D's endpoint for I is the source it came from (roaming);
//! - D's counters never go backwards;
//! - when the script asks for it (the two low bits of the first byte), the end of the run heals: with the
//!   network clean and time moved past the rate limits, a handshake completes and data flows
//!   both ways again, whatever the script did to the state.
//!
//! The pair is kept across inputs (building it costs a handshake) and rebuilt every
//! [`RESET_EVERY`] inputs and when its clock passes 30 minutes, so a finding may need the inputs
//! before it: replay the corpus in order (the stable test does).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::device::HashDrbg;
use crate::crypto::PrivateKey;
use crate::device::{Device, Event, Output, PeerId, Stats};
use crate::messages::MESSAGE_DATA;
use crate::time::Timestamp;

/// The pair is rebuilt after this many inputs.
pub const RESET_EVERY: u64 = 256;

const D_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const I_ADDRS: [SocketAddr; 4] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), 40000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51821),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)), 51820),
];
const D_INNER: [u8; 4] = [10, 0, 0, 1];
const I_INNER: [u8; 4] = [10, 0, 0, 2];
const HISTORY: usize = 16;

/// A data message I sealed for D, and its inner packet.
struct Sent {
    msg: Vec<u8>,
    inner: Vec<u8>,
    opened: bool,
}

struct Pair {
    d: Device,
    i: Device,
    dp: PeerId,
    ip: PeerId,
    rng: HashDrbg,
    now: Timestamp,
    d_out: Output,
    i_out: Output,
    /// Handshake-stage and keepalive messages in flight: (to D?, source, bytes).
    net: Vec<(bool, SocketAddr, Vec<u8>)>,
    history: Vec<Sent>,
    /// Handshake messages seen on the wire, for forgeries.
    handshakes: Vec<Vec<u8>>,
    /// I's current source address.
    i_addr: SocketAddr,
    under_load: bool,
    inputs: u64,
    last_stats: Stats,
}

fn pair() -> &'static Mutex<Pair> {
    static P: OnceLock<Mutex<Pair>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Pair::new()))
}

fn inner(src: [u8; 4], dst: [u8; 4], len: usize, fill: [u8; 3]) -> Vec<u8> {
    let mut p = vec![0u8; len.max(20)];
    p[0] = 0x45;
    let l = p.len() as u16;
    p[2..4].copy_from_slice(&l.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    for (k, b) in p[20..].iter_mut().enumerate() {
        *b = fill[k % 3] ^ (k as u8);
    }
    p
}

/// Room for a data message of `plain` bytes: header, padding to 16, tag.
fn buffer(plain: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 16 + plain.len() + 16 + 16];
    b[16..16 + plain.len()].copy_from_slice(plain);
    b
}

impl Pair {
    fn new() -> Pair {
        let mut rng = HashDrbg::new(4);
        let now = Timestamp::from_secs(1);
        let (kd, ki) = (PrivateKey::from_bytes([0x61; 32]), PrivateKey::from_bytes([0x62; 32]));
        let (pd, pi) = (kd.public_key(), ki.public_key());
        let mut d = Device::new(&mut rng, 1_700_000_000_000_000_000);
        d.set_private_key(Some(kd));
        let dp = d.add_peer(&mut rng, pi).expect("peer");
        d.add_allowed_ip(dp, IpAddr::V4(Ipv4Addr::from(I_INNER)), 32).expect("allowed");
        let mut i = Device::new(&mut rng, 1_700_000_000_000_000_000);
        i.set_private_key(Some(ki));
        let ip = i.add_peer(&mut rng, pd).expect("peer");
        i.set_endpoint(ip, D_ADDR).expect("endpoint");
        i.add_allowed_ip(ip, IpAddr::V4(Ipv4Addr::from(D_INNER)), 32).expect("allowed");
        let mut p = Pair {
            d,
            i,
            dp,
            ip,
            rng,
            now,
            d_out: Output::with_capacity(16),
            i_out: Output::with_capacity(16),
            net: Vec::new(),
            history: Vec::new(),
            handshakes: Vec::new(),
            i_addr: I_ADDRS[0],
            under_load: false,
            inputs: 0,
            last_stats: Stats::default(),
        };
        p.i.initiate(p.now, &mut p.rng, p.ip, &mut p.i_out).expect("initiate");
        p.collect();
        p.deliver_all(None);
        assert!(p.i_to_d([1, 2, 3], 60), "the pair starts with a session");
        p
    }

    /// Moves what both outputs hold onto the network and acts on the events (a handshake
    /// wanted is started, a session ready is confirmed with a keepalive).
    fn collect(&mut self) {
        for _ in 0..4 {
            for t in self.d_out.transmits.drain(..) {
                self.handshakes.push(t.payload().to_vec());
                self.net.push((false, D_ADDR, t.payload().to_vec()));
            }
            for t in self.i_out.transmits.drain(..) {
                self.handshakes.push(t.payload().to_vec());
                self.net.push((true, self.i_addr, t.payload().to_vec()));
            }
            if self.handshakes.len() > HISTORY {
                let extra = self.handshakes.len() - HISTORY;
                self.handshakes.drain(..extra);
            }
            let (de, ie): (Vec<Event>, Vec<Event>) =
                (self.d_out.events.drain(..).collect(), self.i_out.events.drain(..).collect());
            if de.is_empty() && ie.is_empty() {
                break;
            }
            for e in de {
                match e {
                    Event::HandshakeWanted(id) => {
                        let _ = self.d.initiate(self.now, &mut self.rng, id, &mut self.d_out);
                    }
                    Event::SessionReady(id) => {
                        let _ = self.d.send_keepalive(self.now, id, &mut self.d_out);
                    }
                    _ => {}
                }
            }
            for e in ie {
                match e {
                    Event::HandshakeWanted(id) => {
                        let _ = self.i.initiate(self.now, &mut self.rng, id, &mut self.i_out);
                    }
                    Event::SessionReady(id) => {
                        let _ = self.i.send_keepalive(self.now, id, &mut self.i_out);
                    }
                    _ => {}
                }
            }
        }
        self.d_out.events.clear();
        self.i_out.events.clear();
        self.net.truncate(64);
    }

    /// One message to D from `src`.
    fn deliver_to_d(&mut self, src: SocketAddr, msg: &mut [u8]) {
        if msg.first() == Some(&MESSAGE_DATA) {
            if let Ok(r) = self.d.decapsulate(self.now, src, msg, &mut self.d_out) {
                assert_eq!(r.peer, self.dp);
                assert_eq!(self.d.peer(self.dp).and_then(|p| p.endpoint()), Some(src), "endpoint after roaming");
            }
        } else {
            let _ = self.d.receive_handshake(self.now, &mut self.rng, src, msg, self.under_load, &mut self.d_out);
        }
    }

    /// One message to I (from D's address).
    fn deliver_to_i(&mut self, msg: &mut [u8]) {
        if msg.first() == Some(&MESSAGE_DATA) {
            let _ = self.i.decapsulate(self.now, D_ADDR, msg, &mut self.i_out);
        } else {
            let _ = self.i.receive_handshake(self.now, &mut self.rng, D_ADDR, msg, false, &mut self.i_out);
        }
    }

    /// Delivers the network (`mode`: None = everything in order; else bits: 1 drop the first,
    /// 2 reverse, 4 duplicate the first), collecting replies, a few rounds.
    fn deliver_all(&mut self, mode: Option<u8>) {
        for round in 0..6 {
            let mut batch: Vec<_> = self.net.drain(..).collect();
            if batch.is_empty() {
                break;
            }
            if let (Some(m), 0) = (mode, round) {
                if m & 4 != 0 {
                    let first = batch[0].clone();
                    batch.push(first);
                }
                if m & 2 != 0 {
                    batch.reverse();
                }
                if m & 1 != 0 {
                    batch.remove(0);
                }
            }
            for (to_d, src, mut msg) in batch {
                if to_d {
                    self.deliver_to_d(src, &mut msg);
                } else {
                    self.deliver_to_i(&mut msg);
                }
            }
            self.collect();
        }
    }

    /// I seals a packet for D and D opens it now; true if D opened it (and it was intact).
    fn i_to_d(&mut self, fill: [u8; 3], len: usize) -> bool {
        let Some(k) = self.seal_i(fill, len) else { return false };
        self.open_at_d(k, self.i_addr)
    }

    /// I seals a packet for D into the history; its index there.
    fn seal_i(&mut self, fill: [u8; 3], len: usize) -> Option<usize> {
        let plain = inner(I_INNER, D_INNER, len, fill);
        let mut buf = buffer(&plain);
        let r = self.i.encapsulate(self.now, &mut buf, plain.len(), &mut self.i_out);
        self.collect();
        let e = r.ok()?;
        buf.truncate(e.len);
        if self.history.len() == HISTORY {
            self.history.remove(0);
        }
        self.history.push(Sent { msg: buf, inner: plain, opened: false });
        Some(self.history.len() - 1)
    }

    /// D opens the history's message `k` from `src`; the checks of the module doc.
    fn open_at_d(&mut self, k: usize, src: SocketAddr) -> bool {
        let mut msg = self.history[k].msg.clone();
        let r = self.d.decapsulate(self.now, src, &mut msg, &mut self.d_out);
        self.collect();
        match r {
            Ok(r) => {
                assert!(!self.history[k].opened, "a data message opened twice (replay)");
                assert_eq!(&msg[r.range.clone()], &self.history[k].inner[..], "D opened other bytes than I sealed");
                assert_eq!(self.d.peer(self.dp).and_then(|p| p.endpoint()), Some(src), "endpoint after roaming");
                self.history[k].opened = true;
                true
            }
            Err(_) => false,
        }
    }

    /// D seals for I, I opens at once; true if I got exactly the packet.
    fn d_to_i(&mut self, fill: [u8; 3], len: usize) -> bool {
        let plain = inner(D_INNER, I_INNER, len, fill);
        let mut buf = buffer(&plain);
        let r = self.d.encapsulate(self.now, &mut buf, plain.len(), &mut self.d_out);
        self.collect();
        let Ok(e) = r else { return false };
        assert_eq!(e.to, self.d.peer(self.dp).and_then(|p| p.endpoint()).expect("sealed without an endpoint"));
        buf.truncate(e.len);
        let r = self.i.decapsulate(self.now, D_ADDR, &mut buf, &mut self.i_out);
        self.collect();
        match r {
            Ok(r) => {
                assert_eq!(&buf[r.range], &plain[..], "I opened other bytes than D sealed");
                true
            }
            Err(_) => false,
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        let _ = self.d.poll_timers(self.now, &mut self.rng, self.dp, &mut self.d_out);
        let _ = self.i.poll_timers(self.now, &mut self.rng, self.ip, &mut self.i_out);
        self.collect();
    }

    fn check_counters(&mut self) {
        let s = self.d_out.stats.clone();
        let l = &self.last_stats;
        assert!(s.drops.iter().zip(l.drops.iter()).all(|(a, b)| a >= b), "a drop counter went backwards");
        assert!(
            s.mac1_valid >= l.mac1_valid
                && s.dh_operations >= l.dh_operations
                && s.aead_opened >= l.aead_opened
                && s.aead_sealed >= l.aead_sealed
                && s.sessions >= l.sessions,
            "a counter went backwards"
        );
        self.last_stats = s;
    }

    /// The network is clean and time passes the rate limits: a handshake from I completes and
    /// data flows both ways.
    fn heal(&mut self) {
        self.under_load = false;
        self.net.clear();
        self.i_addr = I_ADDRS[0];
        // Past I's own initiation rate limit (timers are not polled: they could spend it).
        self.now = self.now + Duration::from_secs(6);
        let _ = self.i.initiate(self.now, &mut self.rng, self.ip, &mut self.i_out);
        self.collect();
        self.deliver_all(None);
        assert!(self.i_to_d([7, 7, 7], 100), "no data from I to D after a clean handshake");
        assert!(self.d_to_i([8, 8, 8], 100), "no data from D to I after a clean handshake");
    }
}

/// What one script did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveReached {
    /// Data messages D opened.
    pub d_opened: u32,
    /// Data messages I opened from D.
    pub i_opened: u32,
    /// Handshakes completed by D (either role) during the script.
    pub sessions: u64,
    /// Cookie replies D sent.
    pub cookies: u64,
}

/// One script (see the module doc). Operations, `op % 12`:
/// 0 I→D data (length from `a`, source address from `b`); 1 D→I data; 2 replay a recorded
/// message; 3 forge one (byte `b` XOR `c`); 4 time passes (`a`·`b` in a unit chosen by `c`) and
/// timers fire; 5 I initiates; 6 D initiates; 7 the network delivers (`a`: drop/reverse/duplicate);
/// 8 D's load flips; 9 a recorded handshake message, forged, to D; 10 keepalives; 11 I seals a
/// burst of `a % 8 + 2` messages that D opens in an order from `b`.
pub fn device_live(data: &[u8]) -> LiveReached {
    let mut p = pair().lock().unwrap_or_else(|e| e.into_inner());
    p.inputs += 1;
    if p.inputs.is_multiple_of(RESET_EVERY) || p.now.as_nanos() > 1_800_000_000_000 {
        *p = Pair::new();
    }
    let p = &mut *p;
    let before = p.d_out.stats.clone();
    let mut reached = LiveReached::default();
    let heal = data.first().is_some_and(|b| b & 3 == 3);
    for op in data.get(1..).unwrap_or(&[]).chunks(4).take(64) {
        let [o, a, b, c] = [0, 1, 2, 3].map(|k| op.get(k).copied().unwrap_or(0));
        match o % 12 {
            0 => {
                p.i_addr = I_ADDRS[usize::from(b & 3)];
                if p.i_to_d([a, b, c], 20 + usize::from(a) * 5) {
                    reached.d_opened += 1;
                }
            }
            1 if p.d_to_i([a, b, c], 20 + usize::from(a) * 5) => reached.i_opened += 1,
            2 if !p.history.is_empty() => {
                let k = usize::from(a) % p.history.len();
                if p.open_at_d(k, I_ADDRS[usize::from(b & 3)]) {
                    reached.d_opened += 1;
                }
            }
            3 if !p.history.is_empty() => {
                let k = usize::from(a) % p.history.len();
                let mut msg = p.history[k].msg.clone();
                let at = usize::from(b) % msg.len();
                msg[at] ^= c | 1;
                let opened = p.d.decapsulate(p.now, p.i_addr, &mut msg, &mut p.d_out).is_ok();
                assert!(!opened || (1..4).contains(&at), "a forged data message opened (byte {at} changed)");
                if opened {
                    // Only the reserved bytes changed: that was the message itself.
                    assert!(!p.history[k].opened, "a data message opened twice (replay)");
                    p.history[k].opened = true;
                }
                p.collect();
            }
            4 => {
                let unit = match c % 4 {
                    0 => Duration::from_millis(1),
                    1 => Duration::from_millis(100),
                    2 => Duration::from_secs(1),
                    _ => Duration::from_secs(10),
                };
                p.advance(unit * u32::from(a % 32) * u32::from(b % 8 + 1));
            }
            5 => {
                let _ = p.i.initiate(p.now, &mut p.rng, p.ip, &mut p.i_out);
                p.collect();
            }
            6 => {
                let _ = p.d.initiate(p.now, &mut p.rng, p.dp, &mut p.d_out);
                p.collect();
            }
            7 => p.deliver_all(Some(a)),
            8 => p.under_load = a & 1 != 0,
            9 if !p.handshakes.is_empty() => {
                let k = usize::from(a) % p.handshakes.len();
                let mut msg = p.handshakes[k].clone();
                if c != 0 {
                    let at = usize::from(b) % msg.len();
                    msg[at] ^= c;
                }
                p.deliver_to_d(p.i_addr, &mut msg);
                p.collect();
            }
            10 => {
                let _ = p.i.send_keepalive(p.now, p.ip, &mut p.i_out);
                let _ = p.d.send_keepalive(p.now, p.dp, &mut p.d_out);
                p.collect();
                if a & 1 != 0 {
                    p.deliver_all(None);
                }
            }
            11 => {
                let n = usize::from(a % 8) + 2;
                let ks: Vec<usize> = (0..n).filter_map(|j| p.seal_i([a, b, j as u8], 40 + j)).collect();
                // The burst's indices shift if the history was full; take the last n.
                let len = p.history.len();
                let mut order: Vec<usize> = (len.saturating_sub(ks.len())..len).collect();
                let r = usize::from(b) % order.len().max(1);
                order.rotate_left(r);
                if c & 1 != 0 {
                    order.reverse();
                }
                for k in order {
                    if p.open_at_d(k, p.i_addr) {
                        reached.d_opened += 1;
                    }
                }
            }
            _ => {}
        }
        p.check_counters();
    }
    if heal {
        p.heal();
        p.check_counters();
    }
    reached.sessions = p.d_out.stats.sessions - before.sessions;
    reached.cookies = p.d_out.stats.cookies_sent - before.cookies_sent;
    reached
}
