//! Fuzz body for the worker's handshake stage: a burst screened together
//! ([`Device::screen_handshakes`]), then what it admitted processed as one batch
//! ([`Device::receive_screened_batch_on`]), on twin concentrators built from one seed: one takes
//! the one-at-a-time path (no lanes; its screening also one message at a time, with
//! [`Device::screen_handshake`]), the others batch the initiations' Diffie-Hellman work in
//! X25519 lanes on each backend this CPU runs ([`Backend::Portable`] always, [`Backend::Ifma`]
//! with AVX-512 IFMA).
//!
//! The concentrator has [`PEERS`] peers, each a real device that made two initiations (an older
//! and a newer one), and a stranger that made one; the concentrator may have initiations of
//! its own in flight to the first two peers, which answered them with responses (and the
//! second also with a cookie reply, as under load). The input is a recipe per job over those
//! messages, so that inputs reach the DH stage instead of dying at MAC1:
//!
//! - byte 0: the batch. Bits 0–2: jobs − 1 (1 to 8); bit 3: screened under load; bit 4:
//!   processed under load; bit 5: our initiations in flight (forced on when a job uses a
//!   response or the cookie reply); bit 6: unscreened (every job goes to the batch as it is,
//!   `cookie_checked` from the job's bit 4: cookie replies, data messages and bad MACs reach the
//!   batch too).
//! - per job, byte A: the base message, `A % 21`: 0–15 the older (even) or newer (odd)
//!   initiation of peer `A / 2`, 16 the stranger's initiation, 17 and 18 the responses of peers 0
//!   and 1 to our initiations, 19 peer 1's cookie reply, 20 random bytes (two more bytes: type
//!   and length, then a seed for the contents).
//! - byte B: bit 0: a valid mac2 (the concentrator's cookie for the source); bit 1: recompute
//!   mac1 after mutating; bits 2–3: the source (the sender's own address, another IPv4 address,
//!   an IPv6 address, the next peer's address); bit 4: `cookie_checked` when unscreened;
//!   bits 5–7: how many mutations follow, two bytes each `[at, value]`: `value` XORed over byte
//!   `at`, or past the end a byte appended (`value` ≥ 0x80) or the message shortened.
//!
//! A missing byte reads as 0, so the empty input is one valid initiation.
//!
//! Checks (a panic is a finding):
//! - every twin screens the burst the same way: results, replies byte for byte, counters, random
//!   bytes drawn;
//! - the batch gives every twin the same results, counters and events, and the same messages
//!   (compared field by field: to whom, type, length, the index answered);
//! - the lanes twins send the same bytes and draw the same random bytes; so does the
//!   one-at-a-time twin when no initiation went through lanes and the batch was not processed
//!   under load (lanes draw their ephemeral keys together, and under load a batch's mac2 checks
//!   come before its DH work, so otherwise random fields and the order differ);
//! - the lanes do at least the X25519 work of the one-at-a-time path, at most three operations
//!   more per initiation that was not answered, and exactly as much when all were;
//! - an initiation is answered only if it is a peer's own (from its initiation base) and as that
//!   peer, a handshake is completed only by that peer's response and a cookie stored only from
//!   that peer's cookie reply;
//! - every response goes to the initiation's source, names its sender index and carries a mac1
//!   valid for that peer, and there is one per answered initiation;
//! - every cookie reply goes to a source whose message was answered with one, names that
//!   message's sender index and opens to the concentrator's cookie for that source, and there is
//!   one per `CookieSent`.
//!
//! Nothing is kept between inputs but the messages: the twins are rebuilt for each input from the
//! same seed (so any input replays alone).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use rand_core::RngCore;
use wgpmd_x25519::Backend;

use super::device::HashDrbg;
use crate::crypto::{hash, mac, xopen_cookie, PrivateKey};
use crate::device::{Device, DropReason, Event, HandshakeOutcome, Output, PeerId, Screened, Stats, Transmit};
use crate::messages::{
    COOKIE_LEN, COOKIE_NONCE_LEN, COOKIE_REPLY_LEN, INITIATION_LEN, RESPONSE_LEN, TAG_LEN, WG_LABEL_COOKIE,
    WG_LABEL_MAC1,
};
use crate::noise::{lane_initiations, x25519_ops};
use crate::time::Timestamp;

/// The concentrator's peers (as many as a batch has jobs: a batch can answer eight).
pub const PEERS: usize = 8;
/// The peers the concentrator has an initiation in flight to (when the recipe asks for it).
const IN_FLIGHT: usize = 2;
/// The jobs of one batch at most (the worker's batch).
pub const MAX_JOBS: usize = 8;
const _: () = assert!(MAX_JOBS == 8, "the recipe's three bits of job count");

const SEED: u64 = 0x0062_6174_6368;
const WALL: u64 = 1_700_000_000_000_000_000;
/// When the concentrator sent its initiations.
const SENT: Timestamp = Timestamp::from_secs(1);
/// When the burst arrives (the cookie secret, born at 0, lives 120 s).
const NOW: Timestamp = Timestamp::from_secs(2);

const D_KEY: [u8; 32] = [0x44; 32];
const D_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 51820);

/// Base messages: two initiations per peer, the stranger's, two responses, a cookie reply,
/// random bytes.
const BASES: usize = 2 * PEERS + 5;
const STRANGER_BASE: usize = 2 * PEERS;
const RESPONSE_BASE: usize = 2 * PEERS + 1;
const COOKIE_BASE: usize = 2 * PEERS + 3;
const RANDOM_BASE: usize = 2 * PEERS + 4;

/// The sources a job can come from: each peer's address, the stranger's, then two others.
const SOURCES: usize = PEERS + 3;

fn source(i: usize) -> SocketAddr {
    match i {
        i if i <= PEERS => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8 + 1)), 40000 + i as u16),
        i if i == PEERS + 1 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 1024),
        _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x77)), 51820),
    }
}

/// What a base message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    /// An initiation of peer `k` (`k == PEERS`: the stranger).
    Initiation(usize),
    /// Peer `k`'s response to our initiation.
    Response(usize),
    /// Peer `k`'s cookie reply to our initiation.
    CookieReply(usize),
    Random,
}

/// The messages every input starts from, made once.
struct World {
    d_public: [u8; 32],
    /// The peers' public keys, the stranger's last.
    publics: [[u8; 32]; PEERS + 1],
    /// The concentrator's id of each peer.
    ids: [PeerId; PEERS],
    /// The concentrator's cookie for each source.
    cookies: [[u8; COOKIE_LEN]; SOURCES],
    /// The base messages but the random one, by base number.
    bases: Vec<Vec<u8>>,
    /// The concentrator's initiations to the first [`IN_FLIGHT`] peers.
    ours: Vec<Vec<u8>>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(World::new)
}

/// A concentrator and its generator, as every input starts: `in_flight`: with its initiations to
/// the first [`IN_FLIGHT`] peers sent (the initiations returned).
fn concentrator(publics: &[[u8; 32]], in_flight: bool) -> (Device, HashDrbg, Vec<PeerId>, Vec<Vec<u8>>) {
    let mut rng = HashDrbg::new(SEED);
    let mut d = Device::new(&mut rng, WALL);
    d.set_private_key(Some(PrivateKey::from_bytes(D_KEY)));
    let ids: Vec<PeerId> = publics
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let id = d.add_peer(&mut rng, *p).expect("a peer");
            d.set_endpoint(id, source(k)).expect("endpoint");
            d.add_allowed_ip(id, IpAddr::V4(Ipv4Addr::new(10, 0, k as u8, 2)), 32).expect("allowed IP");
            id
        })
        .collect();
    let mut sent = Vec::new();
    if in_flight {
        let mut out = Output::with_capacity(4);
        for &id in &ids[..IN_FLIGHT] {
            d.initiate(SENT, &mut rng, id, &mut out).expect("our initiation");
            sent.push(out.transmits.pop().expect("an initiation").payload().to_vec());
        }
    }
    (d, rng, ids, sent)
}

impl World {
    fn new() -> World {
        let d_public = PrivateKey::from_bytes(D_KEY).public_key();
        let keys: Vec<PrivateKey> = (0..=PEERS).map(|k| PrivateKey::from_bytes([0x20 + k as u8; 32])).collect();
        let publics: [[u8; 32]; PEERS + 1] = core::array::from_fn(|k| keys[k].public_key());
        let (_, _, ids, ours) = concentrator(&publics[..PEERS], true);
        let mut rng = HashDrbg::new(SEED ^ 1);
        let mut bases = vec![Vec::new(); RANDOM_BASE];
        let mut out = Output::with_capacity(8);
        for (k, key) in keys.into_iter().enumerate() {
            let mut dev = Device::new(&mut rng, WALL + 1_000_000 * k as u64);
            dev.set_private_key(Some(key));
            let peer = dev.add_peer(&mut rng, d_public).expect("the concentrator");
            dev.set_endpoint(peer, D_ADDR).expect("endpoint");
            let t = Timestamp::from_secs(10);
            if k < IN_FLIGHT {
                // Peer 1 is under load first: a cookie reply, then (not under load) a response.
                if k == 1 {
                    let r = dev.receive_handshake(t, &mut rng, D_ADDR, &ours[k], true, &mut out);
                    assert_eq!(r, Ok(HandshakeOutcome::CookieSent));
                    bases[COOKIE_BASE] = out.transmits.pop().expect("a cookie reply").payload().to_vec();
                }
                let r = dev.receive_handshake(t, &mut rng, D_ADDR, &ours[k], false, &mut out);
                assert!(matches!(r, Ok(HandshakeOutcome::Responded(_))), "{r:?}");
                bases[RESPONSE_BASE + k] = out.transmits.pop().expect("a response").payload().to_vec();
            }
            // Two initiations a rekey timeout apart (the device's own rate limit), the newer second.
            for v in 0..2 {
                let t = t + Duration::from_secs(6 * (v + 1));
                dev.initiate(t, &mut rng, peer, &mut out).expect("an initiation");
                let m = out.transmits.pop().expect("an initiation").payload().to_vec();
                if k < PEERS {
                    bases[2 * k + v as usize] = m;
                } else {
                    bases[STRANGER_BASE] = m;
                    break;
                }
            }
            out.clear();
        }
        // The concentrator's cookie for each source: from its cookie reply under load, opened as
        // a peer opens it.
        let cookie_key = hash(&[WG_LABEL_COOKIE, &d_public]);
        let (d, mut drng, _, _) = concentrator(&publics[..PEERS], false);
        let cookies = core::array::from_fn(|s| {
            let msg = &bases[0];
            let r = d.screen_handshake(NOW, &mut drng, source(s), msg, true, &mut out);
            assert_eq!(r, Ok(Screened::Handled(HandshakeOutcome::CookieSent)));
            let reply = out.transmits.pop().expect("a cookie reply");
            open_cookie(&cookie_key, reply.payload(), msg).expect("our own cookie reply opens")
        });
        World { d_public, publics, ids: ids.try_into().expect("PEERS ids"), cookies, bases, ours }
    }
}

/// What base message number `b` is.
fn base(b: usize) -> Base {
    match b {
        b if b < STRANGER_BASE => Base::Initiation(b / 2),
        STRANGER_BASE => Base::Initiation(PEERS),
        b if b < COOKIE_BASE => Base::Response(b - RESPONSE_BASE),
        COOKIE_BASE => Base::CookieReply(1),
        _ => Base::Random,
    }
}

/// The cookie in a cookie reply to `trigger` (a handshake message), if it opens.
fn open_cookie(key: &[u8; 32], reply: &[u8], trigger: &[u8]) -> Option<[u8; COOKIE_LEN]> {
    if reply.len() != COOKIE_REPLY_LEN || trigger.len() < 32 {
        return None;
    }
    let nonce: [u8; COOKIE_NONCE_LEN] = reply[8..32].try_into().ok()?;
    let sealed: [u8; COOKIE_LEN + TAG_LEN] = reply[32..64].try_into().ok()?;
    let mac1 = &trigger[trigger.len() - 32..trigger.len() - 16];
    xopen_cookie(key, &nonce, mac1, &sealed).ok()
}

fn index_at(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(msg.get(at..at + 4)?.try_into().ok()?))
}

/// One job of the burst, decoded.
struct Job {
    base: Base,
    src: usize,
    msg: Vec<u8>,
    cookie_checked: bool,
}

/// The batch a recipe describes.
struct Recipe {
    screen_under_load: bool,
    under_load: bool,
    in_flight: bool,
    unscreened: bool,
    jobs: Vec<Job>,
}

fn decode(w: &World, data: &[u8]) -> Recipe {
    let mut it = data.iter().copied();
    let mut byte = || it.next().unwrap_or(0);
    let head = byte();
    let n = usize::from(head) % MAX_JOBS + 1;
    let mut jobs = Vec::with_capacity(n);
    for j in 0..n {
        let (a, b) = (usize::from(byte()) % BASES, byte());
        let base = base(a);
        let mut msg = match base {
            Base::Random => {
                let (shape, seed) = (byte(), byte());
                const LENS: [usize; 16] = [0, 1, 4, 16, 32, 63, 64, 91, 92, 93, 147, 148, 149, 200, 148, 92];
                let mut m = vec![0u8; LENS[usize::from(shape >> 4)]];
                HashDrbg::new(u64::from(seed) | (j as u64) << 8 | 1 << 32).fill_bytes(&mut m);
                if m.len() >= 4 {
                    m[..4].copy_from_slice(&[1 + (shape & 3), 0, 0, 0]);
                }
                m
            }
            _ => w.bases[a].clone(),
        };
        let natural = match base {
            Base::Initiation(k) | Base::Response(k) | Base::CookieReply(k) => k,
            Base::Random => PEERS + 1,
        };
        let src = match (b >> 2) & 3 {
            0 => natural,
            1 => PEERS + 1,
            2 => PEERS + 2,
            _ => (natural + 1) % PEERS,
        };
        for _ in 0..b >> 5 {
            let (at, v) = (usize::from(byte()), byte());
            if at < msg.len() {
                msg[at] ^= v;
            } else if v >= 0x80 {
                msg.push(v);
            } else {
                msg.truncate(msg.len().saturating_sub(1 + usize::from(v & 7)));
            }
        }
        let len = msg.len();
        if b & 2 != 0 && (len == INITIATION_LEN || len == RESPONSE_LEN) {
            let m1 = mac(&hash(&[WG_LABEL_MAC1, &w.d_public]), &[&msg[..len - 32]]);
            msg[len - 32..len - 16].copy_from_slice(&m1);
        }
        if b & 1 != 0 && len >= 16 {
            let m2 = mac(&w.cookies[src], &[&msg[..len - 16]]);
            msg[len - 16..].copy_from_slice(&m2);
        }
        jobs.push(Job { base, src, msg, cookie_checked: b & 0x10 != 0 });
    }
    let uses_ours = jobs.iter().any(|j| matches!(j.base, Base::Response(_) | Base::CookieReply(_)));
    Recipe {
        screen_under_load: head & 0x08 != 0,
        under_load: head & 0x10 != 0,
        in_flight: head & 0x20 != 0 || uses_ours,
        unscreened: head & 0x40 != 0,
        jobs,
    }
}

/// How far one input got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReached {
    /// Jobs in the burst.
    pub jobs: usize,
    /// Jobs screening admitted (all of them when unscreened).
    pub admitted: usize,
    /// Jobs processed by the batch that ended in Noise processing: answered, completed, or
    /// failed there (unknown peer, replay or flood, handshake failed).
    pub dh_jobs: usize,
    /// X25519 operations the one-at-a-time twin counted in the batch (`Stats::dh_operations`).
    pub dh_operations: u64,
    /// Initiations whose DHs ran in X25519 lanes (on each lanes twin).
    pub lane_initiations: u64,
    /// Initiations answered.
    pub responded: usize,
    /// Our handshakes completed by a response.
    pub completed: usize,
    /// Cookie replies sent (screening and batch).
    pub cookies_sent: u64,
    /// The batch's results, in job order (of the admitted jobs).
    pub results: Vec<Result<HandshakeOutcome, DropReason>>,
}

/// One twin's run.
struct Twin {
    lanes: Option<Backend>,
    screened: Vec<Result<Screened, DropReason>>,
    screen_sent: Vec<Transmit>,
    screen_stats: Stats,
    screen_drawn: u64,
    results: Vec<Result<HandshakeOutcome, DropReason>>,
    out: Output,
    drawn: u64,
    x25519: u64,
    lane_initiations: u64,
}

fn run_twin(w: &World, r: &Recipe, lanes: Option<Backend>) -> (Twin, Vec<usize>) {
    let (d, mut rng, ids, ours) = concentrator(&w.publics[..PEERS], r.in_flight);
    assert_eq!(ids, w.ids, "the concentrator is built the same way every time");
    assert!(ours.is_empty() || ours == w.ours, "the concentrator is built the same way every time");
    let burst: Vec<(SocketAddr, &[u8])> = r.jobs.iter().map(|j| (source(j.src), &j.msg[..])).collect();
    let mut out = Output::with_capacity(32);
    let mut screened = Vec::new();
    let before = rng.drawn();
    if r.unscreened {
        screened.extend(r.jobs.iter().map(|j| Ok(Screened::Admitted { cookie_checked: j.cookie_checked })));
    } else if lanes.is_none() {
        screened.extend(
            burst.iter().map(|&(src, m)| d.screen_handshake(NOW, &mut rng, src, m, r.screen_under_load, &mut out)),
        );
    } else {
        d.screen_handshakes(NOW, &mut rng, &burst, r.screen_under_load, &mut out, &mut screened);
    }
    let screen_sent = core::mem::take(&mut out.transmits);
    let screen_stats = out.stats.clone();
    let screen_drawn = rng.drawn() - before;
    let admitted: Vec<usize> =
        (0..r.jobs.len()).filter(|&i| matches!(screened[i], Ok(Screened::Admitted { .. }))).collect();
    let jobs: Vec<(SocketAddr, &[u8], bool)> = admitted
        .iter()
        .map(|&i| {
            let Ok(Screened::Admitted { cookie_checked }) = screened[i] else { unreachable!("admitted") };
            (burst[i].0, burst[i].1, cookie_checked)
        })
        .collect();
    out.stats = Stats::default();
    let mut results = Vec::new();
    let (ops, lane) = (x25519_ops(), lane_initiations());
    let before = rng.drawn();
    d.receive_screened_batch_on(lanes, NOW, &mut rng, &jobs, r.under_load, &mut out, &mut results);
    let twin = Twin {
        lanes,
        screened,
        screen_sent,
        screen_stats,
        screen_drawn,
        results,
        out,
        drawn: rng.drawn() - before,
        x25519: x25519_ops() - ops,
        lane_initiations: lane_initiations() - lane,
    };
    (twin, admitted)
}

fn sent(t: &[Transmit]) -> Vec<(Option<PeerId>, SocketAddr, Vec<u8>)> {
    t.iter().map(|t| (t.peer, t.to, t.payload().to_vec())).collect()
}

/// A transmit's fields that do not depend on the order of the random draws: to whom, its type
/// and length, and the index it answers.
fn fields(t: &Transmit) -> (Option<PeerId>, SocketAddr, u8, usize, Option<u32>) {
    let p = t.payload();
    let answers = match p.first() {
        Some(2) => index_at(p, 8),
        _ => index_at(p, 4),
    };
    (t.peer, t.to, p.first().copied().unwrap_or(0), p.len(), answers)
}

/// One fuzz input (see the module doc for the recipe).
///
/// # Panics
/// When a check fails (see the module doc).
pub fn handshake_batch(data: &[u8]) -> BatchReached {
    let w = world();
    let recipe = decode(w, data);
    let mut variants: Vec<Option<Backend>> = vec![None];
    variants.extend(Backend::ALL.into_iter().filter(|b| b.is_supported()).map(Some));
    let runs: Vec<(Twin, Vec<usize>)> = variants.iter().map(|&l| run_twin(w, &recipe, l)).collect();
    let (one, admitted) = &runs[0];
    let admitted: &[usize] = admitted;
    for (t, a) in &runs[1..] {
        let ctx = format!("{:?}", t.lanes);
        // Screening: the burst path decides, replies and draws as one message at a time.
        assert_eq!(t.screened, one.screened, "{ctx}: screening results");
        assert_eq!(sent(&t.screen_sent), sent(&one.screen_sent), "{ctx}: screening replies");
        assert_eq!(t.screen_stats, one.screen_stats, "{ctx}: screening counters");
        assert_eq!(t.screen_drawn, one.screen_drawn, "{ctx}: screening random bytes");
        assert_eq!(a, admitted);
        // The batch: the same decisions, counters and events as one at a time.
        assert_eq!(t.results, one.results, "{ctx}: batch results");
        assert_eq!(t.out.stats, one.out.stats, "{ctx}: batch counters");
        assert_eq!(t.out.events, one.out.events, "{ctx}: batch events");
        assert_eq!(t.out.transmits.len(), one.out.transmits.len(), "{ctx}: batch transmits");
        let mut mine: Vec<_> = t.out.transmits.iter().map(fields).collect();
        let mut theirs: Vec<_> = one.out.transmits.iter().map(fields).collect();
        mine.sort();
        theirs.sort();
        assert_eq!(mine, theirs, "{ctx}: batch transmits (fields)");
        // With nothing in lanes and no mac2 checks ahead of the DH work (under load, a later
        // initiation's cookie reply comes before an earlier one's response), the batch is the
        // one-at-a-time path.
        if t.lane_initiations == 0 && !recipe.under_load {
            assert_eq!(sent(&t.out.transmits), sent(&one.out.transmits), "{ctx}: transmits without lanes");
            assert_eq!((t.drawn, t.x25519), (one.drawn, one.x25519), "{ctx}: work without lanes");
        }
        // Lanes spend their X25519 work on an initiation before knowing it fails (at most es,
        // the ephemeral's public key and ee more than one at a time), never less.
        let failed = admitted
            .iter()
            .zip(&t.results)
            .filter(|&(&i, r)| {
                recipe.jobs[i].msg.first() == Some(&1) && !matches!(r, Ok(HandshakeOutcome::Responded(_)))
            })
            .count() as u64;
        assert!(
            t.x25519 >= one.x25519 && t.x25519 - one.x25519 <= 3 * failed,
            "{ctx}: {} X25519 operations in lanes, {} one at a time, {failed} failed initiations",
            t.x25519,
            one.x25519
        );
        // Lanes on any backend: the same bytes.
        let (first, _) = &runs[1];
        assert_eq!(sent(&t.out.transmits), sent(&first.out.transmits), "{ctx}: lanes transmits");
        assert_eq!(
            (t.drawn, t.x25519, t.lane_initiations),
            (first.drawn, first.x25519, first.lane_initiations),
            "{ctx}: lanes work"
        );
    }
    let mut reached = BatchReached {
        jobs: recipe.jobs.len(),
        admitted: admitted.len(),
        dh_operations: one.out.stats.dh_operations,
        lane_initiations: runs.get(1).map_or(0, |(t, _)| t.lane_initiations),
        cookies_sent: one.screen_stats.cookies_sent + one.out.stats.cookies_sent,
        results: one.results.clone(),
        ..BatchReached::default()
    };
    let cookie_key = hash(&[WG_LABEL_COOKIE, &w.d_public]);
    for (t, _) in &runs {
        let ctx = format!("{:?}", t.lanes);
        // Cookie replies: to a job's source, for that message, with the source's cookie.
        let cookie_sent: Vec<usize> = (0..recipe.jobs.len())
            .filter(|&i| {
                t.screened[i] == Ok(Screened::Handled(HandshakeOutcome::CookieSent))
                    || admitted.iter().zip(&t.results).any(|(&a, r)| a == i && *r == Ok(HandshakeOutcome::CookieSent))
            })
            .collect();
        let replies: Vec<&Transmit> =
            t.screen_sent.iter().chain(&t.out.transmits).filter(|x| x.peer.is_none()).collect();
        assert_eq!(replies.len(), cookie_sent.len(), "{ctx}: a cookie reply per CookieSent");
        for x in &replies {
            let p = x.payload();
            assert_eq!((p.len(), p.first()), (COOKIE_REPLY_LEN, Some(&3)), "{ctx}: a cookie reply");
            let found = cookie_sent.iter().any(|&i| {
                let j = &recipe.jobs[i];
                source(j.src) == x.to
                    && index_at(&j.msg, 4) == index_at(p, 4)
                    && open_cookie(&cookie_key, p, &j.msg) == Some(w.cookies[j.src])
            });
            assert!(found, "{ctx}: a cookie reply to {} answers no message from there, or the wrong cookie", x.to);
        }
        // Outcomes only for the peer's own messages; each answer well formed.
        let mut responses = 0;
        for (&i, r) in admitted.iter().zip(&t.results) {
            let j = &recipe.jobs[i];
            let from = |k: usize| w.ids.get(k).copied();
            match *r {
                Ok(HandshakeOutcome::Responded(id)) => {
                    let Base::Initiation(k) = j.base else { panic!("{ctx}: job {i} ({:?}) answered", j.base) };
                    assert_eq!(Some(id), from(k), "{ctx}: job {i}: answered as another peer");
                    let resp: Vec<&Transmit> = t
                        .out
                        .transmits
                        .iter()
                        .filter(|x| x.peer == Some(id) && x.payload().first() == Some(&2))
                        .collect();
                    assert_eq!(resp.len(), 1, "{ctx}: job {i}: one response to peer {k}");
                    let p = resp[0].payload();
                    assert_eq!(resp[0].to, source(j.src), "{ctx}: job {i}: response sent elsewhere");
                    assert_eq!(p.len(), RESPONSE_LEN, "{ctx}: job {i}");
                    assert_eq!(index_at(p, 8), index_at(&j.msg, 4), "{ctx}: job {i}: response to another index");
                    let m1 = mac(&hash(&[WG_LABEL_MAC1, &w.publics[k]]), &[&p[..RESPONSE_LEN - 32]]);
                    assert_eq!(&p[RESPONSE_LEN - 32..RESPONSE_LEN - 16], &m1, "{ctx}: job {i}: response mac1");
                    responses += 1;
                }
                Ok(HandshakeOutcome::Completed(id)) => {
                    let Base::Response(k) = j.base else { panic!("{ctx}: job {i} ({:?}) completed", j.base) };
                    assert_eq!(Some(id), from(k), "{ctx}: job {i}: completed another peer's handshake");
                    assert!(t.out.events.contains(&Event::SessionReady(id)), "{ctx}: job {i}: no SessionReady");
                }
                Ok(HandshakeOutcome::CookieStored(id)) => {
                    let Base::CookieReply(k) = j.base else { panic!("{ctx}: job {i} ({:?}) stored", j.base) };
                    assert_eq!(Some(id), from(k), "{ctx}: job {i}: cookie stored for another peer");
                }
                Ok(HandshakeOutcome::CookieSent) | Err(_) => {}
            }
        }
        let all_responses = t.out.transmits.iter().filter(|x| x.peer.is_some()).count();
        assert_eq!(all_responses, responses, "{ctx}: a response per answered initiation, nothing else");
    }
    for r in &one.results {
        match r {
            Ok(HandshakeOutcome::Responded(_)) => reached.responded += 1,
            Ok(HandshakeOutcome::Completed(_)) => reached.completed += 1,
            _ => {}
        }
        if matches!(
            r,
            Ok(HandshakeOutcome::Responded(_) | HandshakeOutcome::Completed(_))
                | Err(DropReason::UnknownPeer | DropReason::InitiationReplay | DropReason::HandshakeFailed)
        ) {
            reached.dh_jobs += 1;
        }
    }
    reached
}
