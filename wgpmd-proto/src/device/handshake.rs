//! Handshake and cookie messages, initiations, keepalives and timers (kernel `receive.c`
//! `wg_receive_handshake_packet`, `send.c`, `timers.c` handlers).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand_core::{CryptoRng, RngCore};
use wgpmd_x25519::Backend;

use super::{Device, DropReason, Event, IndexEntry, Output, Peer, PeerId, Transmit};
use crate::cookie::{MacState, Screening, BATCH};
use crate::noise::{self, NoiseError};
use crate::session::Keypair;
use crate::time::{tai64n, Timestamp};
use crate::timers::TimerAction;
use crate::wire::wireguard::{CookieReply, HandshakeInitiation, HandshakeResponse, MacMessage, Message};

/// What a handshake-stage message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeOutcome {
    /// An initiation was accepted and answered; the peer's new session waits for confirmation.
    Responded(PeerId),
    /// A response completed our handshake; the session is ready.
    Completed(PeerId),
    /// Under load without a valid MAC2: a cookie reply was sent instead of doing DH work.
    CookieSent,
    /// A cookie reply was stored for the next retry to the peer.
    CookieStored(PeerId),
}

impl Device {
    /// Process one handshake-stage message (types 1, 2, 3) from `src`. `under_load` comes from
    /// [`Device::update_load`]. Replies go to `out.transmits`.
    pub fn receive_handshake<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        msg: &[u8],
        under_load: bool,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        // The cheap checks first (type and length together, MAC1, and under load MAC2 and the
        // rate limit), then the DH work: the two steps a worker takes apart.
        match self.screen_handshake(now, rng, src, msg, under_load, out)? {
            Screened::Handled(outcome) => Ok(outcome),
            Screened::Admitted { cookie_checked } => {
                self.receive_screened(now, rng, src, msg, cookie_checked, under_load, out)
            }
        }
    }

    /// MAC checks and the under-load decision shared by initiations and responses. `Ok(true)`:
    /// go on with DH work; `Ok(false)`: a cookie reply was sent.
    fn check_macs<R: RngCore + CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        msg: &M,
        under_load: bool,
        out: &mut Output,
    ) -> Result<bool, DropReason> {
        let (state, reply) = if !self.cookie_checker.check_mac1(msg) {
            (MacState::Invalid, None)
        } else if !under_load {
            (MacState::ValidMacButNoCookie, None)
        } else {
            self.cookie_checker.validate_mac2_or_reply(now, rng, msg, src, &self.ratelimiter)
        };
        match state {
            MacState::Invalid => {
                tracing::debug!("Invalid handshake MAC from {}", src);
                Err(out.stats.drop(DropReason::InvalidMac1))
            }
            MacState::ValidMacButNoCookie if !under_load => {
                out.stats.mac1_valid += 1;
                Ok(true)
            }
            MacState::ValidMacWithCookie => {
                out.stats.mac1_valid += 1;
                Ok(true)
            }
            MacState::ValidMacButNoCookie => {
                out.stats.mac1_valid += 1;
                if let Some(reply) = reply {
                    out.transmits.push(Transmit::new(None, src, reply.as_ref()));
                    out.stats.cookies_sent += 1;
                }
                Ok(false)
            }
            MacState::ValidMacWithCookieButRatelimited => {
                out.stats.mac1_valid += 1;
                Err(out.stats.drop(DropReason::RateLimited))
            }
        }
    }

    fn on_initiation<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        init: &HandshakeInitiation<&[u8]>,
        identity: &crate::noise::Identity,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        out.stats.dh_operations += 1;
        let started = noise::begin_consume_initiation(identity, init).map(|s| (s, None));
        self.on_initiation_started(now, rng, src, init, identity, started, out)
    }

    /// [`Self::on_initiation`] after `es` (counted in `dh_operations` by the caller): `started`
    /// is the initiation's start and, when the responder's DHs were computed with it
    /// ([`noise::begin_consume_initiations`]), those; without them the response does its own.
    #[allow(clippy::too_many_arguments)]
    fn on_initiation_started<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        init: &HandshakeInitiation<&[u8]>,
        identity: &crate::noise::Identity,
        started: Result<(noise::InitiationStart, Option<noise::ResponderDh>), NoiseError>,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        let (start, precomputed) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("Invalid handshake initiation from {}: {}", src, e);
                return Err(out.stats.drop(DropReason::HandshakeFailed));
            }
        };
        let Some(peer) = self.peer_by_key(start.remote_static()).and_then(|id| self.peer(id)).cloned() else {
            tracing::debug!("Invalid handshake initiation from {}: unknown peer", src);
            return Err(out.stats.drop(DropReason::UnknownPeer));
        };
        let id = peer.id();
        let mut hs = peer.handshake();
        let old_index = hs.noise.local_index();
        if !hs.noise.has_static_static(identity) {
            out.stats.dh_operations += 1;
        }
        if let Err(e) = hs.noise.consume_initiation(identity, start, now) {
            tracing::debug!("Invalid handshake initiation from {}: {}", src, e);
            let r = match e {
                NoiseError::Replay | NoiseError::Flood => DropReason::InitiationReplay,
                _ => DropReason::HandshakeFailed,
            };
            return Err(out.stats.drop(r));
        }
        // ss (cached after the peer's first handshake), then e, ee, se in the response: two
        // more DHs.
        if old_index != 0 {
            self.remove_index(old_index);
        }
        peer.set_endpoint(src);
        peer.add_rx(init.as_ref().len());
        tracing::debug!("Receiving handshake initiation from {} ({})", peer.name(), src);
        let local = self.index.insert_new(rng, IndexEntry::Handshake(id));
        out.stats.dh_operations += 2;
        let made = match precomputed {
            Some(dh) => hs.noise.create_response_with(dh, local),
            None => hs.noise.create_response(rng, local),
        };
        let mut resp = match made {
            Ok(r) => r,
            Err(e) => {
                self.remove_index(local);
                tracing::debug!("Invalid handshake initiation from {}: {}", src, e);
                return Err(out.stats.drop(DropReason::HandshakeFailed));
            }
        };
        hs.add_macs(now, &mut resp);
        let keys = match hs.noise.begin_session() {
            Ok(k) => k,
            Err(_) => {
                self.remove_index(local);
                return Err(out.stats.drop(DropReason::HandshakeFailed));
            }
        };
        drop(hs);
        self.install_session(&peer, keys, now, out)?;
        peer.timers.response_sent(now);
        self.note_authenticated_sent(&peer, now, out);
        peer.timers.any_authenticated_packet_received(now);
        out.wake(id, peer.timers.any_authenticated_packet_traversal(now));
        peer.add_tx(resp.as_ref().len());
        out.transmits.push(Transmit::new(Some(id), src, resp.as_ref()));
        out.stats.responses_sent += 1;
        Ok(HandshakeOutcome::Responded(id))
    }

    fn on_response(
        &self,
        now: Timestamp,
        src: SocketAddr,
        resp: &HandshakeResponse<&[u8]>,
        identity: &crate::noise::Identity,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        let Some(IndexEntry::Handshake(id)) = self.index.get(resp.receiver_index()) else {
            return Err(out.stats.drop(DropReason::UnknownIndex));
        };
        let Some(peer) = self.peer(id).cloned() else {
            return Err(out.stats.drop(DropReason::UnknownIndex));
        };
        let mut hs = peer.handshake();
        if !hs.noise.is_initiation_pending() {
            return Err(out.stats.drop(DropReason::HandshakeFailed));
        }
        out.stats.dh_operations += 2;
        if let Err(e) = hs.noise.consume_response(identity, resp) {
            tracing::debug!("Invalid handshake response from {}: {}", src, e);
            return Err(out.stats.drop(DropReason::HandshakeFailed));
        }
        let keys = match hs.noise.begin_session() {
            Ok(k) => k,
            Err(_) => return Err(out.stats.drop(DropReason::HandshakeFailed)),
        };
        drop(hs);
        tracing::debug!("Receiving handshake response from {} ({})", peer.name(), src);
        peer.set_endpoint(src);
        peer.add_rx(resp.as_ref().len());
        self.install_session(&peer, keys, now, out)?;
        peer.timers.handshake_complete(now);
        peer.timers.any_authenticated_packet_received(now);
        out.wake(id, peer.timers.any_authenticated_packet_traversal(now));
        out.events.push(Event::SessionReady(id));
        Ok(HandshakeOutcome::Completed(id))
    }

    fn on_cookie_reply(
        &self,
        now: Timestamp,
        msg: &CookieReply<&[u8]>,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        let id = match self.index.get(msg.receiver_index()) {
            Some(IndexEntry::Handshake(id)) | Some(IndexEntry::Keypair(id, _)) => id,
            None => return Err(out.stats.drop(DropReason::UnknownIndex)),
        };
        let Some(peer) = self.peer(id) else {
            return Err(out.stats.drop(DropReason::UnknownIndex));
        };
        // A cookie reply is not authenticated: it never moves the endpoint.
        let consumed = peer.handshake().consume_cookie_reply(now, msg);
        match consumed {
            Ok(()) => {
                tracing::debug!("Receiving cookie response for {}", peer.name());
                Ok(HandshakeOutcome::CookieStored(id))
            }
            Err(e) => {
                tracing::debug!("Could not decrypt invalid cookie response: {}", e);
                Err(out.stats.drop(DropReason::InvalidCookie))
            }
        }
    }

    /// Turn derived keys into a keypair in the peer's slots and the index table.
    fn install_session(
        &self,
        peer: &Arc<Peer>,
        keys: noise::SessionKeys,
        now: Timestamp,
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let kp = Arc::new(Keypair::from_session(&keys, now));
        // The handshake's index now names the keypair (kernel wg_index_hashtable_replace). If
        // the index is gone, the peer was removed or reset meanwhile: drop the session.
        if !self.index.replace(keys.local_index, IndexEntry::Keypair(peer.id(), kp.clone())) {
            return Err(out.stats.drop(DropReason::HandshakeFailed));
        }
        for idx in peer.keypairs.install(kp).iter() {
            self.remove_index(idx);
        }
        peer.handshake_wanted.store(false, Ordering::Relaxed);
        out.wake(peer.id(), peer.timers.session_derived(now));
        out.stats.sessions += 1;
        Ok(())
    }

    pub(crate) fn note_authenticated_sent(&self, peer: &Peer, now: Timestamp, out: &mut Output) {
        out.wake(peer.id(), peer.timers.any_authenticated_packet_traversal(now));
        peer.timers.any_authenticated_packet_sent(now);
    }

    /// Send a handshake initiation to the peer if our own rate limit (one per REKEY_TIMEOUT)
    /// allows (kernel `wg_packet_send_queued_handshake_initiation` with `is_retry = false`).
    pub fn initiate<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        id: PeerId,
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let peer = self.peer(id).ok_or(DropReason::UnknownPeer)?.clone();
        peer.handshake_wanted.store(false, Ordering::Relaxed);
        // Check and record in one step, so two cores asking at once send one initiation.
        if !peer.timers.claim_initiation(now) {
            return Err(out.stats.drop(DropReason::InitiationRateLimited));
        }
        peer.timers.reset_attempts();
        self.send_initiation(now, rng, &peer, out)
    }

    fn send_initiation<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        peer: &Arc<Peer>,
        out: &mut Output,
    ) -> Result<(), DropReason> {
        let Some(identity) = self.identity.as_ref() else {
            return Err(out.stats.drop(DropReason::NoPrivateKey));
        };
        let Some(to) = peer.endpoint() else {
            return Err(out.stats.drop(DropReason::NoEndpoint));
        };
        let mut hs = peer.handshake();
        let old = hs.noise.local_index();
        let local = self.index.insert_new(rng, IndexEntry::Handshake(peer.id()));
        out.stats.dh_operations += if hs.noise.has_static_static(identity) { 1 } else { 2 };
        let made = hs.noise.create_initiation(identity, rng, tai64n(self.wall_ns(now)), local);
        if old != 0 {
            self.remove_index(old);
        }
        let mut msg = match made {
            Ok(m) => m,
            Err(e) => {
                drop(hs);
                self.remove_index(local);
                tracing::debug!("Could not create handshake initiation for {}: {}", peer.name(), e);
                return Err(out.stats.drop(DropReason::HandshakeFailed));
            }
        };
        hs.add_macs(now, &mut msg);
        drop(hs);
        tracing::debug!("Sending handshake initiation to {} ({})", peer.name(), to);
        self.note_authenticated_sent(peer, now, out);
        peer.timers.initiation_sent(now);
        out.wake(peer.id(), peer.timers.handshake_initiated(now));
        peer.add_tx(msg.as_ref().len());
        out.transmits.push(Transmit::new(Some(peer.id()), to, msg.as_ref()));
        out.stats.initiations_sent += 1;
        Ok(())
    }

    /// Send a keepalive (an empty data message) on the peer's current session; with no session,
    /// ask for a handshake instead (kernel `wg_packet_send_keepalive`).
    pub fn send_keepalive(&self, now: Timestamp, id: PeerId, out: &mut Output) -> Result<(), DropReason> {
        let mut buf = [0u8; crate::messages::DATA_MIN_LEN];
        match self.encapsulate_to(now, id, &mut buf, 0, out) {
            Ok(e) => {
                if let Some(p) = self.peer(id) {
                    tracing::debug!("Sending keepalive packet to {}", p.name());
                }
                out.transmits.push(Transmit::new(Some(id), e.to, &buf[..e.len]));
                Ok(())
            }
            Err(r) => Err(r),
        }
    }

    /// Run the peer's due timers (kernel `timers.c` handlers) and return its next deadline, for
    /// the caller's timer wheel.
    pub fn poll_timers<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        id: PeerId,
        out: &mut Output,
    ) -> Option<Timestamp> {
        let peer = self.peer(id)?.clone();
        let fired = peer.timers.poll(now, rng);
        for action in fired.actions.iter() {
            tracing::debug!("{}", action.log_message(peer.short_key()));
            match *action {
                TimerAction::SendInitiation { retry, .. } => {
                    if !retry {
                        peer.timers.reset_attempts();
                    }
                    // Retries bypass nothing: REKEY_TIMEOUT has passed since the last one.
                    if peer.timers.may_send_initiation(now) {
                        let _ = self.send_initiation(now, rng, &peer, out);
                    }
                }
                TimerAction::SendKeepalive => {
                    let _ = self.send_keepalive(now, id, out);
                }
                TimerAction::GiveUp => out.events.push(Event::GiveUp(id)),
                TimerAction::ZeroKeyMaterial => self.forget_sessions(&peer),
            }
        }
        peer.timers.next_deadline()
    }
}

/// An initiation or a response of a burst being screened.
enum HandshakeView<'a> {
    Initiation(HandshakeInitiation<&'a [u8]>),
    Response(HandshakeResponse<&'a [u8]>),
}

impl HandshakeView<'_> {
    fn macs(&self) -> &dyn MacMessage {
        match self {
            HandshakeView::Initiation(m) => m,
            HandshakeView::Response(m) => m,
        }
    }
}

/// What [`Device::screen_handshake`] decided about a handshake-stage message as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Screened {
    /// An initiation or a response that passed every check that costs no Diffie-Hellman: queue
    /// it for [`Device::receive_screened`]. `cookie_checked`: it was screened under load, so
    /// its mac2 and its source's rate were checked too.
    Admitted {
        /// Screened under load (mac2 valid, within the source's rate).
        cookie_checked: bool,
    },
    /// Done without DH work: under load without a valid mac2, a cookie reply was sent
    /// ([`HandshakeOutcome::CookieSent`]); or a cookie reply was stored
    /// ([`HandshakeOutcome::CookieStored`]).
    Handled(HandshakeOutcome),
}

/// [`Device::receive_handshake`] in two steps, for a caller that screens messages where they
/// arrive and does the DH work later, from a bounded queue with a budget (the kernel's split
/// between `wg_packet_receive` and its handshake workers, with the MAC checks in front of the
/// queue so that junk never takes a slot).
impl Device {
    /// The cheap checks of a handshake-stage message (types 1, 2, 3) from `src`: type and exact
    /// length, mac1, and when `under_load` mac2 and the source's rate (a cookie reply is sent to
    /// a message without a valid mac2). A cookie reply is consumed here (no DH: one XChaCha20).
    /// Drops are counted in `out.stats` as [`Device::receive_handshake`] counts them.
    pub fn screen_handshake<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        msg: &[u8],
        under_load: bool,
        out: &mut Output,
    ) -> Result<Screened, DropReason> {
        let Ok(message) = Message::new_checked(msg) else {
            return Err(out.stats.drop(DropReason::Malformed));
        };
        let admitted = match message {
            Message::HandshakeInitiation(init) => self.check_macs(now, rng, src, &init, under_load, out)?,
            Message::HandshakeResponse(resp) => self.check_macs(now, rng, src, &resp, under_load, out)?,
            Message::CookieReply(reply) => return self.on_cookie_reply(now, &reply, out).map(Screened::Handled),
            Message::TransportData(_) => return Err(out.stats.drop(DropReason::Malformed)),
        };
        Ok(if admitted {
            Screened::Admitted { cookie_checked: under_load }
        } else {
            Screened::Handled(HandshakeOutcome::CookieSent)
        })
    }

    /// [`Device::screen_handshake`] of every message of a burst (`(source, message)`), with the
    /// MACs of the handshake messages computed [`BATCH`] at a time
    /// ([`crate::cookie::CookieChecker::validate_many`]). `results` is cleared and gets one
    /// result per message, in order; replies, counters and the `rng`'s use are those of
    /// [`Device::screen_handshake`] called on each message in turn.
    pub fn screen_handshakes<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        burst: &[(SocketAddr, &[u8])],
        under_load: bool,
        out: &mut Output,
        results: &mut Vec<Result<Screened, DropReason>>,
    ) {
        results.clear();
        results.resize(burst.len(), Err(DropReason::Malformed));
        // Handshake messages wait here (their position, their view) until BATCH of them.
        let mut pending: arrayvec::ArrayVec<(usize, HandshakeView<'_>), BATCH> = arrayvec::ArrayVec::new();
        for (i, &(_, msg)) in burst.iter().enumerate() {
            let view = match Message::new_checked(msg) {
                Ok(Message::HandshakeInitiation(init)) => HandshakeView::Initiation(init),
                Ok(Message::HandshakeResponse(resp)) => HandshakeView::Response(resp),
                Ok(Message::CookieReply(reply)) => {
                    results[i] = self.on_cookie_reply(now, &reply, out).map(Screened::Handled);
                    continue;
                }
                Ok(Message::TransportData(_)) | Err(_) => {
                    results[i] = Err(out.stats.drop(DropReason::Malformed));
                    continue;
                }
            };
            pending.push((i, view));
            if pending.is_full() {
                self.screen_pending(now, rng, burst, &pending, under_load, out, results);
                pending.clear();
            }
        }
        self.screen_pending(now, rng, burst, &pending, under_load, out, results);
    }

    /// The MAC checks of up to [`BATCH`] handshake messages, results where they belong.
    #[allow(clippy::too_many_arguments)]
    fn screen_pending<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        burst: &[(SocketAddr, &[u8])],
        pending: &[(usize, HandshakeView<'_>)],
        under_load: bool,
        out: &mut Output,
        results: &mut [Result<Screened, DropReason>],
    ) {
        if pending.is_empty() {
            return;
        }
        let mut batch: arrayvec::ArrayVec<Screening<'_>, BATCH> =
            pending.iter().map(|(i, v)| Screening::new(v.macs(), burst[*i].0)).collect();
        self.cookie_checker.validate_many(now, rng, under_load, &self.ratelimiter, &mut batch);
        for ((i, _), s) in pending.iter().zip(batch.iter_mut()) {
            let src = s.src;
            results[*i] = match s.state {
                MacState::Invalid => {
                    tracing::debug!("Invalid handshake MAC from {}", src);
                    Err(out.stats.drop(DropReason::InvalidMac1))
                }
                MacState::ValidMacButNoCookie if !under_load => {
                    out.stats.mac1_valid += 1;
                    Ok(Screened::Admitted { cookie_checked: false })
                }
                MacState::ValidMacWithCookie => {
                    out.stats.mac1_valid += 1;
                    Ok(Screened::Admitted { cookie_checked: true })
                }
                MacState::ValidMacButNoCookie => {
                    out.stats.mac1_valid += 1;
                    if let Some(reply) = s.reply.take() {
                        out.transmits.push(Transmit::new(None, src, reply.as_ref()));
                        out.stats.cookies_sent += 1;
                    }
                    Ok(Screened::Handled(HandshakeOutcome::CookieSent))
                }
                MacState::ValidMacWithCookieButRatelimited => {
                    out.stats.mac1_valid += 1;
                    Err(out.stats.drop(DropReason::RateLimited))
                }
            };
        }
    }

    /// The DH work for a message [`Device::screen_handshake`] admitted (mac1 is not checked
    /// again). `under_load` is the load now: a message admitted without `cookie_checked` is
    /// then held to its mac2 and its source's rate first, and answered with a cookie reply
    /// instead of DH work if it has no valid mac2 (the kernel decides at dequeue time, so a
    /// backlog that built up before the load was noticed costs no DH).
    #[allow(clippy::too_many_arguments)]
    pub fn receive_screened<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        msg: &[u8],
        cookie_checked: bool,
        under_load: bool,
        out: &mut Output,
    ) -> Result<HandshakeOutcome, DropReason> {
        let Ok(message) = Message::new_checked(msg) else {
            return Err(out.stats.drop(DropReason::Malformed));
        };
        let check_cookie = under_load && !cookie_checked;
        match message {
            Message::HandshakeInitiation(init) => {
                if check_cookie && !self.check_mac2(now, rng, src, &init, out)? {
                    return Ok(HandshakeOutcome::CookieSent);
                }
                let Some(identity) = self.identity.as_ref() else {
                    return Err(out.stats.drop(DropReason::NoPrivateKey));
                };
                self.on_initiation(now, rng, src, &init, identity, out)
            }
            Message::HandshakeResponse(resp) => {
                if check_cookie && !self.check_mac2(now, rng, src, &resp, out)? {
                    return Ok(HandshakeOutcome::CookieSent);
                }
                let Some(identity) = self.identity.as_ref() else {
                    return Err(out.stats.drop(DropReason::NoPrivateKey));
                };
                self.on_response(now, src, &resp, identity, out)
            }
            Message::CookieReply(reply) => self.on_cookie_reply(now, &reply, out),
            Message::TransportData(_) => Err(out.stats.drop(DropReason::Malformed)),
        }
    }

    /// [`Device::receive_screened`] of several admitted messages (`(source, message,
    /// cookie_checked)`), with the responder's Diffie-Hellman work for the initiations among
    /// them done together in X25519 lanes ([`noise::begin_consume_initiations`]) when this CPU
    /// has AVX-512 IFMA and at least two initiations go on to DH work; otherwise one message
    /// at a time, as [`Device::receive_screened`] does. `results` is cleared and gets one
    /// result per job, in job order. Jobs take effect in job order: the under-load mac2 check
    /// of each initiation is made before it joins the batch, and a response to a handshake of
    /// ours or a cookie reply first finishes the initiations batched before it (a response can complete a handshake
    /// that an earlier initiation from the same peer replaces), then is processed on its own.
    /// Counters and drops are those of [`Device::receive_screened`] on each job; only the order
    /// of the random draws differs (each batch draws its ephemeral keys together), and that of
    /// the transmits (under load, a later initiation's cookie reply comes before the responses
    /// of the initiations batched before it).
    #[allow(clippy::too_many_arguments)]
    pub fn receive_screened_batch<R: RngCore + CryptoRng>(
        &self,
        now: Timestamp,
        rng: &mut R,
        jobs: &[(SocketAddr, &[u8], bool)],
        under_load: bool,
        out: &mut Output,
        results: &mut Vec<Result<HandshakeOutcome, DropReason>>,
    ) {
        let lanes = (Backend::detect() == Backend::Ifma).then_some(Backend::Ifma);
        self.receive_screened_batch_on(lanes, now, rng, jobs, under_load, out, results)
    }

    /// [`Device::receive_screened_batch`] with the lanes' backend given: `None` processes one
    /// message at a time; `Some(backend)` batches the initiations on `backend` (tests force
    /// [`Backend::Portable`] or [`Backend::Ifma`] with it; the portable backend is slower than
    /// single aws-lc DHs and is never chosen otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn receive_screened_batch_on<R: RngCore + CryptoRng>(
        &self,
        lanes: Option<Backend>,
        now: Timestamp,
        rng: &mut R,
        jobs: &[(SocketAddr, &[u8], bool)],
        under_load: bool,
        out: &mut Output,
        results: &mut Vec<Result<HandshakeOutcome, DropReason>>,
    ) {
        results.clear();
        let (Some(backend), Some(identity)) = (lanes, self.identity.as_ref()) else {
            results.extend(
                jobs.iter()
                    .map(|&(src, msg, checked)| self.receive_screened(now, rng, src, msg, checked, under_load, out)),
            );
            return;
        };
        results.resize(jobs.len(), Err(DropReason::Malformed));
        // The initiations that go on to DH work: their job, source and view.
        let mut batch: Vec<(usize, SocketAddr, HandshakeInitiation<&[u8]>)> = Vec::with_capacity(jobs.len());
        for (i, &(src, msg, checked)) in jobs.iter().enumerate() {
            results[i] = match Message::new_checked(msg) {
                Ok(Message::HandshakeInitiation(init)) => {
                    if under_load && !checked {
                        match self.check_mac2(now, rng, src, &init, out) {
                            Ok(true) => {}
                            Ok(false) => {
                                results[i] = Ok(HandshakeOutcome::CookieSent);
                                continue;
                            }
                            Err(r) => {
                                results[i] = Err(r);
                                continue;
                            }
                        }
                    }
                    batch.push((i, src, init));
                    continue;
                }
                other => {
                    // The initiations before it take effect first, where they can change what it
                    // does: a response to a handshake of ours (an earlier initiation from its
                    // peer can replace that handshake and remove its index; none creates one),
                    // a cookie reply. A response whose index names no handshake of ours now is
                    // dropped whatever the order (forged responses, which need only a valid
                    // mac1 when not under load, then cannot cut a batch into single ones).
                    let depends = match other {
                        Ok(Message::HandshakeResponse(r)) => {
                            self.index.with(r.receiver_index(), |e| matches!(e, IndexEntry::Handshake(_))) == Some(true)
                        }
                        Ok(Message::CookieReply(_)) => true,
                        _ => false,
                    };
                    if depends {
                        self.finish_initiations(backend, identity, now, rng, &mut batch, out, results);
                    }
                    self.receive_screened(now, rng, src, msg, checked, under_load, out)
                }
            };
        }
        self.finish_initiations(backend, identity, now, rng, &mut batch, out, results);
    }

    /// The DH work of the initiations `batch` holds (emptied), into their `results`: in lanes
    /// on `backend` when there are at least two, else one at a time.
    #[allow(clippy::too_many_arguments)]
    fn finish_initiations<R: RngCore + CryptoRng>(
        &self,
        backend: Backend,
        identity: &crate::noise::Identity,
        now: Timestamp,
        rng: &mut R,
        batch: &mut Vec<(usize, SocketAddr, HandshakeInitiation<&[u8]>)>,
        out: &mut Output,
        results: &mut [Result<HandshakeOutcome, DropReason>],
    ) {
        if batch.len() < 2 {
            for (i, src, init) in batch.drain(..) {
                results[i] = self.on_initiation(now, rng, src, &init, identity, out);
            }
            return;
        }
        let views: Vec<HandshakeInitiation<&[u8]>> = batch.iter().map(|(_, _, v)| v.clone()).collect();
        out.stats.dh_operations += batch.len() as u64;
        let started = noise::begin_consume_initiations(identity, &views, rng, backend);
        for ((i, src, init), started) in batch.drain(..).zip(started) {
            let started = started.map(|(s, dh)| (s, Some(dh)));
            results[i] = self.on_initiation_started(now, rng, src, &init, identity, started, out);
        }
    }

    /// Under load, for a message whose mac1 verified earlier: `Ok(true)`: mac2 valid and the
    /// source within its rate, go on with DH work; `Ok(false)`: a cookie reply was sent.
    fn check_mac2<R: RngCore + CryptoRng, M: MacMessage>(
        &self,
        now: Timestamp,
        rng: &mut R,
        src: SocketAddr,
        msg: &M,
        out: &mut Output,
    ) -> Result<bool, DropReason> {
        match self.cookie_checker.validate_mac2_or_reply(now, rng, msg, src, &self.ratelimiter) {
            (MacState::ValidMacWithCookie, _) => Ok(true),
            (MacState::ValidMacWithCookieButRatelimited, _) => Err(out.stats.drop(DropReason::RateLimited)),
            (MacState::ValidMacButNoCookie | MacState::Invalid, reply) => {
                let reply = reply.unwrap_or_else(|| self.cookie_checker.create_reply(now, rng, msg, src));
                out.transmits.push(Transmit::new(None, src, reply.as_ref()));
                out.stats.cookies_sent += 1;
                Ok(false)
            }
        }
    }
}
