//! The cross-platform userspace API (UAPI) that the stock `wg` tool speaks to userspace
//! implementations, byte-compatible with wireguard-go (`device/uapi.go`, `ipc/uapi_linux.go`)
//! and with what wireguard-tools `src/ipc-uapi.h` sends and expects.
//!
//! This module owns the protocol's rules:
//! - a request on `/var/run/wireguard/<name>.sock` is `get=1\n\n`, or `set=1\n`, `key=value`
//!   lines and an empty line (`wg` sends one per connection; wireguard-go would read more, the
//!   daemon's server answers one and closes);
//! - a `get` answers the device's `key=value` lines in wireguard-go's order ([`format_get`]),
//!   then `errno=0` and an empty line;
//! - a `set` answers `errno=0` or `errno=<negative errno>` (-22, `EINVAL`, for an unknown key, a
//!   key out of place or a malformed value; -71, `EPROTO`, for a line without `=` or not UTF-8);
//! - interface keys come first; `public_key=` opens a peer, and every key after it is a peer key;
//! - keys are 64 hex digits; an all-zero private key or pre-shared key removes it.
//!
//! Where we are stricter than wireguard-go, which applies a `set` line by line and stops at the
//! first bad one: a request is parsed and validated whole ([`parse_request`]) before
//! [`apply_set`] touches the device, so a malformed request changes nothing.
//!
//! Private submodules hold [`apply_set`]/[`apply_config`] (the semantics of each key) and
//! [`format_get`].
//! The socket is the caller's (the daemon's `uapi_server`): this module parses and renders text.

mod apply;
mod get;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::crypto::{ct_eq, Secret};
use crate::messages::KEY_LEN;

pub use apply::{apply_config, apply_set};
pub use get::{format_get, write_get, GET_CHUNK_PEERS};

/// wireguard-go `ipc.IpcErrorIO`: `-EIO`.
pub const IPC_ERROR_IO: i32 = -5;
/// wireguard-go `ipc.IpcErrorInvalid`: `-EINVAL`, a bad key or value.
pub const IPC_ERROR_INVALID: i32 = -22;
/// wireguard-go `ipc.IpcErrorProtocol`: `-EPROTO`, a line that is not `key=value`.
pub const IPC_ERROR_PROTOCOL: i32 = -71;

/// A UAPI error: the negative errno the client receives and why, for the log.
///
/// `Display` is wireguard-go's log line: `IPC error -22: invalid UAPI device key: bogus_key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("IPC error {errno}: {message}")]
pub struct UapiError {
    /// Negative errno, sent back as `errno=<errno>`.
    pub errno: i32,
    /// What was wrong (names the key and, unless it is secret, the value).
    pub message: String,
}

impl UapiError {
    /// An `EINVAL` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        UapiError { errno: IPC_ERROR_INVALID, message: message.into() }
    }
    /// An `EPROTO` error.
    pub fn protocol(message: impl Into<String>) -> Self {
        UapiError { errno: IPC_ERROR_PROTOCOL, message: message.into() }
    }
}

/// The interface settings that live outside the protocol core's [`crate::device::Device`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceState {
    /// UDP port to listen on (0: the daemon picks one). The daemon rebinds when it changes.
    pub listen_port: u16,
    /// Firewall mark for outgoing packets (0: none).
    pub fwmark: u32,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `get=1`: describe the device.
    Get,
    /// `set=1`: change it.
    Set(SetRequest),
}

/// A parsed and validated `set=1` request.
#[derive(Debug, Clone, Default)]
pub struct SetRequest {
    /// `private_key` (all zeros: remove the key).
    pub private_key: Option<Secret>,
    /// `listen_port`.
    pub listen_port: Option<u16>,
    /// `fwmark` (0: none).
    pub fwmark: Option<u32>,
    /// `replace_peers=true`: remove every peer before configuring the ones that follow.
    pub replace_peers: bool,
    /// The peer sections, in request order.
    pub peers: Vec<PeerSet>,
}

impl PartialEq for SetRequest {
    fn eq(&self, other: &Self) -> bool {
        let keys_eq = match (&self.private_key, &other.private_key) {
            (Some(a), Some(b)) => ct_eq(&a.0, &b.0),
            (None, None) => true,
            _ => false,
        };
        keys_eq
            && self.listen_port == other.listen_port
            && self.fwmark == other.fwmark
            && self.replace_peers == other.replace_peers
            && self.peers == other.peers
    }
}
impl Eq for SetRequest {}

/// One `public_key=` section of a `set` request: the peer and its operations in order (order
/// matters: `replace_allowed_ips` clears only the prefixes added before it, `update_only` or
/// `remove` turn the rest of the section into no-ops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSet {
    /// The peer's public key.
    pub public_key: [u8; KEY_LEN],
    /// The keys that followed it.
    pub ops: Vec<PeerOp>,
}

/// One peer key of a `set` request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerOp {
    /// `remove=true`.
    Remove,
    /// `update_only=true`: do not create the peer if it does not exist.
    UpdateOnly,
    /// `preshared_key` (all zeros: none).
    PresharedKey(Secret),
    /// `endpoint`.
    Endpoint(SocketAddr),
    /// `persistent_keepalive_interval` in seconds (0: off).
    PersistentKeepalive(u16),
    /// `replace_allowed_ips=true`.
    ReplaceAllowedIps,
    /// `allowed_ip` (host bits as sent; masked on insertion).
    AllowedIp(IpAddr, u8),
    /// `protocol_version=1` (the only version).
    ProtocolVersion,
}

impl PartialEq for PeerOp {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (PeerOp::PresharedKey(a), PeerOp::PresharedKey(b)) => ct_eq(&a.0, &b.0),
            (PeerOp::Endpoint(a), PeerOp::Endpoint(b)) => a == b,
            (PeerOp::PersistentKeepalive(a), PeerOp::PersistentKeepalive(b)) => a == b,
            (PeerOp::AllowedIp(a, x), PeerOp::AllowedIp(b, y)) => a == b && x == y,
            (PeerOp::Remove, PeerOp::Remove)
            | (PeerOp::UpdateOnly, PeerOp::UpdateOnly)
            | (PeerOp::ReplaceAllowedIps, PeerOp::ReplaceAllowedIps)
            | (PeerOp::ProtocolVersion, PeerOp::ProtocolVersion) => true,
            _ => false,
        }
    }
}
impl Eq for PeerOp {}

/// Split `bytes` into lines at `\n`, dropping one `\r` before it (Go's `bufio.ScanLines`). A
/// last piece without `\n` is a line too.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let empty = bytes.is_empty();
    body.split(|&b| b == b'\n').filter(move |_| !empty).map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// Parse one request (up to and including its empty line; anything after it is ignored; a
/// request cut short by the end of input is taken as it is, as wireguard-go does).
pub fn parse_request(bytes: &[u8]) -> Result<Request, UapiError> {
    let mut it = lines(bytes);
    let op = it.next().ok_or_else(|| UapiError::invalid("empty UAPI request"))?;
    match op {
        b"get=1" => match it.next() {
            None | Some(b"") => Ok(Request::Get),
            Some(rest) => {
                Err(UapiError::invalid(format!("trailing characters in UAPI get: {:?}", String::from_utf8_lossy(rest))))
            }
        },
        b"set=1" => parse_set(it).map(Request::Set),
        _ => Err(UapiError::invalid(format!("invalid UAPI operation: {:?}", String::from_utf8_lossy(op)))),
    }
}

fn parse_set<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<SetRequest, UapiError> {
    let mut p = SetParser::new();
    for raw in lines {
        if !p.line(raw)? {
            break;
        }
    }
    Ok(p.finish())
}

/// A `set=1` request validated line by line as it arrives, into compact records (keys as 32
/// bytes, addresses and numbers as values; no text is kept), so a server can read a request of
/// any size from its socket with memory bounded per peer section and per line, and still apply
/// it all or nothing: [`SetParser::finish`] hands over the whole validated request only once
/// its last line was accepted.
#[derive(Debug, Default)]
pub struct SetParser {
    req: SetRequest,
    peer: Option<PeerSet>,
    /// Lines taken so far after `set=1`.
    n: usize,
}

impl SetParser {
    /// Ready for the line after `set=1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take one line (without its `\n`; a trailing `\r` is ignored). Returns `Ok(false)` for
    /// the empty line that ends the request, `Ok(true)` otherwise.
    pub fn line(&mut self, raw: &[u8]) -> Result<bool, UapiError> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            return Ok(false);
        }
        self.n += 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| UapiError::protocol(format!("line {} of the set request is not UTF-8", self.n + 1)))?;
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::protocol(format!("failed to parse line {line:?}")));
        };
        if key == "public_key" {
            let public_key = parse_hex_key(value).ok_or_else(|| {
                UapiError::invalid(format!("failed to get peer by public key: invalid hex key {value:?}"))
            })?;
            self.req.peers.extend(self.peer.replace(PeerSet { public_key, ops: Vec::new() }));
            return Ok(true);
        }
        match self.peer.as_mut() {
            None => parse_device_line(&mut self.req, key, value)?,
            Some(p) => {
                let op = parse_peer_line(key, value)?;
                // Most sections have one or two operations (`wg setconf` sends
                // `replace_allowed_ips` and one `allowed_ip`): room for two at the first, so
                // such a section costs one allocation and no spare capacity.
                if p.ops.capacity() == 0 {
                    p.ops.reserve_exact(2);
                }
                p.ops.push(op);
            }
        }
        Ok(true)
    }

    /// The validated request.
    pub fn finish(mut self) -> SetRequest {
        self.req.peers.extend(self.peer.take());
        self.req
    }
}

fn parse_device_line(req: &mut SetRequest, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let k = parse_hex_key(value)
                .ok_or_else(|| UapiError::invalid("failed to set private_key: not 64 hex digits"))?;
            req.private_key = Some(Secret(k));
        }
        "listen_port" => {
            let p = parse_decimal(value, u16::MAX.into())
                .ok_or_else(|| UapiError::invalid(format!("failed to parse listen_port: invalid value {value:?}")))?;
            req.listen_port = Some(p as u16);
        }
        "fwmark" => {
            let m = parse_decimal(value, u32::MAX.into())
                .ok_or_else(|| UapiError::invalid(format!("invalid fwmark: {value:?}")))?;
            req.fwmark = Some(m as u32);
        }
        "replace_peers" => {
            expect_true(value, "failed to set replace_peers, invalid value")?;
            req.replace_peers = true;
        }
        _ => return Err(UapiError::invalid(format!("invalid UAPI device key: {key}"))),
    }
    Ok(())
}

fn parse_peer_line(key: &str, value: &str) -> Result<PeerOp, UapiError> {
    Ok(match key {
        "update_only" => {
            expect_true(value, "failed to set update only, invalid value")?;
            PeerOp::UpdateOnly
        }
        "remove" => {
            expect_true(value, "failed to set remove, invalid value")?;
            PeerOp::Remove
        }
        "preshared_key" => PeerOp::PresharedKey(Secret(
            parse_hex_key(value).ok_or_else(|| UapiError::invalid("failed to set preshared key: not 64 hex digits"))?,
        )),
        "endpoint" => PeerOp::Endpoint(value.parse().map_err(|_| {
            UapiError::invalid(format!("failed to set endpoint {value}: not an IP:port or [IPv6]:port"))
        })?),
        "persistent_keepalive_interval" => {
            let s = parse_decimal(value, u16::MAX.into()).ok_or_else(|| {
                UapiError::invalid(format!("failed to set persistent keepalive interval: invalid value {value:?}"))
            })?;
            PeerOp::PersistentKeepalive(s as u16)
        }
        "replace_allowed_ips" => {
            expect_true(value, "failed to replace allowedips, invalid value")?;
            PeerOp::ReplaceAllowedIps
        }
        "allowed_ip" => {
            let (a, c) = parse_prefix(value)
                .ok_or_else(|| UapiError::invalid(format!("failed to set allowed ip: invalid prefix {value:?}")))?;
            PeerOp::AllowedIp(a, c)
        }
        "protocol_version" => {
            if value != "1" {
                return Err(UapiError::invalid(format!("invalid protocol version: {value}")));
            }
            PeerOp::ProtocolVersion
        }
        _ => return Err(UapiError::invalid(format!("invalid UAPI peer key: {key}"))),
    })
}

fn expect_true(value: &str, what: &str) -> Result<(), UapiError> {
    if value == "true" {
        Ok(())
    } else {
        Err(UapiError::invalid(format!("{what}: {value}")))
    }
}

/// Decimal digits only (Go's `strconv.ParseUint(v, 10, _)`), at most `max`.
fn parse_decimal(v: &str, max: u64) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|&n| n <= max)
}

/// Exactly 64 hex digits, either case.
pub(crate) fn parse_hex_key(v: &str) -> Option<[u8; KEY_LEN]> {
    let b = v.as_bytes();
    if b.len() != 2 * KEY_LEN {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *o = (hi << 4 | lo) as u8;
    }
    Some(out)
}

/// Append `key=<64 lowercase hex digits>\n` (in one write, so no copy of the key is left
/// in a formatting buffer).
pub(crate) fn push_hex_line(w: &mut impl std::fmt::Write, key: &str, k: &[u8; KEY_LEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = zeroize::Zeroizing::new([0u8; 2 * KEY_LEN]);
    for (pair, b) in hex.chunks_exact_mut(2).zip(k) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    let _ = w.write_str(key);
    let _ = w.write_char('=');
    let _ = w.write_str(std::str::from_utf8(&hex[..]).unwrap_or_default());
    let _ = w.write_char('\n');
}

/// Go's `netip.ParsePrefix`: an address without zone, `/`, and a prefix length in decimal
/// without leading zeros, no longer than the address.
fn parse_prefix(v: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = v.split_once('/')?;
    let addr: IpAddr = if ip.contains(':') {
        IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?)
    };
    if bits.len() > 1 && bits.starts_with('0') {
        return None;
    }
    let max = if addr.is_ipv4() { 32 } else { 128 };
    Some((addr, parse_decimal(bits, max)? as u8))
}

impl SetRequest {
    /// The request's bytes, as wireguard-tools `userspace_set_device` writes them (the same
    /// key order; ends with the empty line). Contains the keys it sets, in hex.
    pub fn encode(&self) -> String {
        let mut s = String::from("set=1\n");
        if let Some(k) = &self.private_key {
            push_hex_line(&mut s, "private_key", &k.0);
        }
        if let Some(p) = self.listen_port {
            let _ = writeln!(s, "listen_port={p}");
        }
        if let Some(m) = self.fwmark {
            let _ = writeln!(s, "fwmark={m}");
        }
        if self.replace_peers {
            s.push_str("replace_peers=true\n");
        }
        for p in &self.peers {
            push_hex_line(&mut s, "public_key", &p.public_key);
            for op in &p.ops {
                match op {
                    PeerOp::Remove => s.push_str("remove=true\n"),
                    PeerOp::UpdateOnly => s.push_str("update_only=true\n"),
                    PeerOp::PresharedKey(k) => push_hex_line(&mut s, "preshared_key", &k.0),
                    PeerOp::Endpoint(e) => {
                        let _ = writeln!(s, "endpoint={e}");
                    }
                    PeerOp::PersistentKeepalive(k) => {
                        let _ = writeln!(s, "persistent_keepalive_interval={k}");
                    }
                    PeerOp::ReplaceAllowedIps => s.push_str("replace_allowed_ips=true\n"),
                    PeerOp::AllowedIp(a, c) => {
                        let _ = writeln!(s, "allowed_ip={a}/{c}");
                    }
                    PeerOp::ProtocolVersion => s.push_str("protocol_version=1\n"),
                }
            }
        }
        s.push('\n');
        s
    }
}

#[cfg(test)]
mod tests;
