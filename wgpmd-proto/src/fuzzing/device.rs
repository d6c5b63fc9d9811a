//! Fuzz body for the device facade: handshake, cookie and data messages into a [`Device`]
//! that has a peer, a session and an initiation of its own in flight.
//!
//! The input is a mutation recipe rather than a raw message, so the fuzzer reaches past the
//! MAC1 and length checks: byte 0 picks a valid base message (an initiation, a response to
//! our pending initiation, a cookie reply to it, or a data message) and flags (under load,
//! recompute MAC1 after mutating, use the rest verbatim); the remaining bytes are XORed over
//! the base, and their length is the message length (so truncation and extension are free).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Mutex, OnceLock};

use rand_core::{CryptoRng, RngCore};

use crate::cookie::CookieState;
use crate::crypto::{hash, PrivateKey};
use crate::device::{Device, DropReason, HandshakeOutcome, Output, PeerId};
use crate::messages::{INITIATION_LEN, RESPONSE_LEN};
use crate::time::Timestamp;
use crate::wire::wireguard::{HandshakeInitiation, HandshakeResponse};

/// A deterministic hash-based DRBG (BLAKE2s in counter mode) so fuzz runs replay exactly.
pub struct HashDrbg {
    seed: [u8; 32],
    counter: u64,
    buf: [u8; 32],
    used: usize,
}

impl HashDrbg {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        HashDrbg { seed: hash(&[b"wgpmd fuzz drbg", &seed.to_le_bytes()]), counter: 0, buf: [0; 32], used: 32 }
    }

    /// The bytes drawn so far (two generators from one seed that drew as many are equal).
    pub fn drawn(&self) -> u64 {
        self.counter * 32 + self.used as u64 - 32
    }
}

impl RngCore for HashDrbg {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for d in dest {
            if self.used == self.buf.len() {
                self.counter += 1;
                self.buf = hash(&[&self.seed, &self.counter.to_le_bytes()]);
                self.used = 0;
            }
            *d = self.buf[self.used];
            self.used += 1;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for HashDrbg {}

const D_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);
const I_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);

struct World {
    d: Device,
    d_public: [u8; 32],
    rng: HashDrbg,
    now: Timestamp,
    out: Output,
    bases: [Vec<u8>; 4],
}

fn world() -> &'static Mutex<World> {
    static W: OnceLock<Mutex<World>> = OnceLock::new();
    W.get_or_init(|| Mutex::new(World::new()))
}

impl World {
    fn new() -> World {
        let mut rng = HashDrbg::new(1);
        let now = Timestamp::from_secs(1);
        let kd = PrivateKey::generate(&mut rng);
        let ki = PrivateKey::generate(&mut rng);
        let (pd, pi) = (kd.public_key(), ki.public_key());
        let mut d = Device::new(&mut rng, 1_700_000_000_000_000_000);
        d.set_private_key(Some(kd));
        let dp = d.add_peer(&mut rng, pi).expect("peer");
        d.set_endpoint(dp, I_ADDR).expect("endpoint");
        d.add_allowed_ip(dp, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 32).expect("allowed");
        let mut i = Device::new(&mut rng, 1_700_000_000_000_000_000);
        i.set_private_key(Some(ki));
        let ip: PeerId = i.add_peer(&mut rng, pd).expect("peer");
        i.set_endpoint(ip, D_ADDR).expect("endpoint");
        i.add_allowed_ip(ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 32).expect("allowed");
        let mut out = Output::with_capacity(16);
        let mut iout = Output::with_capacity(16);
        // I initiates; D responds; I confirms: a session, and a data message from I.
        i.initiate(now, &mut rng, ip, &mut iout).expect("initiate");
        let init = iout.transmits.pop().expect("init").payload().to_vec();
        d.receive_handshake(now, &mut rng, I_ADDR, &init, false, &mut out).expect("response");
        let resp = out.transmits.pop().expect("resp").payload().to_vec();
        i.receive_handshake(now, &mut rng, D_ADDR, &resp, false, &mut iout).expect("complete");
        let mut inner = [0u8; 64];
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&48u16.to_be_bytes());
        inner[12..16].copy_from_slice(&[10, 0, 0, 2]);
        inner[16..20].copy_from_slice(&[10, 0, 0, 1]);
        let mut buf = vec![0u8; 16 + 48 + 32];
        buf[16..64].copy_from_slice(&inner[..48]);
        let e = i.encapsulate(now, &mut buf, 48, &mut iout).expect("seal");
        buf.truncate(e.len);
        // D initiates to I (pending), I answers with a cookie (under load) and a response.
        let later = now + core::time::Duration::from_secs(6);
        d.initiate(later, &mut rng, dp, &mut out).expect("d initiates");
        let d_init = out.transmits.pop().expect("d init").payload().to_vec();
        i.receive_handshake(later, &mut rng, D_ADDR, &d_init, true, &mut iout).expect("cookie");
        let cookie = iout.transmits.pop().expect("cookie reply").payload().to_vec();
        i.receive_handshake(later, &mut rng, D_ADDR, &d_init, false, &mut iout).expect("response");
        let i_resp = iout.transmits.pop().expect("i resp").payload().to_vec();
        // A fresh initiation from I for D to consume (I's own rate limit passed by time).
        let later2 = later + core::time::Duration::from_secs(6);
        i.initiate(later2, &mut rng, ip, &mut iout).expect("second initiation");
        let i_init = iout.transmits.pop().expect("i init").payload().to_vec();
        out.clear();
        World { d, d_public: pd, rng, now: later2, out, bases: [i_init, i_resp, cookie, buf] }
    }
}

/// How deep one input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceReached {
    /// The verdict.
    pub result: Result<Option<HandshakeOutcome>, DropReason>,
    /// MAC1 verified (handshake messages).
    pub mac1: bool,
    /// Diffie-Hellman work was done.
    pub dh: bool,
    /// A data message was authenticated.
    pub aead_opened: bool,
}

/// One fuzz input through the device facade (see the module doc for the input format).
pub fn device_message(data: &[u8]) -> DeviceReached {
    let mut w = world().lock().unwrap_or_else(|e| e.into_inner());
    let w = &mut *w;
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or(&[]);
    let base = &w.bases[usize::from(flags & 3)];
    let mut msg: Vec<u8> = if flags & 0x10 != 0 {
        rest.to_vec()
    } else {
        (0..rest.len()).map(|i| base.get(i).copied().unwrap_or(0) ^ rest[i]).collect()
    };
    if flags & 0x08 != 0 {
        let mut macs = CookieState::new(&w.d_public);
        match msg.len() {
            INITIATION_LEN => macs.add_macs(w.now, &mut HandshakeInitiation::new_unchecked(&mut msg[..])),
            RESPONSE_LEN => macs.add_macs(w.now, &mut HandshakeResponse::new_unchecked(&mut msg[..])),
            _ => {}
        }
    }
    // Time moves 1 ms per input; the world is rebuilt when its session would expire.
    w.now = w.now + core::time::Duration::from_millis(1);
    let under_load = flags & 0x04 != 0;
    let before = w.out.stats.clone();
    let result = if msg.first() == Some(&crate::messages::MESSAGE_DATA) {
        w.d.decapsulate(w.now, I_ADDR, &mut msg, &mut w.out).map(|_| None)
    } else {
        w.d.receive_handshake(w.now, &mut w.rng, I_ADDR, &msg, under_load, &mut w.out).map(Some)
    };
    let reached = DeviceReached {
        result,
        mac1: w.out.stats.mac1_valid > before.mac1_valid,
        dh: w.out.stats.dh_operations > before.dh_operations,
        aead_opened: w.out.stats.aead_opened > before.aead_opened,
    };
    w.out.clear();
    if w.now.as_nanos() > 150_000_000_000 {
        *w = World::new();
    }
    reached
}
