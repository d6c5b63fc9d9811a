//! One keypair: the two transport keys a handshake produced, the send counter and the replay
//! window, with in-place seal and open of type-4 data messages.
//!
//! Follows the kernel's `struct noise_keypair` (drivers/net/wireguard/noise.h) and its users
//! `encrypt_packet` (send.c), `decrypt_packet` / `counter_validate` (receive.c) and
//! `keep_key_fresh` (send.c, receive.c). Rules:
//! - a keypair seals and opens nothing once `birth + REJECT_AFTER_TIME` has passed;
//! - the send counter is the nonce; it is taken with an atomic increment that refuses to pass
//!   [`REJECT_AFTER_MESSAGES`], so a nonce is never used twice even under concurrent sealing;
//! - the receive path marks the replay window after decrypting, and refuses everything once the
//!   window has reached `REJECT_AFTER_MESSAGES` ([`Keypair::open`] also pre-checks the window
//!   before decrypting; the device's burst path does not, as the kernel's does not);
//! - rekey is wanted on send after `REKEY_AFTER_MESSAGES` messages, or (initiator only) after
//!   `REKEY_AFTER_TIME`; on receive (initiator only) after `REKEY_AFTER_TIME_RECV`.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::crypto::{AeadError, AeadKey, Secret};
use crate::messages::{
    message_data_len, DATA_MIN_LEN, DATA_OVERHEAD, PADDING_MULTIPLE, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME, REKEY_AFTER_TIME_RECV, TAG_LEN,
};
use crate::noise::SessionKeys;
use crate::time::Timestamp;
use crate::wire::wireguard::{field, TransportData};

use super::replay::ReplayWindow;

/// Why [`Keypair::seal`] refused to seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The send counter reached `REJECT_AFTER_MESSAGES`; a new handshake is needed.
    #[error("sending counter exhausted (REJECT_AFTER_MESSAGES)")]
    CounterExhausted,
    /// The keypair is older than `REJECT_AFTER_TIME`, or was expired explicitly.
    #[error("keypair expired")]
    Expired,
    /// The buffer cannot hold the header, the padded plaintext and the tag.
    #[error("buffer too small for the sealed message")]
    BufferTooSmall,
}

/// Why [`Keypair::open`] dropped a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than a header and a tag (32 bytes).
    #[error("data message shorter than header and tag")]
    TooShort,
    /// The keypair is older than `REJECT_AFTER_TIME`.
    #[error("keypair expired")]
    Expired,
    /// The counter was already accepted, or is too far behind the replay window.
    #[error("replayed or too old counter")]
    Replay,
    /// The counter, or the keypair's receive window, reached `REJECT_AFTER_MESSAGES`.
    #[error("counter at the REJECT_AFTER_MESSAGES limit")]
    CounterLimit,
    /// The authentication tag did not verify.
    #[error("authentication failed")]
    Auth,
}

/// Length of the plaintext once padded: up to a multiple of [`PADDING_MULTIPLE`], but never
/// beyond `mtu` (kernel `calculate_skb_padding`). A plaintext already longer than `mtu` is not
/// padded (the kernel's modulo case serves GSO super-packets, which this datapath never builds);
/// `mtu == 0` means "unknown" and pads to the multiple, as the kernel does.
pub fn padded_len(plain_len: usize, mtu: usize) -> usize {
    let rounded = plain_len.checked_next_multiple_of(PADDING_MULTIPLE).unwrap_or(plain_len);
    if mtu == 0 {
        rounded
    } else {
        rounded.min(plain_len.max(mtu))
    }
}

/// Everything sealing touches, on one cache line: the send counter (written by sealing cores),
/// the sealing key and what the header and the checks read. Opening cores read none of it on
/// the common path.
#[repr(C, align(64))]
struct Sending {
    /// Next nonce to use; also the number of messages sealed.
    counter: AtomicU64,
    birth: Timestamp,
    /// The [`crate::noise::Identity::generation`] of the private key the handshake used (0
    /// when made with [`Keypair::new`]).
    generation: u64,
    key: Secret,
    remote_index: u32,
    initiator: bool,
    /// Cleared by [`Keypair::expire_sending`] (kernel `sending.is_valid`).
    valid: AtomicBool,
}

/// Everything opening touches, on cache lines of their own: the opening key, copies of the two
/// fields the receive checks read, and the replay window (written by opening cores). In this
/// order, so that the key, the flags, the window's lock and its counter (48 bytes, then the
/// standard library's 8-byte mutex header, then the window's counter) share the first line:
/// a message of a peer whose keypair is not in cache misses on that line and on its counter's
/// word of the window's bitmap, nothing else (`tests::receive_fields_share_a_line`). The price:
/// two cores opening for one keypair (one peer spread over two queues, which RSS does not do)
/// write the line the other reads the key from, once per burst each.
#[repr(C, align(64))]
struct Receiving {
    key: Secret,
    birth: Timestamp,
    local_index: u32,
    initiator: bool,
    /// Set once the keypair has left its peer's slots (see [`Keypair::retire`]): a worker's
    /// lookup of its index (cached, or in the table before the index is removed) is then stale.
    retired: AtomicBool,
    /// Set once the keypair is known to need no key confirmation: made by the initiator, or
    /// made current by its first message (see [`Keypair::confirm`]). Lets the receive path skip
    /// looking at the peer's pending keypair for every other message.
    confirmed: AtomicBool,
    window: Mutex<ReplayWindow>,
}

/// The transport state of one completed handshake (kernel `struct noise_keypair`).
///
/// Shared between worker threads behind an `Arc`: [`seal`](Self::seal) and
/// [`open`](Self::open) take `&self`.
///
/// The two keys are kept as their 32 raw bytes ([`Secret`], wiped on drop), not as ring's
/// prepared key type, which takes 544 bytes (it is sized for AES-GCM) and is not wiped on drop.
/// [`seal`](Self::seal) and [`open`](Self::open) (one message, ring's AEAD, for tests and
/// references) prepare ring's key for each message; the device's data path seals and opens
/// bursts with the multi-lane `wgpmd_aead` straight from the raw bytes
/// (`crate::device::burst`), so no prepared copy of a key exists there. Layout: one 64-byte line for sealing
/// and 17 for opening (the first with the key, the flags, the window's lock and counter, then
/// the window's 1 KiB bitmap), 1152 bytes
/// (`docs/PERFORMANCE.md`).
#[repr(C)]
pub struct Keypair {
    send: Sending,
    recv: Receiving,
}

/// Cache hint for taking a reference to `kp` (cloning or dropping an `Arc<Keypair>` writes its
/// reference count, which sits on its own line just before the keypair, the keypair being
/// 64-byte aligned): starts loading that line for writing. A hint computed from the standard
/// library's `Arc` layout, never dereferenced.
#[inline]
pub(crate) fn prefetch_refcount(kp: &std::sync::Arc<Keypair>) {
    let header = core::mem::align_of::<Keypair>().max(2 * core::mem::size_of::<usize>());
    wgpmd_aead::prefetch::write_ptr(std::sync::Arc::as_ptr(kp).cast::<u8>().wrapping_sub(header));
}

impl core::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keypair")
            .field("local_index", &self.local_index())
            .field("remote_index", &self.remote_index())
            .field("initiator", &self.initiator())
            .field("birth", &self.birth())
            .field("sending_counter", &self.sending_counter())
            .finish_non_exhaustive()
    }
}

impl Keypair {
    /// A keypair from the handshake's derived transport keys (the caller's `Secret`s may be
    /// dropped, and so wiped, afterwards).
    pub fn new(
        send: &Secret,
        recv: &Secret,
        local_index: u32,
        remote_index: u32,
        initiator: bool,
        birth: Timestamp,
    ) -> Self {
        Keypair {
            send: Sending {
                counter: AtomicU64::new(0),
                birth,
                generation: 0,
                key: send.clone(),
                remote_index,
                initiator,
                valid: AtomicBool::new(true),
            },
            recv: Receiving {
                window: Mutex::new(ReplayWindow::new()),
                key: recv.clone(),
                birth,
                local_index,
                initiator,
                retired: AtomicBool::new(false),
                confirmed: AtomicBool::new(initiator),
            },
        }
    }

    /// The keypair of a completed handshake, born at `birth`, remembering the identity
    /// generation it was made under.
    pub fn from_session(keys: &SessionKeys, birth: Timestamp) -> Self {
        let mut kp = Self::new(&keys.send, &keys.recv, keys.local_index, keys.remote_index, keys.initiator, birth);
        kp.send.generation = keys.generation;
        kp
    }

    /// This keypair, stamped with identity generation `generation` (a session installed without
    /// a handshake must carry the device's current one to seal).
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn with_generation(mut self, generation: u64) -> Self {
        self.send.generation = generation;
        self
    }

    /// The identity generation the handshake was made under (0 for [`Keypair::new`]).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.send.generation
    }
    /// Our index for this keypair: peers put it in the receiver field of what they send us.
    #[inline]
    pub fn local_index(&self) -> u32 {
        self.recv.local_index
    }
    /// The peer's index: we put it in the receiver field of what we send.
    #[inline]
    pub fn remote_index(&self) -> u32 {
        self.send.remote_index
    }
    /// Whether we initiated the handshake (only the initiator rekeys on age).
    #[inline]
    pub fn initiator(&self) -> bool {
        self.send.initiator
    }
    /// When the handshake completed.
    #[inline]
    pub fn birth(&self) -> Timestamp {
        self.send.birth
    }

    /// Seal one transport data message in place.
    ///
    /// `buf[..16]` is room for the data header and `buf[16..16 + plain_len]` holds the
    /// plaintext. The plaintext is zero-padded (see [`padded_len`]), the header written (type 4,
    /// receiver index, counter), the whole sealed with the next counter as nonce and the tag
    /// appended. Returns the message length, `32 + padded_len(plain_len, mtu)`.
    ///
    /// Every error is detected before `buf` is touched, so the plaintext stays where it was.
    pub fn seal(&self, now: Timestamp, buf: &mut [u8], plain_len: usize, mtu: usize) -> Result<usize, SealError> {
        self.seal_with(now, buf, plain_len, mtu, |key, counter, text| {
            AeadKey::new(&key.0).seal_in_place(counter, &[], text)
        })
    }

    #[inline]
    fn seal_with(
        &self,
        now: Timestamp,
        buf: &mut [u8],
        plain_len: usize,
        mtu: usize,
        aead: impl FnOnce(&Secret, u64, &mut [u8]) -> [u8; TAG_LEN],
    ) -> Result<usize, SealError> {
        let padded = padded_len(plain_len, mtu);
        let total = padded.checked_add(DATA_OVERHEAD).ok_or(SealError::BufferTooSmall)?;
        let msg = buf.get_mut(..total).ok_or(SealError::BufferTooSmall)?;
        if !self.send.valid.load(Ordering::Relaxed) || self.send.birth.has_expired(REJECT_AFTER_TIME, now) {
            return Err(SealError::Expired);
        }
        let counter = self.take_counter().ok_or(SealError::CounterExhausted)?;

        // The header's view gets exactly the header's bytes: with its length known, the setters
        // compile to plain stores (over the whole message the compiler keeps their range checks).
        let (header, payload) = msg.split_at_mut(field::data::PAYLOAD.start);
        let mut header = TransportData::new_unchecked(header);
        header.init_header();
        header.set_receiver_index(self.send.remote_index);
        header.set_counter(counter);
        let (text, tag) = payload.split_at_mut(padded);
        text[plain_len..].fill(0);
        tag.copy_from_slice(&aead(&self.send.key, counter, text));
        debug_assert_eq!(total, message_data_len(padded));
        Ok(total)
    }

    /// Open one transport data message in place.
    ///
    /// `msg` is the whole type-4 message; the caller has checked its type and found this keypair
    /// by its receiver index. Returns the range of `msg` holding the plaintext, still padded (the
    /// caller trims it by the inner IP length). The replay window is checked before decrypting and
    /// marked after; on [`OpenError::Auth`] it is left untouched and `msg` is unspecified.
    pub fn open(&self, now: Timestamp, msg: &mut [u8]) -> Result<Range<usize>, OpenError> {
        self.open_with(now, msg, |key, counter, sealed| AeadKey::new(&key.0).open_in_place(counter, &[], sealed))
    }

    #[inline]
    fn open_with(
        &self,
        now: Timestamp,
        msg: &mut [u8],
        aead: impl FnOnce(&Secret, u64, &mut [u8]) -> Result<usize, AeadError>,
    ) -> Result<Range<usize>, OpenError> {
        let len = msg.len();
        if len < DATA_MIN_LEN {
            return Err(OpenError::TooShort);
        }
        if self.recv.birth.has_expired(REJECT_AFTER_TIME, now) {
            return Err(OpenError::Expired);
        }
        let mut msg = TransportData::new_unchecked(msg);
        let counter = msg.counter();
        {
            let window = self.window();
            if counter >= REJECT_AFTER_MESSAGES || window.counter() >= REJECT_AFTER_MESSAGES {
                return Err(OpenError::CounterLimit);
            }
            if !window.check(counter) {
                return Err(OpenError::Replay);
            }
        }
        aead(&self.recv.key, counter, msg.payload_mut()).map_err(|_| OpenError::Auth)?;
        // Another core may have accepted the same counter while we decrypted.
        if !self.window().validate(counter) {
            return Err(OpenError::Replay);
        }
        Ok(field::data::PAYLOAD.start..len - TAG_LEN)
    }

    /// The raw sealing key (for the device's burst AEAD).
    #[inline]
    pub(crate) fn send_key(&self) -> &[u8; 32] {
        &self.send.key.0
    }

    /// The raw opening key (for the device's burst AEAD).
    #[inline]
    pub(crate) fn recv_key(&self) -> &[u8; 32] {
        &self.recv.key.0
    }

    /// Whether the keypair may seal at `now`: not expired explicitly nor by age (the checks of
    /// [`seal`](Self::seal) before it takes a counter).
    #[inline]
    pub(crate) fn send_usable(&self, now: Timestamp) -> bool {
        self.send.valid.load(Ordering::Relaxed) && !self.send.birth.has_expired(REJECT_AFTER_TIME, now)
    }

    /// Whether the receive half is past `REJECT_AFTER_TIME` (what [`open`](Self::open) checks
    /// before the replay window).
    #[inline]
    pub(crate) fn recv_expired(&self, now: Timestamp) -> bool {
        self.recv.birth.has_expired(REJECT_AFTER_TIME, now)
    }

    /// Reserve up to `n` consecutive send counters with one atomic operation: `(first, count)`,
    /// `count < n` only when `REJECT_AFTER_MESSAGES` is reached (never passed), `count == 0` once
    /// it has been.
    pub(crate) fn reserve_counters(&self, n: u64) -> (u64, u64) {
        match self.send.counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            (c < REJECT_AFTER_MESSAGES && n > 0).then(|| c + n.min(REJECT_AFTER_MESSAGES - c))
        }) {
            Ok(c) => (c, n.min(REJECT_AFTER_MESSAGES - c)),
            Err(c) => (c, 0),
        }
    }

    /// Cache hints for a burst that will open a message with `counter` under this keypair
    /// (`crate::device::burst`): starts loading the lines the receive path touches, the first
    /// (key, birth time, flags, the window's lock and counter) and the window word `counter`
    /// falls in, so that a burst's misses overlap instead of queueing. Changes nothing.
    #[inline]
    pub(crate) fn prefetch_recv(&self, counter: u64) {
        use wgpmd_aead::prefetch;
        // The first line: key, flags, the window's lock and counter.
        prefetch::write(&self.recv);
        // Where the word of `counter` lies inside the locked window (a hint: the mutex's
        // layout is the standard library's, so this is an estimate, never dereferenced).
        let word = (counter / u64::BITS as u64) as usize % (crate::messages::COUNTER_BITS_TOTAL as usize / 64);
        prefetch::write_ptr(core::ptr::from_ref(&self.recv.window).cast::<u8>().wrapping_add(16 + 8 * word));
    }

    /// Cache hints for a burst that will seal with this keypair: the sending line (counter, key,
    /// limits), for writing.
    #[inline]
    pub(crate) fn prefetch_send(&self) {
        wgpmd_aead::prefetch::write(&self.send);
    }

    /// The replay window, locked (the device's burst path takes it once per keypair per burst,
    /// to mark after decrypting).
    #[inline]
    pub(crate) fn lock_window(&self) -> MutexGuard<'_, ReplayWindow> {
        self.window()
    }

    /// Mark the keypair as gone from its peer's slots and so, once its index is removed, from the
    /// device's index table: a worker's lookup of its index (cached, or in the table before the
    /// removal) is no longer used. Never undone.
    pub(crate) fn retire(&self) {
        self.recv.retired.store(true, Ordering::Release);
    }

    /// Whether `retire` was called.
    #[inline]
    pub fn is_retired(&self) -> bool {
        self.recv.retired.load(Ordering::Acquire)
    }

    /// Note that this keypair needs no key confirmation any more (the responder's keypair was
    /// made current by [`Keypairs::received_with`](super::Keypairs::received_with)).
    pub(crate) fn confirm(&self) {
        self.recv.confirmed.store(true, Ordering::Release);
    }

    /// Whether this keypair needs no key confirmation: made by the initiator, or confirmed. A
    /// `false` says nothing (the keypair may be pending, or replaced before its confirmation).
    #[inline]
    pub(crate) fn is_confirmed(&self) -> bool {
        self.recv.confirmed.load(Ordering::Acquire)
    }

    /// The next counter [`seal`](Self::seal) will use (the number of messages sealed so far).
    pub fn sending_counter(&self) -> u64 {
        self.send.counter.load(Ordering::Relaxed)
    }

    /// Whether sending on this keypair should start a new handshake (kernel `keep_key_fresh` on
    /// send): more than `REKEY_AFTER_MESSAGES` sealed, or we are the initiator and the keypair is
    /// `REKEY_AFTER_TIME` old.
    pub fn needs_rekey_on_send(&self, now: Timestamp) -> bool {
        self.send.valid.load(Ordering::Relaxed)
            && (self.sending_counter() > REKEY_AFTER_MESSAGES
                || (self.send.initiator && self.send.birth.has_expired(REKEY_AFTER_TIME, now)))
    }

    /// Whether receiving on this keypair should start one last handshake (kernel `keep_key_fresh`
    /// on receive): we are the initiator and the keypair is `REKEY_AFTER_TIME_RECV` old.
    pub fn needs_rekey_on_recv(&self, now: Timestamp) -> bool {
        // The receive half's copies first: the sending line is read only in the rare case.
        self.recv.initiator
            && self.recv.birth.has_expired(REKEY_AFTER_TIME_RECV, now)
            && self.send.valid.load(Ordering::Relaxed)
    }

    /// Whether the keypair is `REKEY_AFTER_TIME_RECV` old (whoever made it): the receive path's
    /// cheap first test before it asks the peer's current keypair
    /// ([`Self::needs_rekey_on_recv`]), which is never older than a keypair a message arrives on.
    pub fn past_rekey_on_recv(&self, now: Timestamp) -> bool {
        self.recv.birth.has_expired(REKEY_AFTER_TIME_RECV, now)
    }

    /// Whether the keypair is `REJECT_AFTER_TIME` old and so unusable in both directions.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.send.birth.has_expired(REJECT_AFTER_TIME, now)
    }

    /// Stop sealing with this keypair (kernel: `sending.is_valid = false`, as done by
    /// `wg_noise_expire_current_peer_keypairs`); opening is unaffected.
    pub fn expire_sending(&self) {
        self.send.valid.store(false, Ordering::Relaxed);
    }

    /// Whether [`expire_sending`](Self::expire_sending) has been called.
    pub fn sending_expired(&self) -> bool {
        !self.send.valid.load(Ordering::Relaxed)
    }

    /// Set the send counter, so tests can reach the message limits without 2^60 packets.
    #[doc(hidden)]
    pub fn set_sending_counter_for_test(&self, v: u64) {
        self.send.counter.store(v, Ordering::Relaxed);
    }

    /// Take the next nonce, or `None` once `REJECT_AFTER_MESSAGES` is reached. A compare-and-swap
    /// loop rather than `fetch_add`, so the counter stops at the limit instead of creeping on
    /// (and eventually wrapping to reused nonces) with every refused call.
    fn take_counter(&self) -> Option<u64> {
        self.send
            .counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c < REJECT_AFTER_MESSAGES).then(|| c + 1))
            .ok()
    }

    /// The replay window. Nothing that runs under this lock can panic, so it is never poisoned;
    /// were it, the window would still be consistent, so the guard is taken either way.
    fn window(&self) -> MutexGuard<'_, ReplayWindow> {
        self.recv.window.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{COUNTER_WINDOW_SIZE, DATA_HEADER_LEN};
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use std::collections::HashSet;

    const MTU: usize = 1420;
    const BIRTH: Timestamp = Timestamp::from_secs(1000);
    const K1: [u8; 32] = [0x11; 32];
    const K2: [u8; 32] = [0x22; 32];

    /// The two ends of one session: `(initiator, responder)`.
    fn pair() -> (Keypair, Keypair) {
        let (k1, k2) = (Secret(K1), Secret(K2));
        let a = Keypair::new(&k1, &k2, 0x0a0a_0a0a, 0x1234_5678, true, BIRTH);
        let b = Keypair::new(&k2, &k1, 0x1234_5678, 0x0a0a_0a0a, false, BIRTH);
        (a, b)
    }

    /// The receive path's first line holds the key, the flags, the window's lock and the
    /// window's counter (the lock's layout is the standard library's: this checks it).
    #[test]
    fn receive_fields_share_a_line() {
        let (a, _) = pair();
        let start = core::ptr::from_ref(&a.recv) as usize;
        assert_eq!(start % 64, 0);
        let w = a.lock_window();
        let window = core::ptr::from_ref(&*w) as usize;
        // The window's counter is its first field (repr(C)), 8 bytes.
        assert!(window + 8 <= start + 64, "window data at offset {}", window - start);
        for field in [
            core::ptr::from_ref(&a.recv.key) as usize,
            core::ptr::from_ref(&a.recv.retired) as usize,
            core::ptr::from_ref(&a.recv.confirmed) as usize,
            core::ptr::from_ref(&a.recv.window) as usize,
        ] {
            assert!((start..start + 64).contains(&field));
        }
    }

    /// A buffer pre-filled with 0xa5, with `payload` at the plaintext offset.
    fn buffer(payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0xa5u8; DATA_HEADER_LEN + payload.len() + PADDING_MULTIPLE + TAG_LEN];
        buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
        buf
    }

    fn sealed(kp: &Keypair, payload: &[u8]) -> Vec<u8> {
        let mut buf = buffer(payload);
        let n = kp.seal(BIRTH, &mut buf, payload.len(), MTU).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn padding_follows_the_kernel() {
        for (plain, mtu, want) in [
            (0, MTU, 0),
            (1, MTU, 16),
            (16, MTU, 16),
            (17, MTU, 32),
            (1410, MTU, 1420), // would round to 1424: clamped to the MTU
            (1419, MTU, 1420),
            (1420, MTU, 1420),
            (1500, MTU, 1500), // already beyond the MTU: no padding
            (17, 0, 32),       // unknown MTU: plain rounding
            (usize::MAX, MTU, usize::MAX),
        ] {
            assert_eq!(padded_len(plain, mtu), want, "plain {plain} mtu {mtu}");
        }
    }

    /// Seal matches an independent construction with the RustCrypto AEAD, byte for byte, and
    /// open gives back the padded plaintext.
    #[test]
    fn seal_writes_the_wire_format_and_open_reverses_it() {
        let (a, b) = pair();
        let reference = chacha20poly1305::ChaCha20Poly1305::new((&K1).into());
        for (counter, len) in [0usize, 1, 15, 16, 17, 100, 1410, 1419, 1420].into_iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let mut buf = buffer(&payload);
            let n = a.seal(BIRTH, &mut buf, len, MTU).unwrap();
            let padded = padded_len(len, MTU);
            assert_eq!(n, 32 + padded);
            assert_eq!(&buf[..4], &[4, 0, 0, 0]);
            assert_eq!(&buf[4..8], &[0x78, 0x56, 0x34, 0x12]);
            assert_eq!(&buf[8..16], &(counter as u64).to_le_bytes());
            assert_eq!(buf[n], 0xa5, "wrote past the message");

            let mut want = payload.clone();
            want.resize(padded, 0);
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&(counter as u64).to_le_bytes());
            let tag = reference.encrypt_in_place_detached((&nonce).into(), &[], &mut want).unwrap();
            assert_eq!(&buf[16..16 + padded], &want[..]);
            assert_eq!(&buf[16 + padded..n], tag.as_slice());

            let msg = &mut buf[..n];
            let range = b.open(BIRTH, msg).unwrap();
            assert_eq!(range, 16..n - 16);
            assert_eq!(&msg[range.clone()][..len], &payload[..]);
            assert!(msg[range][len..].iter().all(|&x| x == 0), "padding is zeros");
        }
        assert_eq!(a.sending_counter(), 9);
    }

    #[test]
    fn keepalive_is_32_bytes() {
        let (a, b) = pair();
        let mut m = sealed(&a, &[]);
        assert_eq!(m.len(), 32);
        assert_eq!(b.open(BIRTH, &mut m), Ok(16..16));
    }

    #[test]
    fn seal_errors_leave_the_buffer_and_counter_alone() {
        let (a, _) = pair();
        let payload = [0x5au8; 100];
        // Room for 100 bytes padded to 112, minus one byte.
        let mut short = buffer(&payload);
        short.truncate(16 + 112 + 16 - 1);
        let before = short.clone();
        assert_eq!(a.seal(BIRTH, &mut short, 100, MTU), Err(SealError::BufferTooSmall));
        assert_eq!(a.seal(BIRTH, &mut short, usize::MAX, MTU), Err(SealError::BufferTooSmall));
        assert_eq!(a.seal(BIRTH, &mut short, usize::MAX - 8, 0), Err(SealError::BufferTooSmall));
        assert_eq!(short, before);

        let mut buf = buffer(&payload);
        let before = buf.clone();
        let expiry = BIRTH + REJECT_AFTER_TIME;
        assert_eq!(a.seal(expiry, &mut buf, 100, MTU), Err(SealError::Expired));
        assert_eq!(buf, before);
        assert_eq!(a.sending_counter(), 0);
        assert!(a.seal(Timestamp::from_nanos(expiry.as_nanos() - 1), &mut buf, 100, MTU).is_ok());

        let mut buf = before.clone();
        a.expire_sending();
        assert!(a.sending_expired());
        assert_eq!(a.seal(BIRTH, &mut buf, 100, MTU), Err(SealError::Expired));
        assert_eq!(buf, before);
        assert_eq!(a.sending_counter(), 1);
    }

    #[test]
    fn reserved_counters_stop_at_reject_after_messages() {
        let (a, _b) = pair();
        assert_eq!(a.reserve_counters(4), (0, 4));
        assert_eq!(a.reserve_counters(0), (4, 0), "nothing asked, nothing taken");
        assert_eq!(a.sending_counter(), 4);
        a.set_sending_counter_for_test(REJECT_AFTER_MESSAGES - 3);
        assert_eq!(a.reserve_counters(5), (REJECT_AFTER_MESSAGES - 3, 3), "only what is left");
        assert_eq!(a.sending_counter(), REJECT_AFTER_MESSAGES);
        for n in [1, 5, u64::MAX] {
            assert_eq!(a.reserve_counters(n).1, 0);
        }
        assert_eq!(a.sending_counter(), REJECT_AFTER_MESSAGES, "refusals never move it towards a wrap");
        // Huge requests below the limit are clamped, never wrapped.
        a.set_sending_counter_for_test(10);
        assert_eq!(a.reserve_counters(u64::MAX), (10, REJECT_AFTER_MESSAGES - 10));
        assert_eq!(a.take_counter(), None);
    }

    #[test]
    fn send_counter_stops_at_reject_after_messages() {
        let (a, b) = pair();
        a.set_sending_counter_for_test(REJECT_AFTER_MESSAGES - 2);
        let m1 = sealed(&a, b"x");
        let m2 = sealed(&a, b"y");
        assert_eq!(m1[8..16], (REJECT_AFTER_MESSAGES - 2).to_le_bytes());
        assert_eq!(m2[8..16], (REJECT_AFTER_MESSAGES - 1).to_le_bytes());
        let payload = [1u8; 10];
        for _ in 0..10_000 {
            let mut buf = buffer(&payload);
            let before = buf.clone();
            assert_eq!(a.seal(BIRTH, &mut buf, 10, MTU), Err(SealError::CounterExhausted));
            assert_eq!(buf, before);
        }
        // Refusals did not move the counter towards a wrap.
        assert_eq!(a.sending_counter(), REJECT_AFTER_MESSAGES);

        // The receiver accepts the last two counters; then its window is at the limit and it
        // refuses everything, even a counter the bitmap alone would still take.
        let mut older = {
            a.set_sending_counter_for_test(REJECT_AFTER_MESSAGES - 3);
            sealed(&a, b"z")
        };
        let (mut m1, mut m2) = (m1, m2);
        assert!(b.open(BIRTH, &mut m2).is_ok());
        assert_eq!(b.open(BIRTH, &mut m1), Err(OpenError::CounterLimit));
        assert_eq!(b.open(BIRTH, &mut older), Err(OpenError::CounterLimit));
    }

    #[test]
    fn counters_at_the_limit_are_refused_before_decrypting() {
        let (a, b) = pair();
        let mut m = sealed(&a, b"hello");
        m[8..16].copy_from_slice(&REJECT_AFTER_MESSAGES.to_le_bytes());
        assert_eq!(b.open(BIRTH, &mut m), Err(OpenError::CounterLimit));
        m[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(b.open(BIRTH, &mut m), Err(OpenError::CounterLimit));
    }

    #[test]
    fn rekey_thresholds() {
        let (a, b) = pair();
        let at = |d: core::time::Duration| BIRTH + d;
        let just_before = |d: core::time::Duration| Timestamp::from_nanos(at(d).as_nanos() - 1);

        assert!(!a.needs_rekey_on_send(BIRTH));
        a.set_sending_counter_for_test(REKEY_AFTER_MESSAGES);
        assert!(!a.needs_rekey_on_send(BIRTH), "kernel uses strictly greater");
        a.set_sending_counter_for_test(REKEY_AFTER_MESSAGES + 1);
        assert!(a.needs_rekey_on_send(BIRTH));
        b.set_sending_counter_for_test(REKEY_AFTER_MESSAGES + 1);
        assert!(b.needs_rekey_on_send(BIRTH), "message limit applies to the responder too");
        a.set_sending_counter_for_test(0);
        b.set_sending_counter_for_test(0);

        assert!(!a.needs_rekey_on_send(just_before(REKEY_AFTER_TIME)));
        assert!(a.needs_rekey_on_send(at(REKEY_AFTER_TIME)));
        assert!(!b.needs_rekey_on_send(at(REKEY_AFTER_TIME)), "only the initiator rekeys on age");

        assert!(!a.needs_rekey_on_recv(just_before(REKEY_AFTER_TIME_RECV)));
        assert!(a.needs_rekey_on_recv(at(REKEY_AFTER_TIME_RECV)));
        assert!(!b.needs_rekey_on_recv(at(REKEY_AFTER_TIME_RECV)));

        assert!(!a.is_expired(just_before(REJECT_AFTER_TIME)));
        assert!(a.is_expired(at(REJECT_AFTER_TIME)));

        a.expire_sending();
        assert!(!a.needs_rekey_on_send(at(REKEY_AFTER_TIME)));
        assert!(!a.needs_rekey_on_recv(at(REKEY_AFTER_TIME_RECV)));
    }

    #[test]
    fn open_errors() {
        let (a, b) = pair();
        assert_eq!(b.open(BIRTH, &mut []), Err(OpenError::TooShort));
        assert_eq!(b.open(BIRTH, &mut [4u8; 31]), Err(OpenError::TooShort));

        let genuine = sealed(&a, b"payload!");
        let mut m = genuine.clone();
        assert_eq!(b.open(BIRTH + REJECT_AFTER_TIME, &mut m), Err(OpenError::Expired));

        // Any flipped bit in ciphertext or tag fails, and does not burn the counter.
        for bit in [16 * 8, 20 * 8 + 3, (genuine.len() - 1) * 8 + 7] {
            let mut m = genuine.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(b.open(BIRTH, &mut m), Err(OpenError::Auth));
        }
        // A wrong counter in the header is a wrong nonce.
        let mut m = genuine.clone();
        m[8] ^= 1;
        assert_eq!(b.open(BIRTH, &mut m), Err(OpenError::Auth));
        // The sender's own key does not open it either (directions are distinct).
        assert_eq!(a.open(BIRTH, &mut genuine.clone()), Err(OpenError::Auth));

        let mut m = genuine.clone();
        assert!(b.open(BIRTH, &mut m).is_ok());
        assert_eq!(b.open(BIRTH, &mut genuine.clone()), Err(OpenError::Replay));

        // Too old: jump the window ahead, then present counter 1.
        let one = sealed(&a, b"one");
        a.set_sending_counter_for_test(COUNTER_WINDOW_SIZE + 2);
        assert!(b.open(BIRTH, &mut sealed(&a, b"far")).is_ok());
        assert_eq!(b.open(BIRTH, &mut one.clone()), Err(OpenError::Replay));
    }

    /// Two threads seal with one shared keypair: no counter is used twice, and every message
    /// opens exactly once on the other end.
    #[test]
    fn two_threads_seal_with_one_keypair() {
        const M: usize = 2000;
        let (a, b) = pair();
        let seal_many = |tag: u8| -> Vec<Vec<u8>> { (0..M).map(|i| sealed(&a, &[tag, i as u8, 0, 0, 0])).collect() };
        let (x, y) = std::thread::scope(|s| {
            let hx = s.spawn(|| seal_many(1));
            let hy = s.spawn(|| seal_many(2));
            (hx.join().unwrap(), hy.join().unwrap())
        });
        let counters: HashSet<u64> =
            x.iter().chain(&y).map(|m| u64::from_le_bytes(m[8..16].try_into().unwrap())).collect();
        assert_eq!(counters.len(), 2 * M, "a counter was used twice");
        assert_eq!(counters.iter().max(), Some(&(2 * M as u64 - 1)));
        for (who, msgs) in [(1u8, x), (2, y)] {
            for (i, mut m) in msgs.into_iter().enumerate() {
                let mut again = m.clone();
                let r = b.open(BIRTH, &mut m).unwrap();
                assert_eq!(&m[r][..2], &[who, i as u8]);
                assert_eq!(b.open(BIRTH, &mut again), Err(OpenError::Replay));
            }
        }
    }

    /// Two threads open interleaved halves of one stream through one shared keypair, each also
    /// receiving a copy of the other's half: every message is accepted exactly once, and every
    /// duplicate is refused as a replay.
    #[test]
    fn two_threads_open_with_one_keypair() {
        const N: usize = 20_000; // more than the window, so the window slides during the race
        let (a, b) = pair();
        let stream: Vec<Vec<u8>> = (0..N).map(|i| sealed(&a, &(i as u32).to_le_bytes())).collect();
        let open_all = |first: usize| -> Vec<bool> {
            let mut got = vec![false; N];
            for i in 0..N {
                // Own half first at each step, then the duplicate of the other half.
                let i = if i % 2 == 0 { i + first } else { i - first };
                let Some(msg) = stream.get(i) else { continue };
                let mut m = msg.clone();
                match b.open(BIRTH, &mut m) {
                    Ok(r) => {
                        assert_eq!(m[r][..4], (i as u32).to_le_bytes());
                        got[i] = true;
                    }
                    Err(e) => assert_eq!(e, OpenError::Replay, "message {i}"),
                }
            }
            got
        };
        let (x, y) = std::thread::scope(|s| {
            let hx = s.spawn(|| open_all(0));
            let hy = s.spawn(|| open_all(1));
            (hx.join().unwrap(), hy.join().unwrap())
        });
        for i in 0..N {
            assert!(x[i] ^ y[i], "message {i} accepted by x={} y={}", x[i], y[i]);
        }
    }
}
