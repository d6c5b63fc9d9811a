//! Transport sessions: keypairs, in-place seal and open of data messages, the replay window, and
//! the three keypair slots of a peer.
//!
//! This module owns the per-keypair send counter and replay window, the message limits
//! (`REKEY_AFTER_MESSAGES`, `REJECT_AFTER_MESSAGES`), the keypair age limits (`REKEY_AFTER_TIME`,
//! `REKEY_AFTER_TIME_RECV`, `REJECT_AFTER_TIME`) and the current/previous/next rotation. It
//! follows the kernel's drivers/net/wireguard/noise.c (keypairs), send.c (`encrypt_packet`,
//! padding) and receive.c (`decrypt_packet`, `counter_validate`).
//!
//! - [`replay`]: [`ReplayWindow`], the 8192-bit anti-replay bitmap;
//! - [`keypair`]: [`Keypair`], one handshake's keys with [`Keypair::seal`] and [`Keypair::open`];
//! - [`keypairs`]: [`Keypairs`], a peer's three slots and their transitions;
//!
//! # Sharing between worker threads
//! The daemon runs one worker per core and a peer's packets may land on any core, so session
//! state is shared, not handed off: `seal` and `open` take `&self`, keypairs live in `Arc`s and
//! slots in `arc_swap` cells read without locks.
//!
//! - The send counter is an `AtomicU64` advanced by a compare-and-swap that stops at
//!   `REJECT_AFTER_MESSAGES`: every sealed message gets a unique nonce, and refused calls do not
//!   move the counter (a plain `fetch_add` would creep past the limit and, after 8130 refusals,
//!   wrap to nonces already used).
//! - The replay window sits behind a `std::sync::Mutex`, held only for the bit tests, never
//!   across crypto: [`Keypair::open`] takes it twice per message (a pre-check before decrypting,
//!   the marking after), the device's burst path once per keypair per burst (the marking after
//!   decrypting, as the kernel's receive path: no pre-check). Measured
//!   cost of `open` over the raw AEAD: about 25 ns per message, against about 0.7 µs to decrypt a
//!   full-size packet (the repository's docs/PERFORMANCE.md). This mirrors the kernel's
//!   `spin_lock_bh` in `counter_validate`. A lock-free window (CAS on the counter, `fetch_or` on
//!   bit words) was not chosen: sliding the window must clear words and move the counter as one
//!   step, and doing that without a lock needs either a sequence lock or a looser rule than the
//!   kernel's; the exact kernel semantics, with a test for concurrent use, were worth more here.
//! - Slot transitions take one per-peer lock (the kernel's `keypair_update_lock`: the low bit of
//!   the slots' stamp, a spin lock); the data path takes it only on key confirmation, and only
//!   for a keypair not yet confirmed (a flag on the keypair), after a lock-free check.

pub mod keypair;
pub mod keypairs;
pub mod replay;

pub(crate) use keypair::prefetch_refcount;
pub use keypair::{padded_len, Keypair, OpenError, SealError};
pub use keypairs::{Dropped, Keypairs};
pub use replay::ReplayWindow;
