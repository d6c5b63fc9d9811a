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
    push_hex_line(s, "preshared_key", &p.preshared_key().0);
    let _ = s.write_str("protocol_version=1\n");
    if let Some(e) = p.endpoint() {
        let _ = writeln!(s, "endpoint={e}");
    }
    let (sec, nsec) = p.last_handshake().map(mono_to_unix).unwrap_or((0, 0));
    let _ = writeln!(s, "last_handshake_time_sec={sec}");
    let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
    let _ = writeln!(s, "tx_bytes={}", p.tx_bytes());
    let _ = writeln!(s, "rx_bytes={}", p.rx_bytes());
    let _ = writeln!(s, "persistent_keepalive_interval={}", p.persistent_keepalive());
    for (a, c) in dev.allowed_ips(p.id()) {
        let _ = writeln!(s, "allowed_ip={a}/{c}");
    }
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
