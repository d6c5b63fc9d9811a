//! Every WireGuard wire size, type code and protocol limit, in one place.
//!
//! Values are those of the Linux kernel (`drivers/net/wireguard/messages.h`), which is the
//! reference wherever implementations differ. Nothing else in the crate may spell one of these
//! numbers out.

use core::time::Duration;

/// Length of a Curve25519 key, a BLAKE2s hash, a symmetric key.
pub const KEY_LEN: usize = 32;
/// Length of a BLAKE2s-256 hash (the Noise `HASHLEN`).
pub const HASH_LEN: usize = 32;
/// Length of a Poly1305 tag (the Noise AEAD overhead).
pub const TAG_LEN: usize = 16;
/// Length of a TAI64N timestamp.
pub const TIMESTAMP_LEN: usize = 12;
/// Length of a cookie and of MAC1 / MAC2.
pub const COOKIE_LEN: usize = 16;
/// Length of the random XChaCha20-Poly1305 nonce of a cookie reply.
pub const COOKIE_NONCE_LEN: usize = 24;

/// Message type codes (first byte of the 4-byte header; the other three are zero).
pub const MESSAGE_HANDSHAKE_INITIATION: u8 = 1;
/// Handshake response type code.
pub const MESSAGE_HANDSHAKE_RESPONSE: u8 = 2;
/// Cookie reply type code.
pub const MESSAGE_HANDSHAKE_COOKIE: u8 = 3;
/// Transport data type code.
pub const MESSAGE_DATA: u8 = 4;

/// Size of the message header (type + 3 reserved zero bytes).
pub const HEADER_LEN: usize = 4;
/// Size of a sender or receiver index (little-endian u32 on the wire).
pub const INDEX_LEN: usize = 4;
/// Size of the transport data counter (little-endian u64 on the wire).
pub const COUNTER_LEN: usize = 8;
/// Size of a handshake initiation: 4 + 4 + 32 + (32+16) + (12+16) + 16 + 16.
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response: 4 + 4 + 4 + 32 + 16 + 16 + 16.
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply: 4 + 4 + 24 + (16+16).
pub const COOKIE_REPLY_LEN: usize = 64;
/// Size of the transport data header: type, receiver index, 64-bit counter.
pub const DATA_HEADER_LEN: usize = 16;
/// Smallest transport data message (a keepalive: empty plaintext + tag).
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + TAG_LEN;
/// Plaintext is zero-padded to a multiple of this.
pub const PADDING_MULTIPLE: usize = 16;
/// Bytes a sealed data message adds to its padded plaintext.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Length of a transport data message carrying `plain_len` bytes of (padded) plaintext.
pub const fn message_data_len(plain_len: usize) -> usize {
    DATA_HEADER_LEN + plain_len + TAG_LEN
}

/// Outer overhead on IPv4: WireGuard 32 + UDP 8 + IPv4 20.
pub const OUTER_OVERHEAD_V4: usize = 60;
/// Outer overhead on IPv6: WireGuard 32 + UDP 8 + IPv6 40.
pub const OUTER_OVERHEAD_V6: usize = 80;
/// Default tunnel (inner) MTU: 1500 − 80.
pub const DEFAULT_TUNNEL_MTU: usize = 1420;

/// Send a new handshake once a keypair has sealed this many messages.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// Replay window size in bits (kernel `COUNTER_BITS_TOTAL`).
pub const COUNTER_BITS_TOTAL: u64 = 8192;
/// Bits of the window that belong to one machine word (kernel `BITS_PER_LONG`).
pub const COUNTER_REDUNDANT_BITS: u64 = 64;
/// Usable replay window (kernel `COUNTER_WINDOW_SIZE`).
pub const COUNTER_WINDOW_SIZE: u64 = COUNTER_BITS_TOTAL - COUNTER_REDUNDANT_BITS;
/// Refuse to seal or open with counters at or beyond this (kernel value: U64_MAX − window − 1).
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - COUNTER_WINDOW_SIZE - 1;

/// The initiator re-handshakes when sending on a keypair older than this.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A keypair is unusable after this.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Stop retrying a handshake after this.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// Time between handshake initiation retransmits (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Maximum random jitter added to REKEY_TIMEOUT-based timers (kernel: HZ / 3).
pub const REKEY_TIMEOUT_JITTER_MAX: Duration = Duration::from_millis(333);
/// Send a keepalive this long after receiving data if nothing was sent.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Number of initiation retransmits before giving up: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT.
pub const MAX_TIMER_HANDSHAKES: u32 = (REKEY_ATTEMPT_TIME.as_secs() / REKEY_TIMEOUT.as_secs()) as u32;
/// Receiving on a keypair this old (initiator side) triggers one last-minute handshake.
pub const REKEY_AFTER_TIME_RECV: Duration =
    Duration::from_secs(REJECT_AFTER_TIME.as_secs() - KEEPALIVE_TIMEOUT.as_secs() - REKEY_TIMEOUT.as_secs());
/// Zero all key material after this long without a new handshake: 3 × REJECT_AFTER_TIME.
pub const ZERO_KEY_MATERIAL_AFTER: Duration = Duration::from_secs(3 * REJECT_AFTER_TIME.as_secs());

/// Responder cookie secret lifetime; the initiator's stored cookie is used for
/// `COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY`.
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// Margin that keeps an initiator from using a cookie the responder is about to forget.
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);

/// Minimum interval between two accepted initiations from one peer (kernel
/// `INITIATIONS_PER_SECOND` = 50).
pub const INITIATIONS_PER_SECOND: u64 = 50;
/// TAI64N nanoseconds are rounded down to a multiple of this (2^24 ns) before being sent, so the
/// timestamp cannot be used as a precise clock oracle.
pub const TAI64N_NSEC_GRANULARITY: u32 = 1 << 24;

/// Handshakes queued for the handshake stage (kernel `MAX_QUEUED_INCOMING_HANDSHAKES`).
pub const MAX_QUEUED_INCOMING_HANDSHAKES: usize = 4096;
/// The device is under load when at least this many handshakes are queued (kernel: max / 8).
pub const UNDER_LOAD_QUEUE_DEPTH: usize = MAX_QUEUED_INCOMING_HANDSHAKES / 8;
/// Once triggered, "under load" persists this long after the queue drains.
pub const UNDER_LOAD_PERSIST: Duration = Duration::from_secs(1);
/// Packets staged per peer while waiting for a handshake.
pub const MAX_STAGED_PACKETS: usize = 128;
/// Default peer limit of a device: 2^22, four times the kernel's `MAX_PEERS_PER_DEVICE` (2^20),
/// for a carrier concentrator; [`crate::device::Device::set_max_peers`] changes it.
pub const MAX_PEERS_PER_DEVICE: usize = 1 << 22;

/// Per-source handshake rate limit: packets per second.
pub const RATELIMIT_PACKETS_PER_SECOND: u64 = 20;
/// Per-source handshake rate limit: burst.
pub const RATELIMIT_PACKETS_BURSTABLE: u64 = 5;
/// Sources the per-source rate limiter tracks at most (kernel `ratelimiter.c`: `max_entries` =
/// 8 × `table_size`, with 8192 buckets on hosts with over 1 GiB of RAM); new sources beyond it
/// are refused until idle entries are collected.
pub const RATELIMIT_MAX_ENTRIES: usize = 8 * 8192;
/// The rate limiter forgets a source idle for more than this, and collects that often (kernel:
/// the gc work runs every `HZ` and frees entries older than `NSEC_PER_SEC`).
pub const RATELIMIT_GC_INTERVAL: Duration = Duration::from_secs(1);

/// DSCP class for handshake packets (AF41), as the kernel marks them.
pub const HANDSHAKE_DSCP: u8 = 0x88;

/// Noise protocol name (the initial chaining key is its hash).
pub const NOISE_CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// WireGuard identifier mixed into the initial hash.
pub const WG_IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Label of the MAC1 key derivation.
pub const WG_LABEL_MAC1: &[u8] = b"mac1----";
/// Label of the cookie-encryption key derivation.
pub const WG_LABEL_COOKIE: &[u8] = b"cookie--";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_values_match_the_kernel() {
        assert_eq!(MAX_TIMER_HANDSHAKES, 18);
        assert_eq!(REKEY_AFTER_TIME_RECV.as_secs(), 165);
        assert_eq!(ZERO_KEY_MATERIAL_AFTER.as_secs(), 540);
        assert_eq!(COUNTER_WINDOW_SIZE, 8128);
        assert_eq!(REJECT_AFTER_MESSAGES, u64::MAX - 8129);
        assert_eq!(message_data_len(0), 32);
        assert_eq!(UNDER_LOAD_QUEUE_DEPTH, 512);
        assert_eq!(INITIATION_LEN, 4 + 4 + 32 + 48 + 28 + 16 + 16);
        assert_eq!(RESPONSE_LEN, 4 + 4 + 4 + 32 + 16 + 16 + 16);
        assert_eq!(COOKIE_REPLY_LEN, 4 + 4 + 24 + 32);
    }
}
