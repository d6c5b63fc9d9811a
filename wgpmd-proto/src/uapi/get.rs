//! The answer to `get=1`, in wireguard-go's order (`IpcGetOperation` in `device/uapi.go`):
//!
//! ```text
//! private_key=<hex>            only if set
//! listen_port=<n>              only if non-zero
//! fwmark=<n>                   only if non-zero
//! public_key=<hex>             then, per peer:
//! preshared_key=<hex>          64 zeros when none
//! protocol_version=1
//! endpoint=<ip:port>           only if known; IPv6 as [addr]:port
//! last_handshake_time_sec=<n>  Unix time; 0 and 0 if never
//! last_handshake_time_nsec=<n>
//! tx_bytes=<n>
//! rx_bytes=<n>
//! persistent_keepalive_interval=<n>
//! allowed_ip=<addr>/<cidr>     one line per prefix
//! errno=0
//! <empty line>
//! ```

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use zeroize::{Zeroize, Zeroizing};

use super::{push_hex_line, InterfaceState};
use crate::device::{Device, Peer};
use crate::time::Timestamp;

/// The complete `get` response, ending with `errno=0\n\n`. Peers come in id order.
/// `mono_to_unix` turns the core's monotonic timestamps into Unix time (seconds, nanoseconds).
///
/// The response holds the private key: wipe it (`zeroize::Zeroize`) once it is sent.
pub fn format_get(dev: &Device, iface: &InterfaceState, mono_to_unix: impl Fn(Timestamp) -> (u64, u32)) -> String {
    let mut s = Wiping(String::with_capacity(128 + 320 * dev.peer_count()));
    head(&mut s, dev, iface);
    for p in dev.peers() {
        peer(&mut s, dev, p, &mono_to_unix);
    }
    let _ = s.write_str("errno=0\n\n");
    std::mem::take(&mut s.0)
}

/// Peers formatted per piece of [`write_get`].
pub const GET_CHUNK_PEERS: usize = 256;

/// The `get` response written to `out` piece by piece, with the same text as [`format_get`]:
/// each piece of up to [`GET_CHUNK_PEERS`] peers is formatted from a device `load` returns
/// (called once per piece, and dropped before the piece is written), so a slow reader holds
/// nothing: not the device, and no more than one piece of text (wiped after it is written).
/// Peers added or removed between pieces may be missed or shown (by id order, a peer shows at
/// most once), as with the kernel's netlink dump across a change.
pub fn write_get<D, W>(
    load: impl Fn() -> D,
    iface: &InterfaceState,
    mono_to_unix: impl Fn(Timestamp) -> (u64, u32),
    out: &mut W,
) -> std::io::Result<()>
where
    D: core::ops::Deref<Target = Device>,
    W: std::io::Write,
{
    let mut s = Wiping(String::with_capacity(64 * 1024));
    let mut next = 0usize;
    let mut first = true;
    loop {
        let more = {
            let dev = load();
            if first {
                head(&mut s, &dev, iface);
                first = false;
            }
            let mut n = 0;
            let slots = dev.peer_slots();
            while next < slots && n < GET_CHUNK_PEERS {
                if let Some(p) = dev.peer(next as u32) {
                    peer(&mut s, &dev, p, &mono_to_unix);
                    n += 1;
                }
                next += 1;
            }
            next < slots
        };
        if !more {
            let _ = s.write_str("errno=0\n\n");
        }
        let r = out.write_all(s.0.as_bytes());
        s.0.zeroize();
        r?;
        if !more {
            return Ok(());
        }
    }
}

fn head(s: &mut Wiping, dev: &Device, iface: &InterfaceState) {
    if let Some(k) = dev.private_key() {
        push_hex_line(s, "private_key", &Zeroizing::new(k.to_bytes()));
    }
    if iface.listen_port != 0 {
        let _ = writeln!(s, "listen_port={}", iface.listen_port);
    }
    if iface.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", iface.fwmark);
    }
}

fn peer(s: &mut Wiping, dev: &Device, p: &Peer, mono_to_unix: &impl Fn(Timestamp) -> (u64, u32)) {
    push_hex_line(s, "public_key", p.public_key());
    {
        // Formatted under the peer's handshake lock, so no copy of the key is made.
        let hs = p.handshake();
        push_hex_line(s, "preshared_key", &hs.noise.psk().0);
    }
    let _ = s.write_str("protocol_version=1\n");
    if let Some(e) = p.endpoint() {
        let _ = s.write_str("endpoint=");
        match e {
            SocketAddr::V4(v4) => {
                push_ipv4(s, *v4.ip());
                let _ = s.write_char(':');
                push_u64(s, v4.port().into());
            }
            SocketAddr::V6(_) => {
                let _ = write!(s, "{e}");
            }
        }
        let _ = s.write_char('\n');
    }
    let (sec, nsec) = p.last_handshake().map(mono_to_unix).unwrap_or((0, 0));
    push_number_line(s, "last_handshake_time_sec=", sec);
    push_number_line(s, "last_handshake_time_nsec=", nsec.into());
    push_number_line(s, "tx_bytes=", p.tx_bytes());
    push_number_line(s, "rx_bytes=", p.rx_bytes());
    push_number_line(s, "persistent_keepalive_interval=", p.persistent_keepalive().into());
    for (a, c) in dev.allowed_ips(p.id()) {
        let _ = s.write_str("allowed_ip=");
        match a {
            IpAddr::V4(v4) => push_ipv4(s, v4),
            IpAddr::V6(_) => {
                let _ = write!(s, "{a}");
            }
        }
        let _ = s.write_char('/');
        push_u64(s, c.into());
        let _ = s.write_char('\n');
    }
}

// A `get` of millions of peers is mostly numbers and IPv4 addresses: formatted here by hand
// (the same text as `Display`, which goes through the formatting machinery and, for
// addresses, an intermediate buffer, several times slower). IPv6 stays with `Display` (its
// canonical text form has rules worth not repeating).

/// `key` (with its `=`), `n` in decimal, and a newline.
fn push_number_line(s: &mut impl fmt::Write, key: &str, n: u64) {
    let _ = s.write_str(key);
    push_u64(s, n);
    let _ = s.write_char('\n');
}

/// `n` in decimal, as `Display` writes it.
fn push_u64(s: &mut impl fmt::Write, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let _ = s.write_str(core::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// A dotted quad, as `Display` writes it.
fn push_ipv4(s: &mut impl fmt::Write, a: Ipv4Addr) {
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (k, octet) in a.octets().into_iter().enumerate() {
        if k > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    let _ = s.write_str(core::str::from_utf8(&buf[..n]).unwrap_or_default());
}

/// A string that wipes its old buffer when it grows (the response holds keys).
struct Wiping(String);

impl fmt::Write for Wiping {
    fn write_str(&mut self, part: &str) -> fmt::Result {
        if self.0.capacity() - self.0.len() < part.len() {
            let mut bigger = String::with_capacity((self.0.len() + part.len()).max(2 * self.0.capacity()));
            bigger.push_str(&self.0);
            self.0.zeroize();
            self.0 = bigger;
        }
        self.0.push_str(part);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_formatted_numbers_and_addresses_are_what_display_writes() {
        let mut numbers = vec![0u64, 1, 9, 10, 99, 100, 65_535, 999_999_999, 1 << 32, u64::MAX - 1, u64::MAX];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            numbers.push(x >> (x % 64));
        }
        for n in numbers {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
            let a = Ipv4Addr::from(n as u32);
            let mut s = String::new();
            push_ipv4(&mut s, a);
            assert_eq!(s, a.to_string());
        }
        for a in [[0, 0, 0, 0], [255, 255, 255, 255], [10, 0, 100, 9], [1, 20, 199, 200]] {
            let a = Ipv4Addr::from(a);
            let mut s = String::new();
            push_ipv4(&mut s, a);
            assert_eq!(s, a.to_string());
        }
    }
}
