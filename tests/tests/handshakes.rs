//! Handshakes on the workers: every handshake-stage message is screened on the worker that
//! received it (junk costs one MAC at most and a counted drop, never a queue slot), and the
//! DH work is done on every worker, where the peer's packets land.
//!
//! Run: `cargo build --release -p wgpmd && cargo test -p wgpmd-e2e --release --test handshakes`
//! (as root). See docs/TESTING.md.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use wgpmd_e2e::*;

/// What wgpmd must make of a crafted message: the worker counter it lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Class {
    BadType,
    BadLength,
    BadMac1,
    BadCookieReply,
    /// A valid mac1: queued for DH work (`handshakes_queued`).
    Queued,
    /// Type 4: the data path's (not a handshake counter).
    Data,
}

impl Class {
    const HANDSHAKE: [Class; 5] =
        [Class::BadType, Class::BadLength, Class::BadMac1, Class::BadCookieReply, Class::Queued];

    fn counter(self) -> &'static str {
        match self {
            Class::BadType => "hs_dropped_bad_type",
            Class::BadLength => "hs_dropped_bad_length",
            Class::BadMac1 => "hs_dropped_bad_mac1",
            Class::BadCookieReply => "hs_dropped_bad_cookie_reply",
            Class::Queued => "handshakes_queued",
            Class::Data => "data_rx",
        }
    }
}

/// Counters that must not move while wgpmd screens junk without being under load.
const QUIET: [&str; 4] = ["hs_dropped_bad_mac2", "hs_dropped_ratelimited", "hs_dropped_queue_full", "cookies_sent"];

struct Xorshift(u32);

impl Xorshift {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// In `lo..hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.next() as usize % (hi - lo)
    }
}

/// A random `len`-byte message of type `ty`, its mac1 made valid for `responder` (mac1 covers
/// every byte before it: a random body passes the screen and costs wgpmd its DH work).
fn valid_mac1(responder: &[u8; 32], ty: u8, len: usize, rng: &mut Xorshift) -> Vec<u8> {
    use wgpmd_proto::cookie::CookieState;
    use wgpmd_proto::time::Timestamp;
    use wgpmd_proto::wire::wireguard::{HandshakeInitiation, HandshakeResponse};
    let mut m = rng.bytes(len);
    m[..4].copy_from_slice(&[ty, 0, 0, 0]);
    let mut macs = CookieState::new(responder);
    match ty {
        1 => macs.add_macs(Timestamp::ZERO, &mut HandshakeInitiation::new_unchecked(&mut m[..])),
        _ => macs.add_macs(Timestamp::ZERO, &mut HandshakeResponse::new_unchecked(&mut m[..])),
    }
    m
}

/// `per_type` mutated messages of each kind, interleaved: initiations and responses (a sixth
/// with a valid mac1, some of those with a bit flipped in their mac2; random bodies; a bit
/// flipped under mac1; truncated; extended; reserved bytes set), cookie replies (random, wrong
/// length, reserved bytes set), unknown types, and random data messages.
fn junk(responder: &[u8; 32], per_type: usize) -> Vec<(Vec<u8>, Class)> {
    let mut rng = Xorshift(0x2545_f491);
    let mut out = Vec::with_capacity(per_type * 5);
    for i in 0..per_type {
        for (ty, len, mac1_at) in [(1u8, 148usize, 116usize), (2, 92, 60)] {
            let (m, class) = match i % 6 {
                0 => {
                    let mut m = valid_mac1(responder, ty, len, &mut rng);
                    if i % 12 == 6 {
                        let bit = rng.range(mac1_at + 16, len);
                        m[bit] ^= 1 << (i % 8); // mac2: not checked unless under load
                    }
                    (m, Class::Queued)
                }
                1 => {
                    let mut m = rng.bytes(len);
                    m[..4].copy_from_slice(&[ty, 0, 0, 0]);
                    (m, Class::BadMac1)
                }
                2 => {
                    let mut m = valid_mac1(responder, ty, len, &mut rng);
                    let at = rng.range(4, mac1_at + 16); // body or mac1
                    m[at] ^= 1 << (i % 8);
                    (m, Class::BadMac1)
                }
                3 => {
                    let m = valid_mac1(responder, ty, len, &mut rng);
                    (m[..rng.range(1, len)].to_vec(), Class::BadLength)
                }
                4 => {
                    let mut m = valid_mac1(responder, ty, len, &mut rng);
                    let more = rng.range(1, 200);
                    m.extend(rng.bytes(more));
                    (m, Class::BadLength)
                }
                _ => {
                    let mut m = valid_mac1(responder, ty, len, &mut rng);
                    m[1 + i % 3] = rng.range(1, 256) as u8;
                    (m, Class::BadType)
                }
            };
            out.push((m, class));
        }
        let mut cookie = rng.bytes(64);
        cookie[..4].copy_from_slice(&[3, 0, 0, 0]);
        out.push(match i % 3 {
            0 => (cookie, Class::BadCookieReply),
            1 => {
                let len = if i % 2 == 0 { rng.range(1, 64) } else { rng.range(65, 300) };
                let mut m = rng.bytes(len);
                m[0] = 3;
                if len >= 4 {
                    m[1..4].fill(0);
                }
                (m, Class::BadLength)
            }
            _ => {
                cookie[3] = 0x80;
                (cookie, Class::BadType)
            }
        });
        // Any other type code (0, 5..=255), any length with a header (shorter: bad_length).
        let len = rng.range(4, 300);
        let mut m = rng.bytes(len);
        m[0] = [0, rng.range(5, 256) as u8][i % 2];
        out.push((m, Class::BadType));
        let len = rng.range(32, 300);
        let mut m = rng.bytes(len);
        m[..4].copy_from_slice(&[4, 0, 0, 0]);
        out.push((m, Class::Data));
    }
    out
}

/// Sends `msgs` to `to` from inside `ns` (one socket), paced evenly over `dur` in 100 slices.
fn send_paced(ns: &Netns, to: SocketAddr, msgs: Vec<Vec<u8>>, dur: Duration) -> Result<u64> {
    let name = ns.name().to_string();
    std::thread::spawn(move || -> Result<u64> {
        enter_netns(&name)?; // only this thread changes namespace
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        let t0 = Instant::now();
        let slice = msgs.len().div_ceil(100);
        let mut sent = 0u64;
        for (k, chunk) in msgs.chunks(slice).enumerate() {
            for m in chunk {
                if s.send_to(m, to).is_ok() {
                    sent += 1;
                }
            }
            if let Some(rest) = (dur * (k as u32 + 1) / 100).checked_sub(t0.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Ok(sent)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?
}

/// (a) Junk of every kind (2,000 mutated messages of each type in 0.6 s, from a second
/// namespace, a sixth of the initiations and responses with a valid MAC1) is dropped on the
/// worker with its counter, exactly; only the valid-MAC1 messages take a queue slot, and wgpmd
/// does not put itself under load (no cookie reply, `under_load` 0). Then a wireguard-go peer
/// starts: its first initiation is answered with a response (not a cookie reply: that would
/// delay the handshake to wireguard-go's retry, 5 s later), and its ping works.
#[test]
fn junk_dropped_on_arrival_then_a_real_handshake_is_answered() {
    run("junk_dropped_on_arrival_then_a_real_handshake_is_answered", |ctx| {
        const PER_TYPE: usize = 2000;
        let topo = Topology::new(2)?;
        let (c, p, junk_site) = (&topo.concentrator, &topo.peers[0], &topo.peers[1]);
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &topo.concentrator_device(), &WgpmdOptions::default())?;
        let msgs = junk(&c.key.public_bytes(), PER_TYPE);
        let mut want: HashMap<Class, u64> = HashMap::new();
        for (_, class) in &msgs {
            *want.entry(*class).or_default() += 1;
        }
        let st0 = d.stats()?;
        let t = Instant::now();
        let sent = send_paced(
            &junk_site.ns,
            c.endpoint(),
            msgs.into_iter().map(|(m, _)| m).collect(),
            Duration::from_millis(600),
        )?;
        let took = t.elapsed();
        let total: u64 = want.values().sum();
        ensure!(sent == total, "sent {sent} of {total} messages");
        let queued = want[&Class::Queued];
        let delta = |s: &Counters, k: &str| -> Result<u64> { Ok(s.workers_sum(k)? - st0.workers_sum(k)?) };
        // Everything screened and every queued message processed.
        let screened = |s: &Counters| -> Result<bool> {
            let mut n = delta(s, "handshakes_processed")?;
            for class in Class::HANDSHAKE.into_iter().filter(|&c| c != Class::Queued) {
                n += delta(s, class.counter())?;
            }
            Ok(n + delta(s, "wan_queue_rx_dropped")? >= total - want[&Class::Data])
        };
        let st = d.wait_stats("the junk screened and the queue drained", screened)?;
        let ring_dropped = delta(&st, "wan_queue_rx_dropped")?;
        let counts: Vec<String> = Class::HANDSHAKE
            .iter()
            .map(|c| Ok(format!("{} +{} (sent {})", c.counter(), delta(&st, c.counter())?, want[c])))
            .collect::<Result<_>>()?;
        eprintln!(
            "{sent} messages in {:.2} s ({PER_TYPE} per type); wgpmd: {}; handshakes_processed +{}, \
             handshakes_failed +{}, dh_operations +{}, ring drops {ring_dropped}",
            took.as_secs_f64(),
            counts.join(", "),
            delta(&st, "handshakes_processed")?,
            delta(&st, "handshakes_failed")?,
            st.total("dh_operations")? - st0.total("dh_operations")?,
        );
        ensure!(ring_dropped == 0, "the WAN ring dropped {ring_dropped} frames: the counts below cannot be exact");
        for class in Class::HANDSHAKE {
            let got = delta(&st, class.counter())?;
            ensure!(got == want[&class], "{}: +{got}, want +{} ({class:?})", class.counter(), want[&class]);
        }
        // Only the valid-MAC1 messages were worth (and got) the DH work, and all failed.
        ensure!(delta(&st, "handshakes_processed")? == queued, "handshakes_processed");
        ensure!(delta(&st, "handshakes_failed")? == queued, "handshakes_failed");
        ensure!(st.get("handshake_queue_depth")? == 0, "queue depth {}", st.get("handshake_queue_depth")?);
        for k in QUIET {
            ensure!(delta(&st, k)? == 0, "{k} +{}: wgpmd put itself under load", delta(&st, k)?);
        }
        ensure!(st.get("under_load")? == 0, "under load after the junk");

        // The real peer: its first initiation gets a response.
        let before = d.stats()?;
        let _peer = WgGo::start(ctx, &p.ns, &topo.peer_device(0))?;
        let t = wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        let after = d.stats()?;
        let responses = after.total("responses_sent")? - before.total("responses_sent")?;
        let cookies = after.total("cookies_sent")? - st0.total("cookies_sent")?;
        eprintln!(
            "wireguard-go peer: first ping reply after {:.2} s; wgpmd responses +{responses}, cookies +{cookies}",
            t.as_secs_f64()
        );
        ensure!(cookies == 0, "wgpmd sent {cookies} cookie replies");
        ensure!(responses >= 1, "no handshake response");
        ensure!(
            t < Duration::from_secs(4),
            "the handshake took {:.2} s: its first initiation was not answered",
            t.as_secs_f64()
        );
        ping_replied(&p.ns, c.inner_ip, 3)?;
        let e = d.show()?;
        let e = e.peer(&p.key.public_b64()).context("wgpmd does not list the peer")?;
        ensure!(e.latest_handshake > 0 && e.endpoint == Some(p.endpoint()), "{e:?}");
        d.ensure_running()?;
        d.stop()
    });
}

/// Completes a handshake with wgpmd (at `to`) for each of `keys`, each from a UDP socket of its
/// own (so the flows spread over wgpmd's workers), from inside `ns`. Returns how many got a
/// response that completed the handshake.
fn handshakes_from_ports(ns: &Netns, to: SocketAddr, conc: [u8; 32], keys: Vec<[u8; 32]>) -> Result<usize> {
    let name = ns.name().to_string();
    std::thread::spawn(move || -> Result<usize> {
        use rand_core::OsRng;
        use wgpmd_proto::crypto::PrivateKey;
        use wgpmd_proto::device::{Device, HandshakeOutcome, Output};
        use wgpmd_proto::time::Timestamp;
        enter_netns(&name)?; // only this thread changes namespace
        let mut done = 0;
        for key in keys {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut dev = Device::new(&mut OsRng, 0);
            dev.set_private_key(Some(PrivateKey::from_bytes(key)));
            let id = dev.add_peer(&mut OsRng, conc).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            dev.set_endpoint(id, to).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let mut out = Output::with_capacity(4);
            let now = Timestamp::from_secs(10);
            dev.initiate(now, &mut OsRng, id, &mut out).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            s.send_to(out.transmits[0].payload(), to)?;
            let mut buf = [0u8; 256];
            // The first may wait for wgpmd to resolve our address.
            for _ in 0..10 {
                let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
                out.clear();
                if let Ok(HandshakeOutcome::Completed(_)) =
                    dev.receive_handshake(now, &mut OsRng, from, &buf[..n], false, &mut out)
                {
                    done += 1;
                    break;
                }
            }
        }
        Ok(done)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the handshake thread panicked"))?
}

/// (b) Two workers (`-l 0-1 --control-shares-core`, WAN fanout by flow hash), handshakes on
/// both: four wireguard-go peers complete theirs and ping, and 24 more of wgpmd's peers
/// (played by the wgpmd library, each from a UDP port of its own so that their flows spread)
/// get a response each. Both workers processed handshakes and sent responses (24 flows all on
/// one worker: a chance of 2^-23), and no cookie reply was needed.
#[test]
fn two_workers_both_process_handshakes() {
    run("two_workers_both_process_handshakes", |ctx| {
        const EXTRA: usize = 24;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        ensure!(cores >= 2, "this test needs 2 cores, the machine has {cores}");
        let topo = Topology::new(4)?;
        let c = &topo.concentrator;
        let extra: Vec<KeyPair> = (0..EXTRA).map(|_| KeyPair::generate()).collect();
        let mut dcfg = topo.concentrator_device();
        for (i, k) in extra.iter().enumerate() {
            dcfg = dcfg.peer(PeerConfig::new(&k.public_b64(), &[&format!("10.100.1.{}/32", i + 1)]));
        }
        let opts = WgpmdOptions { lcores: "0-1".into(), control_shares_core: true, ..Default::default() };
        let mut d = Wgpmd::start_concentrator(ctx, &topo, &dcfg, &opts)?;
        let st0 = d.stats()?;
        ensure!(st0.workers() == 2, "{} workers", st0.workers());
        let mut peers = Vec::new();
        for i in 0..topo.peers.len() {
            peers.push(WgGo::start(ctx, &topo.peers[i].ns, &topo.peer_device(i))?);
        }
        for p in &topo.peers {
            wait_for_ping(&p.ns, c.inner_ip, secs(30))?;
        }
        let keys = extra.iter().map(|k| k.private_bytes()).collect();
        let done = handshakes_from_ports(&topo.peers[0].ns, c.endpoint(), c.key.public_bytes(), keys)?;
        let want = (topo.peers.len() + EXTRA) as u64;
        let st = d.wait_stats("every response counted", |s| Ok(s.workers_sum("responses_sent")? >= want))?;
        let (processed, responses, data_rx) =
            (st.per_worker("handshakes_processed")?, st.per_worker("responses_sent")?, st.per_worker("data_rx")?);
        eprintln!(
            "{done} of {EXTRA} extra handshakes completed; per worker: handshakes_processed {processed:?}, \
             responses_sent {responses:?}, data_rx {data_rx:?}; cookies_sent {}",
            st.total("cookies_sent")?
        );
        ensure!(done == EXTRA, "{done} of {EXTRA} handshakes got a response");
        ensure!(processed.iter().all(|&n| n > 0), "a worker processed no handshake: {processed:?}");
        ensure!(responses.iter().all(|&n| n > 0), "a worker sent no response: {responses:?}");
        ensure!(st.total("responses_sent")? >= want, "responses_sent {}", st.total("responses_sent")?);
        ensure!(st.total("cookies_sent")? == 0, "cookie replies without load");
        for p in &topo.peers {
            ping_replied(&p.ns, c.inner_ip, 2)?;
        }
        drop(peers);
        d.ensure_running()?;
        d.stop()
    });
}
