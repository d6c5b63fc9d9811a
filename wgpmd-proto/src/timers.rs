//! Every WireGuard timer rule of one peer: five deadlines, the handshake-attempt counter, the
//! own-initiation rate limit and the receive-side last-minute rekey flag, following the kernel's
//! `drivers/net/wireguard/timers.c` (and the `last_sent_handshake` rule of `send.c`).
//!
//! | Timer | Armed by (deadline) | Disarmed by | When it fires ([`PeerTimers::poll`]) |
//! |---|---|---|---|
//! | `retransmit_handshake` | [`handshake_initiated`](PeerTimers::handshake_initiated), always re-armed: last initiation + `REKEY_TIMEOUT` + jitter | [`handshake_complete`](PeerTimers::handshake_complete) | attempts > `MAX_TIMER_HANDSHAKES`: [`GiveUp`](TimerAction::GiveUp), disarm `send_keepalive`, arm `zero_key_material` if unarmed; else attempts += 1 and [`SendInitiation`](TimerAction::SendInitiation) `{ retry: true }` |
//! | `send_keepalive` | [`data_received`](PeerTimers::data_received) if unarmed (else sets `need_another_keepalive`): now + `KEEPALIVE_TIMEOUT` | [`any_authenticated_packet_sent`](PeerTimers::any_authenticated_packet_sent), give-up | [`SendKeepalive`](TimerAction::SendKeepalive); if `need_another_keepalive`, clear it and re-arm at now + `KEEPALIVE_TIMEOUT` |
//! | `new_handshake` | [`data_sent`](PeerTimers::data_sent) if unarmed: now + `KEEPALIVE_TIMEOUT` + `REKEY_TIMEOUT` + jitter | [`any_authenticated_packet_received`](PeerTimers::any_authenticated_packet_received) | attempts = 0 and [`SendInitiation`](TimerAction::SendInitiation) `{ retry: false }` |
//! | `zero_key_material` | [`session_derived`](PeerTimers::session_derived), always re-armed: now + `ZERO_KEY_MATERIAL_AFTER`; give-up if unarmed | (only [`disarm_all`](PeerTimers::disarm_all)) | [`ZeroKeyMaterial`](TimerAction::ZeroKeyMaterial) |
//! | `persistent_keepalive` | [`any_authenticated_packet_traversal`](PeerTimers::any_authenticated_packet_traversal) and [`set_persistent_keepalive`](PeerTimers::set_persistent_keepalive), always re-armed: now + interval, if interval > 0 | `set_persistent_keepalive(0, _)` | [`SendKeepalive`](TimerAction::SendKeepalive) if interval > 0 |
//!
//! [`disarm_all`](PeerTimers::disarm_all) (the kernel's `wg_timers_stop`) disarms all five.
//! Besides the timers the module owns:
//! - the own-initiation rate limit (`send.c`): at most one initiation per `REKEY_TIMEOUT`
//!   ([`may_send_initiation`](PeerTimers::may_send_initiation),
//!   [`claim_initiation`](PeerTimers::claim_initiation)); sending a response counts too;
//! - `handshake_attempts`, reset by non-retry initiations and completed handshakes;
//! - `sent_lastminute_handshake` (`receive.c` `keep_key_fresh`), claimed once per handshake;
//! - the time of the last completed handshake, for `wg show`.
//!
//! # Driving it
//! There is no scan over peers. Every event that moves a timer from unarmed to armed, or moves
//! an armed timer earlier, returns `Some(deadline)`: the caller puts the peer on its timer wheel
//! at that deadline (keeping the earliest entry per peer). Re-arming to a later deadline returns
//! `None`: the existing wheel entry fires early, [`PeerTimers::poll`] finds nothing due and
//! reports the true next deadline in [`TimerPoll::next`], where the caller re-files the peer.
//! `poll` fires every timer due at `now`, returns the [`TimerAction`]s to carry out in order,
//! and re-draws the jitter, so the data path never touches an RNG.
//!
//! `poll` never re-arms `retransmit_handshake` itself: on `SendInitiation` the caller sends the
//! initiation as the kernel does (check the rate limit, [`initiation_sent`], traversal and sent
//! events, then [`handshake_initiated`]). [`handshake_initiated`] never arms the retransmit
//! earlier than `last_sent_handshake + REKEY_TIMEOUT`, so when it fires the rate limit has
//! expired and the retry is never blocked by it (the jitter only makes it later).
//!
//! # Concurrency
//! Several worker cores call the event methods on `&self` while a control core polls. Every
//! field is one atomic and nothing tears. Disarm stores 0 (0 means unarmed; armed deadlines are
//! never 0); arm-if-unarmed is `compare_exchange(0, deadline)`; always-re-arm (`mod_timer`) is
//! `swap`; each after a plain load that skips the write when it would change nothing, so the
//! data path's once-per-burst events write a peer's line only when a value moves. Firing is
//! `compare_exchange(deadline_seen, 0)`, so an event that re-arms or disarms between `poll`'s
//! read and its firing wins and is not lost. The atomics use `Relaxed`: each is
//! an independent value, nothing is published through them, and every operation on one atomic
//! is ordered by that atomic's modification order, which is all the rules above rely on.
//!
//! Remaining races, all benign and all present in the kernel (which keeps these fields as
//! plain integers beside `mod_timer`):
//! - `data_received` can see `send_keepalive` armed just before `poll` fires it and set
//!   `need_another_keepalive` after `poll` read it: the flag then lingers and one extra
//!   keepalive goes out `KEEPALIVE_TIMEOUT` after the next data packet.
//! - `handshake_attempts` is read and incremented by `poll` while `handshake_complete` or
//!   `reset_attempts` may zero it: one count can be lost either way, moving give-up by one
//!   retransmit.
//! - `may_send_initiation` followed by `initiation_sent` lets two cores both send; use
//!   [`claim_initiation`](PeerTimers::claim_initiation) (one `compare_exchange`) where that
//!   matters. The kernel serialises this through its handshake work queue.
//! - If a response was sent after our own initiation, `last_sent_handshake` moved on and the
//!   retry the retransmit timer asks for is rate-limited away; as in the kernel, retransmits
//!   then stop, and the handshake the peer started completes instead.
//! - An event carrying a `now` read a little earlier than `poll`'s can arm a deadline already in
//!   the past; `poll` reports it as `next` and the caller polls again at once.
//! - The jitter is a per-peer value re-drawn at each `poll`, not per event: events between two
//!   polls share one jitter value.
//!
//! [`initiation_sent`]: PeerTimers::initiation_sent
//! [`handshake_initiated`]: PeerTimers::handshake_initiated

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use core::time::Duration;

use rand_core::{CryptoRng, RngCore};

use crate::messages::{
    KEEPALIVE_TIMEOUT, MAX_TIMER_HANDSHAKES, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX, ZERO_KEY_MATERIAL_AFTER,
};
use crate::time::{duration_nanos, Timestamp};

/// All atomics here are independent values (see the module doc on ordering).
const ORD: Ordering = Ordering::Relaxed;
/// How often `poll` retries firing one timer that events keep moving under it.
const FIRE_RETRIES: usize = 4;

/// The five per-peer timers, to name one in [`PeerTimers::deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Retransmit our handshake initiation (kernel `timer_retransmit_handshake`).
    RetransmitHandshake,
    /// Send a keepalive after receiving data (kernel `timer_send_keepalive`).
    SendKeepalive,
    /// Start a new handshake after sending data without hearing back
    /// (kernel `timer_new_handshake`).
    NewHandshake,
    /// Wipe all key material (kernel `timer_zero_key_material`).
    ZeroKeyMaterial,
    /// Send the periodic persistent keepalive (kernel `timer_persistent_keepalive`).
    PersistentKeepalive,
}

impl Timer {
    /// All five, in declaration order.
    pub const ALL: [Timer; 5] = [
        Timer::RetransmitHandshake,
        Timer::SendKeepalive,
        Timer::NewHandshake,
        Timer::ZeroKeyMaterial,
        Timer::PersistentKeepalive,
    ];
}

/// What a fired timer asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimerAction {
    /// The handshake did not complete after `MAX_TIMER_HANDSHAKES + 2` initiations: drop the
    /// packets staged for this peer and stop retrying.
    GiveUp,
    /// Send a keepalive (an empty data packet; it starts a handshake if there is no session).
    SendKeepalive,
    /// Clear all keypairs and the handshake state of this peer.
    ZeroKeyMaterial,
    /// Send a handshake initiation, subject to the own-initiation rate limit.
    SendInitiation {
        /// `true` when the retransmit timer fired (kernel `is_retry`), `false` when the
        /// new-handshake timer did (attempts were then reset to 0).
        retry: bool,
        /// `handshake_attempts` after this firing; the kernel's log calls this "try
        /// `attempts + 1`".
        attempts: u32,
    },
}

impl TimerAction {
    /// The kernel's debug log line for this action (wg(4) wording), naming the peer as `peer`.
    pub fn log_message(&self, peer: impl fmt::Display) -> String {
        match *self {
            TimerAction::GiveUp => format!(
                "Handshake for peer {peer} did not complete after {} attempts, giving up",
                MAX_TIMER_HANDSHAKES + 2
            ),
            TimerAction::SendKeepalive => format!("Sending keepalive packet to peer {peer}"),
            TimerAction::ZeroKeyMaterial => format!(
                "Zeroing out all keys for peer {peer}, since we haven't received a new one in {} seconds",
                ZERO_KEY_MATERIAL_AFTER.as_secs()
            ),
            TimerAction::SendInitiation { retry: true, attempts } => format!(
                "Handshake for peer {peer} did not complete after {} seconds, retrying (try {})",
                REKEY_TIMEOUT.as_secs(),
                attempts.saturating_add(1)
            ),
            TimerAction::SendInitiation { retry: false, .. } => format!(
                "Retrying handshake with peer {peer} because we stopped hearing back after {} seconds",
                KEEPALIVE_TIMEOUT.as_secs() + REKEY_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Most actions one `poll` can return: one of each kind.
pub const MAX_TIMER_ACTIONS: usize = 4;

/// The actions of one [`PeerTimers::poll`], in the order to carry them out: `GiveUp`,
/// `SendKeepalive`, `ZeroKeyMaterial`, `SendInitiation`. A fixed-capacity list (no heap); two
/// keepalives and two initiations due together are merged into one.
#[derive(Debug, Clone, Copy)]
pub struct TimerActions {
    buf: [TimerAction; MAX_TIMER_ACTIONS],
    len: usize,
}

impl TimerActions {
    const fn new() -> Self {
        TimerActions { buf: [TimerAction::SendKeepalive; MAX_TIMER_ACTIONS], len: 0 }
    }
    fn push(&mut self, a: TimerAction) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = a;
            self.len += 1;
        }
    }
    /// The actions as a slice.
    pub fn as_slice(&self) -> &[TimerAction] {
        self.buf.get(..self.len).unwrap_or(&[])
    }
    /// Iterate over the actions.
    pub fn iter(&self) -> core::slice::Iter<'_, TimerAction> {
        self.as_slice().iter()
    }
    /// Number of actions.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether no timer fired with something to do.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> IntoIterator for &'a TimerActions {
    type Item = &'a TimerAction;
    type IntoIter = core::slice::Iter<'a, TimerAction>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The result of [`PeerTimers::poll`].
#[derive(Debug, Clone, Copy)]
pub struct TimerPoll {
    /// What to do now, in order.
    pub actions: TimerActions,
    /// Earliest armed deadline after firing: when to poll this peer again (`None`: no timer is
    /// armed; the next event that arms one returns its deadline).
    pub next: Option<Timestamp>,
}

/// The timer state of one peer, updated by data-path events on `&self` from any core and
/// fired by [`PeerTimers::poll`] on the control core.
#[derive(Debug)]
pub struct PeerTimers {
    retransmit_handshake: AtomicU64,
    send_keepalive: AtomicU64,
    new_handshake: AtomicU64,
    zero_key_material: AtomicU64,
    persistent_keepalive: AtomicU64,
    need_another_keepalive: AtomicBool,
    handshake_attempts: AtomicU32,
    sent_lastminute_handshake: AtomicBool,
    /// When we last sent an initiation or a response (0: never).
    last_sent_handshake: AtomicU64,
    /// When the last handshake completed (0: never).
    last_handshake: AtomicU64,
    /// Seconds; 0 = off.
    persistent_keepalive_interval: AtomicU32,
    /// Nanoseconds in `[0, REKEY_TIMEOUT_JITTER_MAX]`, re-drawn by every `poll`.
    jitter: AtomicU64,
}

/// A timestamp as stored in an atomic: never 0, which means "unarmed" / "never".
fn stored(t: Timestamp) -> u64 {
    t.as_nanos().max(1)
}

fn loaded(v: u64) -> Option<Timestamp> {
    (v != 0).then_some(Timestamp::from_nanos(v))
}

/// Kernel `if (!timer_pending(t)) mod_timer(t, d)`: `Some(d)` if this armed it.
fn arm_if_unarmed(timer: &AtomicU64, deadline: Timestamp) -> Option<Timestamp> {
    if timer.load(ORD) != 0 {
        return None; // read-only fast path: no cache-line write per packet
    }
    let d = stored(deadline);
    timer.compare_exchange(0, d, ORD, ORD).ok().map(|_| Timestamp::from_nanos(d))
}

/// Kernel `mod_timer(t, d)`: `Some(d)` if the timer was unarmed or is now earlier.
fn rearm(timer: &AtomicU64, deadline: Timestamp) -> Option<Timestamp> {
    let d = stored(deadline);
    // Already at `d` (a burst each way at the same `now`): what the swap would do, without a write.
    if timer.load(ORD) == d {
        return None;
    }
    let old = timer.swap(d, ORD);
    (old == 0 || d < old).then_some(Timestamp::from_nanos(d))
}

/// Kernel `del_timer(t)`.
fn disarm(timer: &AtomicU64) {
    if timer.load(ORD) != 0 {
        timer.store(0, ORD);
    }
}

/// Fire `timer` if it is due at `now`: disarm it, unless an event moved it meanwhile.
fn take_expired(timer: &AtomicU64, now: Timestamp) -> bool {
    let mut seen = timer.load(ORD);
    for _ in 0..FIRE_RETRIES {
        if seen == 0 || seen > now.as_nanos() {
            return false;
        }
        match timer.compare_exchange(seen, 0, ORD, ORD) {
            Ok(_) => return true,
            Err(actual) => seen = actual,
        }
    }
    false // still due and still moving: `next` reports it and the caller polls again
}

/// Uniform in `[0, REKEY_TIMEOUT_JITTER_MAX]` nanoseconds.
fn draw_jitter<R: RngCore + CryptoRng>(rng: &mut R) -> u64 {
    let span = u128::from(duration_nanos(REKEY_TIMEOUT_JITTER_MAX)) + 1;
    let scaled = (u128::from(rng.next_u64()) * span) >> 64; // < span
    u64::try_from(scaled).unwrap_or(0)
}

impl PeerTimers {
    /// A peer with no timer armed, persistent keepalive off, and a first jitter drawn from `rng`.
    pub fn new<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        PeerTimers {
            retransmit_handshake: AtomicU64::new(0),
            send_keepalive: AtomicU64::new(0),
            new_handshake: AtomicU64::new(0),
            zero_key_material: AtomicU64::new(0),
            persistent_keepalive: AtomicU64::new(0),
            need_another_keepalive: AtomicBool::new(false),
            handshake_attempts: AtomicU32::new(0),
            sent_lastminute_handshake: AtomicBool::new(false),
            last_sent_handshake: AtomicU64::new(0),
            last_handshake: AtomicU64::new(0),
            persistent_keepalive_interval: AtomicU32::new(0),
            jitter: AtomicU64::new(draw_jitter(rng)),
        }
    }

    fn timer(&self, t: Timer) -> &AtomicU64 {
        match t {
            Timer::RetransmitHandshake => &self.retransmit_handshake,
            Timer::SendKeepalive => &self.send_keepalive,
            Timer::NewHandshake => &self.new_handshake,
            Timer::ZeroKeyMaterial => &self.zero_key_material,
            Timer::PersistentKeepalive => &self.persistent_keepalive,
        }
    }

    fn jitter(&self) -> Duration {
        Duration::from_nanos(self.jitter.load(ORD))
    }

    /// The current jitter (what the next jittered event adds), in `[0, REKEY_TIMEOUT_JITTER_MAX]`.
    pub fn current_jitter(&self) -> Duration {
        self.jitter()
    }

    /// Deadline of one timer, `None` if unarmed.
    pub fn deadline(&self, t: Timer) -> Option<Timestamp> {
        loaded(self.timer(t).load(ORD))
    }

    /// Earliest armed deadline: when this peer next needs a [`poll`](Self::poll).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        Timer::ALL.into_iter().filter_map(|t| self.deadline(t)).min()
    }

    /// An authenticated data packet (not a keepalive) was sent (kernel `wg_timers_data_sent`):
    /// expect to hear back within `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` + jitter.
    pub fn data_sent(&self, now: Timestamp) -> Option<Timestamp> {
        // Armed already (the common case): no deadline to compute, no jitter to read.
        if self.new_handshake.load(ORD) != 0 {
            return None;
        }
        arm_if_unarmed(&self.new_handshake, now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self.jitter())
    }

    /// An authenticated data packet (not a keepalive) was received (kernel
    /// `wg_timers_data_received`): answer with a keepalive in `KEEPALIVE_TIMEOUT` unless something is sent first.
    pub fn data_received(&self, now: Timestamp) -> Option<Timestamp> {
        let armed = arm_if_unarmed(&self.send_keepalive, now + KEEPALIVE_TIMEOUT);
        if armed.is_none() && !self.need_another_keepalive.load(ORD) {
            self.need_another_keepalive.store(true, ORD);
        }
        armed
    }

    /// Any authenticated packet (data, keepalive, handshake) was sent: no keepalive is owed.
    pub fn any_authenticated_packet_sent(&self, _now: Timestamp) {
        disarm(&self.send_keepalive);
    }

    /// Any authenticated packet (data, keepalive, handshake) was received: the peer is alive.
    pub fn any_authenticated_packet_received(&self, _now: Timestamp) {
        disarm(&self.new_handshake);
    }

    /// Any authenticated packet is about to be sent or was received: push the persistent
    /// keepalive back by the interval, if it is enabled.
    pub fn any_authenticated_packet_traversal(&self, now: Timestamp) -> Option<Timestamp> {
        match self.persistent_keepalive_interval.load(ORD) {
            0 => None,
            secs => rearm(&self.persistent_keepalive, now + Duration::from_secs(u64::from(secs))),
        }
    }

    /// A handshake initiation was sent: retransmit it after `REKEY_TIMEOUT` + jitter, counted
    /// from the later of `now` and the last recorded send, so the retry is never rate-limited.
    pub fn handshake_initiated(&self, now: Timestamp) -> Option<Timestamp> {
        let base = now.max(Timestamp::from_nanos(self.last_sent_handshake.load(ORD)));
        rearm(&self.retransmit_handshake, base + REKEY_TIMEOUT + self.jitter())
    }

    /// A handshake response was received and processed, or the first data packet confirmed
    /// our responder keypair: stop retransmitting, reset the attempts and the last-minute flag,
    /// record the handshake time.
    pub fn handshake_complete(&self, now: Timestamp) {
        disarm(&self.retransmit_handshake);
        self.handshake_attempts.store(0, ORD);
        self.sent_lastminute_handshake.store(false, ORD);
        self.last_handshake.store(stored(now), ORD);
    }

    /// Session keys were derived (before sending a response, or on receiving one): wipe them
    /// `ZERO_KEY_MATERIAL_AFTER` from now unless a newer session pushes this back.
    pub fn session_derived(&self, now: Timestamp) -> Option<Timestamp> {
        rearm(&self.zero_key_material, now + ZERO_KEY_MATERIAL_AFTER)
    }

    /// Set the persistent keepalive interval in seconds (0 turns it off and disarms the timer).
    /// When it becomes enabled the caller sends a keepalive at once, as `wg` does; this arms
    /// the timer at now + interval.
    pub fn set_persistent_keepalive(&self, interval_secs: u16, now: Timestamp) -> Option<Timestamp> {
        self.persistent_keepalive_interval.store(u32::from(interval_secs), ORD);
        if interval_secs == 0 {
            disarm(&self.persistent_keepalive);
            None
        } else {
            rearm(&self.persistent_keepalive, now + Duration::from_secs(u64::from(interval_secs)))
        }
    }

    /// Persistent keepalive interval in seconds (0 = off).
    pub fn persistent_keepalive_interval(&self) -> u16 {
        u16::try_from(self.persistent_keepalive_interval.load(ORD)).unwrap_or(u16::MAX)
    }

    /// Whether our own rate limit allows an initiation now: none sent (nor a response) within
    /// the last `REKEY_TIMEOUT`.
    pub fn may_send_initiation(&self, now: Timestamp) -> bool {
        self.rate_limit_expired(self.last_sent_handshake.load(ORD), now)
    }

    fn rate_limit_expired(&self, last: u64, now: Timestamp) -> bool {
        last == 0 || Timestamp::from_nanos(last).has_expired(REKEY_TIMEOUT, now)
    }

    /// Record that an initiation is being sent now (kernel `last_sent_handshake`).
    pub fn initiation_sent(&self, now: Timestamp) {
        self.last_sent_handshake.store(stored(now), ORD);
    }

    /// [`may_send_initiation`](Self::may_send_initiation) and
    /// [`initiation_sent`](Self::initiation_sent) in one `compare_exchange`: `true` for exactly
    /// one of several cores asking at once, which then sends the initiation.
    pub fn claim_initiation(&self, now: Timestamp) -> bool {
        let last = self.last_sent_handshake.load(ORD);
        self.rate_limit_expired(last, now)
            && self.last_sent_handshake.compare_exchange(last, stored(now), ORD, ORD).is_ok()
    }

    /// A handshake response is being sent now; the kernel rate-limits our initiations on it too.
    pub fn response_sent(&self, now: Timestamp) {
        self.last_sent_handshake.store(stored(now), ORD);
    }

    /// An initiation that is not a retransmit is being queued: restart the attempt count
    /// (kernel `wg_packet_send_queued_handshake_initiation(peer, false)`).
    pub fn reset_attempts(&self) {
        self.handshake_attempts.store(0, ORD);
    }

    /// Receive-side rekey (`receive.c` `keep_key_fresh`): `true` once per handshake, for the
    /// core that gets to send the last-minute initiation.
    ///
    /// Called for every message opened with an old enough keypair, so a plain load comes first:
    /// once the flag is set (by the first of them), the others only read it. A failed
    /// `compare_exchange` would still take the line for writing on every call, bouncing it
    /// between the cores that receive for the peer.
    pub fn claim_lastminute_handshake(&self) -> bool {
        !self.sent_lastminute_handshake.load(ORD)
            && self.sent_lastminute_handshake.compare_exchange(false, true, ORD, ORD).is_ok()
    }

    /// Whether the last-minute handshake of the current session was claimed (a plain load:
    /// the receive path reads it before looking at the peer's current keypair).
    pub(crate) fn lastminute_claimed(&self) -> bool {
        self.sent_lastminute_handshake.load(ORD)
    }

    /// Retransmits of the current handshake so far.
    pub fn handshake_attempts(&self) -> u32 {
        self.handshake_attempts.load(ORD)
    }

    /// When the last handshake completed, on the caller's monotonic clock (`None`: never).
    pub fn last_handshake(&self) -> Option<Timestamp> {
        loaded(self.last_handshake.load(ORD))
    }

    /// Disarm every timer (peer removed or device down; kernel `wg_timers_stop`).
    pub fn disarm_all(&self) {
        disarm(&self.retransmit_handshake);
        disarm(&self.send_keepalive);
        disarm(&self.new_handshake);
        disarm(&self.zero_key_material);
        disarm(&self.persistent_keepalive);
    }

    /// Fire every timer due at `now` with the kernel's handler semantics, re-draw the jitter,
    /// and return what to do plus when to poll again.
    pub fn poll<R: RngCore + CryptoRng>(&self, now: Timestamp, rng: &mut R) -> TimerPoll {
        self.jitter.store(draw_jitter(rng), ORD);
        let mut give_up = false;
        let mut keepalive = false;
        let mut zero = false;
        let mut initiation = None;

        // wg_expired_retransmit_handshake
        if take_expired(&self.retransmit_handshake, now) {
            if self.handshake_attempts.load(ORD) > MAX_TIMER_HANDSHAKES {
                give_up = true;
                disarm(&self.send_keepalive);
                arm_if_unarmed(&self.zero_key_material, now + ZERO_KEY_MATERIAL_AFTER);
            } else {
                let attempts = self.handshake_attempts.fetch_add(1, ORD).saturating_add(1);
                initiation = Some(TimerAction::SendInitiation { retry: true, attempts });
            }
        }
        // wg_expired_send_keepalive
        if take_expired(&self.send_keepalive, now) {
            keepalive = true;
            if self.need_another_keepalive.swap(false, ORD) {
                rearm(&self.send_keepalive, now + KEEPALIVE_TIMEOUT);
            }
        }
        // wg_expired_new_handshake: a non-retry initiation resets the attempts. If the
        // retransmit fired too, this one initiation replaces it (the kernel would send one and
        // rate-limit the other, with the attempts reset either way round).
        if take_expired(&self.new_handshake, now) {
            self.handshake_attempts.store(0, ORD);
            initiation = Some(TimerAction::SendInitiation { retry: false, attempts: 0 });
        }
        // wg_expired_zero_key_material
        if take_expired(&self.zero_key_material, now) {
            zero = true;
        }
        // wg_expired_send_persistent_keepalive
        if take_expired(&self.persistent_keepalive, now) && self.persistent_keepalive_interval.load(ORD) > 0 {
            keepalive = true;
        }

        let mut actions = TimerActions::new();
        if give_up {
            actions.push(TimerAction::GiveUp);
        }
        if keepalive {
            actions.push(TimerAction::SendKeepalive);
        }
        if zero {
            actions.push(TimerAction::ZeroKeyMaterial);
        }
        if let Some(a) = initiation {
            actions.push(a);
        }
        TimerPoll { actions, next: self.next_deadline() }
    }
}

#[cfg(test)]
mod tests;
