//! The wg.conf(5) configuration file, as `wg setconf` reads it: parsing into an
//! [`InterfaceConfig`], and writing one back out the way `wg showconf` does.
//!
//! This module owns the file format's rules, following wireguard-tools `src/config.c`
//! (`config_read_line`, `process_line`) and `src/showconf.c`:
//! - a `#` starts a comment that runs to the end of the line, and every whitespace character of a
//!   line is removed before it is read (so `Allowed IPs = a, b` reads as `AllowedIPs=a,b`);
//! - `[Interface]` and `[Peer]` open sections; section names and keys are case-insensitive;
//! - `[Interface]` keys: `PrivateKey`, `ListenPort`, `FwMark` (decimal, `0x` hex, or `off`);
//!   `[Peer]` keys: `PublicKey`, `PresharedKey`, `Endpoint`, `PersistentKeepalive` (a number or
//!   `off`), `AllowedIPs` (comma-separated prefixes, repeatable; a bare address is a /32 or /128
//!   host route; host bits are allowed, and masked when the prefix is inserted);
//! - keys are the base64 of 32 bytes (44 characters, canonical padding);
//! - a later value of a key replaces an earlier one, except `AllowedIPs`, which accumulates.
//!
//! Stricter than wg(8), and said so in the errors: wg-quick(8)'s own keys (`Address`, `DNS`,
//! `MTU`, `Table`, `PreUp`, `PostUp`, `PreDown`, `PostDown`, `SaveConfig`) are refused by name,
//! a `PublicKey` used by two peers is refused, and `ListenPort` and endpoint ports must be
//! numbers (wg(8) also accepts service names from /etc/services).
//!
//! Endpoint host names are resolved while parsing (wg(8) resolves them before it talks to the
//! device too), by the resolver the caller passes to [`InterfaceConfig::parse_with_resolver`]:
//! this crate does no I/O, so the daemon supplies the system resolver and tests their own.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{ct_eq, Secret};
use crate::messages::KEY_LEN;
use crate::uapi::{PeerOp, PeerSet, SetRequest};

/// What the `[Interface]` section (and the peers after it) configure.
#[derive(Clone, Default)]
pub struct InterfaceConfig {
    /// `PrivateKey`; `None` when the file has none (`wg setconf` then removes the key).
    pub private_key: Option<[u8; KEY_LEN]>,
    /// `ListenPort`; `None` when absent (setconf semantics: 0, a port of the daemon's choice).
    pub listen_port: Option<u16>,
    /// `FwMark`; `None` when absent (`off` reads as `Some(0)`).
    pub fwmark: Option<u32>,
    /// The `[Peer]` sections, in file order.
    pub peers: Vec<PeerConfig>,
}

/// One `[Peer]` section.
#[derive(Clone)]
pub struct PeerConfig {
    /// `PublicKey` (required).
    pub public_key: [u8; KEY_LEN],
    /// `PresharedKey`, if given (all zeros means none, as in wg(8)).
    pub preshared_key: Option<[u8; KEY_LEN]>,
    /// `Endpoint`, resolved to an address.
    pub endpoint: Option<SocketAddr>,
    /// `PersistentKeepalive` in seconds (`off` reads as `Some(0)`).
    pub persistent_keepalive: Option<u16>,
    /// Every `AllowedIPs` prefix, in file order, host bits as written.
    pub allowed_ips: Vec<(IpAddr, u8)>,
}

impl Drop for InterfaceConfig {
    fn drop(&mut self) {
        if let Some(k) = self.private_key.as_mut() {
            k.zeroize();
        }
    }
}

impl Drop for PeerConfig {
    fn drop(&mut self) {
        if let Some(k) = self.preshared_key.as_mut() {
            k.zeroize();
        }
    }
}

/// Keys compare in constant time.
fn keys_eq(a: &Option<[u8; KEY_LEN]>, b: &Option<[u8; KEY_LEN]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => ct_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

impl PartialEq for InterfaceConfig {
    fn eq(&self, o: &Self) -> bool {
        keys_eq(&self.private_key, &o.private_key)
            && self.listen_port == o.listen_port
            && self.fwmark == o.fwmark
            && self.peers == o.peers
    }
}
impl Eq for InterfaceConfig {}

impl PartialEq for PeerConfig {
    fn eq(&self, o: &Self) -> bool {
        self.public_key == o.public_key
            && keys_eq(&self.preshared_key, &o.preshared_key)
            && self.endpoint == o.endpoint
            && self.persistent_keepalive == o.persistent_keepalive
            && self.allowed_ips == o.allowed_ips
    }
}
impl Eq for PeerConfig {}

impl fmt::Debug for InterfaceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterfaceConfig")
            .field("private_key", &self.private_key.map(|_| "(hidden)"))
            .field("listen_port", &self.listen_port)
            .field("fwmark", &self.fwmark)
            .field("peers", &self.peers)
            .finish()
    }
}

impl fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerConfig")
            .field("public_key", &b64(&self.public_key))
            .field("preshared_key", &self.preshared_key.map(|_| "(hidden)"))
            .field("endpoint", &self.endpoint)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("allowed_ips", &self.allowed_ips)
            .finish()
    }
}

/// A configuration file error: the 1-based line and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ConfigError {
    /// 1-based line number.
    pub line: usize,
    /// The problem.
    pub kind: ConfigErrorKind,
}

/// What is wrong with a configuration line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// A `[...]` line other than `[Interface]` or `[Peer]`.
    #[error("unknown section `{0}` (expected [Interface] or [Peer])")]
    UnknownSection(String),
    /// A line that is neither a section header nor `Key = Value` (not echoed: it may hold a
    /// key).
    #[error("expected a [Section] or `Key = Value`")]
    NotKeyValue,
    /// A key before any section header.
    #[error("`{0}` appears before any [Interface] or [Peer] section")]
    OutsideSection(String),
    /// A key wg(8) does not know in this section.
    #[error("unknown key `{key}` in [{section}] section")]
    UnknownKey {
        /// The key as written (whitespace removed).
        key: String,
        /// `Interface` or `Peer`.
        section: &'static str,
    },
    /// A key only wg-quick(8) understands.
    #[error("`{0}` is a wg-quick(8) key, not a wg(8) one: remove it, or strip the file with `wg-quick strip`")]
    WgQuickKey(&'static str),
    /// `Key =` with nothing after it.
    #[error("`{0}` has no value")]
    MissingValue(&'static str),
    /// A key that is not 32 bytes of base64.
    #[error("invalid key `{0}`: not 32 bytes of base64")]
    InvalidKey(&'static str),
    /// A `ListenPort` that is not a number 0-65535.
    #[error("invalid ListenPort `{0}`: not a port number 0-65535")]
    InvalidListenPort(String),
    /// An `FwMark` that is not `off` or 0-0xffffffff.
    #[error("invalid FwMark `{0}`: neither off nor 0-0xffffffff")]
    InvalidFwMark(String),
    /// A `PersistentKeepalive` that is not `off` or 0-65535.
    #[error("invalid PersistentKeepalive `{0}`: neither off nor 0-65535")]
    InvalidKeepalive(String),
    /// An `Endpoint` that is not `host:port` / `[v6]:port`, or whose host does not resolve.
    #[error("invalid Endpoint `{value}`: {reason}")]
    InvalidEndpoint {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// An `AllowedIPs` entry that is not an address with an optional prefix length.
    #[error("invalid AllowedIPs entry `{0}`: expected an IPv4 or IPv6 address with an optional /prefix length")]
    InvalidAllowedIp(String),
    /// A `[Peer]` section without a `PublicKey` (reported at its header line).
    #[error("[Peer] section has no PublicKey")]
    MissingPublicKey,
    /// A `PublicKey` already used by an earlier peer.
    #[error("PublicKey `{key}` is already used by the peer whose PublicKey is at line {first_line}")]
    DuplicatePeer {
        /// The key, base64.
        key: String,
        /// The line of the earlier peer's `PublicKey`.
        first_line: usize,
    },
}

/// wg-quick(8)'s `[Interface]` keys, which wg(8) refuses.
const WG_QUICK_KEYS: [&str; 9] =
    ["Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    Interface,
    Peer,
}

/// A peer being read, with the line of its `[Peer]` header.
struct PendingPeer {
    line: usize,
    /// The key and the line that set it.
    public_key: Option<([u8; KEY_LEN], usize)>,
    preshared_key: Option<[u8; KEY_LEN]>,
    endpoint: Option<SocketAddr>,
    persistent_keepalive: Option<u16>,
    allowed_ips: Vec<(IpAddr, u8)>,
}

impl Drop for PendingPeer {
    fn drop(&mut self) {
        if let Some(k) = self.preshared_key.as_mut() {
            k.zeroize();
        }
    }
}

impl InterfaceConfig {
    /// Parse a wg.conf(5) file; `resolve(host, port)` turns an endpoint host that is not an IP
    /// literal into an address (wg(8) takes the resolver's first answer) or says why it cannot.
    pub fn parse_with_resolver(
        text: &str,
        mut resolve: impl FnMut(&str, u16) -> Result<SocketAddr, String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = InterfaceConfig::default();
        let mut section = Section::None;
        let mut peer: Option<PendingPeer> = None;
        // Public key -> line of its `PublicKey`, to refuse duplicates.
        let mut seen: HashMap<[u8; KEY_LEN], usize> = HashMap::new();
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let err = |kind| ConfigError { line: line_no, kind };
            let content = raw.split('#').next().unwrap_or("");
            let line: Zeroizing<String> = Zeroizing::new(content.chars().filter(|c| !is_space(*c)).collect());
            if line.is_empty() {
                continue;
            }
            if line.starts_with('[') {
                if line.eq_ignore_ascii_case("[Interface]") {
                    section = Section::Interface;
                } else if line.eq_ignore_ascii_case("[Peer]") {
                    finish_peer(&mut cfg, &mut seen, peer.take())?;
                    section = Section::Peer;
                    peer = Some(PendingPeer {
                        line: line_no,
                        public_key: None,
                        preshared_key: None,
                        endpoint: None,
                        persistent_keepalive: None,
                        allowed_ips: Vec::new(),
                    });
                } else {
                    return Err(err(ConfigErrorKind::UnknownSection(line.to_string())));
                }
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(ConfigErrorKind::NotKeyValue));
            };
            if let Some(q) = WG_QUICK_KEYS.iter().find(|q| q.eq_ignore_ascii_case(key)) {
                return Err(err(ConfigErrorKind::WgQuickKey(q)));
            }
            let known = |name: &'static str| key.eq_ignore_ascii_case(name).then_some(name);
            match (section, &mut peer) {
                (Section::None, _) => return Err(err(ConfigErrorKind::OutsideSection(key.to_string()))),
                (Section::Interface, _) => {
                    if let Some(k) = known("PrivateKey") {
                        cfg.private_key = Some(parse_key(k, value).map_err(err)?);
                    } else if let Some(k) = known("ListenPort") {
                        let v = nonempty(k, value).map_err(err)?;
                        cfg.listen_port = Some(
                            parse_decimal(v, u16::MAX.into())
                                .ok_or_else(|| err(ConfigErrorKind::InvalidListenPort(v.to_string())))?
                                as u16,
                        );
                    } else if let Some(k) = known("FwMark") {
                        let v = nonempty(k, value).map_err(err)?;
                        cfg.fwmark =
                            Some(parse_fwmark(v).ok_or_else(|| err(ConfigErrorKind::InvalidFwMark(v.to_string())))?);
                    } else {
                        return Err(err(ConfigErrorKind::UnknownKey { key: key.to_string(), section: "Interface" }));
                    }
                }
                (Section::Peer, Some(p)) => {
                    if let Some(k) = known("PublicKey") {
                        p.public_key = Some((parse_key(k, value).map_err(err)?, line_no));
                    } else if let Some(k) = known("PresharedKey") {
                        p.preshared_key = Some(parse_key(k, value).map_err(err)?);
                    } else if let Some(k) = known("Endpoint") {
                        let v = nonempty(k, value).map_err(err)?;
                        p.endpoint = Some(parse_endpoint(v, &mut resolve).map_err(err)?);
                    } else if let Some(k) = known("PersistentKeepalive") {
                        let v = nonempty(k, value).map_err(err)?;
                        let secs =
                            if v.eq_ignore_ascii_case("off") { Some(0) } else { parse_decimal(v, u16::MAX.into()) };
                        p.persistent_keepalive =
                            Some(secs.ok_or_else(|| err(ConfigErrorKind::InvalidKeepalive(v.to_string())))? as u16);
                    } else if let Some(k) = known("AllowedIPs") {
                        let v = nonempty(k, value).map_err(err)?;
                        for entry in v.split(',') {
                            p.allowed_ips.push(
                                parse_allowed_ip(entry)
                                    .ok_or_else(|| err(ConfigErrorKind::InvalidAllowedIp(entry.to_string())))?,
                            );
                        }
                    } else {
                        return Err(err(ConfigErrorKind::UnknownKey { key: key.to_string(), section: "Peer" }));
                    }
                }
                (Section::Peer, None) => return Err(err(ConfigErrorKind::OutsideSection(key.to_string()))),
            }
        }
        finish_peer(&mut cfg, &mut seen, peer.take())?;
        Ok(cfg)
    }

    /// The configuration as `wg showconf` prints it (keys in base64, IPv6 endpoints in
    /// brackets, `AllowedIPs` on one line). Contains the private key.
    pub fn to_wg_conf(&self) -> String {
        use fmt::Write as _;
        let mut s = String::from("[Interface]\n");
        if let Some(p) = self.listen_port.filter(|&p| p != 0) {
            let _ = writeln!(s, "ListenPort = {p}");
        }
        if let Some(m) = self.fwmark.filter(|&m| m != 0) {
            let _ = writeln!(s, "FwMark = 0x{m:x}");
        }
        if let Some(k) = &self.private_key {
            let _ = writeln!(s, "PrivateKey = {}", b64(k));
        }
        for p in &self.peers {
            let _ = write!(s, "\n[Peer]\nPublicKey = {}\n", b64(&p.public_key));
            if let Some(k) = p.preshared_key.as_ref().filter(|k| !Secret(**k).is_zero()) {
                let _ = writeln!(s, "PresharedKey = {}", b64(k));
            }
            if !p.allowed_ips.is_empty() {
                let list: Vec<String> = p.allowed_ips.iter().map(|(a, c)| format!("{a}/{c}")).collect();
                let _ = writeln!(s, "AllowedIPs = {}", list.join(", "));
            }
            if let Some(e) = p.endpoint {
                let _ = writeln!(s, "Endpoint = {e}");
            }
            if let Some(k) = p.persistent_keepalive.filter(|&k| k != 0) {
                let _ = writeln!(s, "PersistentKeepalive = {k}");
            }
        }
        s
    }

    /// The UAPI `set` request `wg setconf` sends for this file: the private key (all zeros
    /// when absent, which removes it), listen port and fwmark (0 when absent), `replace_peers`,
    /// then each peer with `replace_allowed_ips` and its prefixes.
    pub fn to_set_request(&self) -> SetRequest {
        SetRequest {
            private_key: Some(Secret(self.private_key.unwrap_or([0; KEY_LEN]))),
            listen_port: Some(self.listen_port.unwrap_or(0)),
            fwmark: Some(self.fwmark.unwrap_or(0)),
            replace_peers: true,
            peers: self
                .peers
                .iter()
                .map(|p| {
                    let mut ops = Vec::with_capacity(4 + p.allowed_ips.len());
                    if let Some(k) = p.preshared_key {
                        ops.push(PeerOp::PresharedKey(Secret(k)));
                    }
                    if let Some(e) = p.endpoint {
                        ops.push(PeerOp::Endpoint(e));
                    }
                    if let Some(k) = p.persistent_keepalive {
                        ops.push(PeerOp::PersistentKeepalive(k));
                    }
                    ops.push(PeerOp::ReplaceAllowedIps);
                    ops.extend(p.allowed_ips.iter().map(|&(a, c)| PeerOp::AllowedIp(a, c)));
                    PeerSet { public_key: p.public_key, ops }
                })
                .collect(),
        }
    }

    /// The UAPI `set` request `wg syncconf` sends for this file to a device that has the peers
    /// `current` (public keys): as [`Self::to_set_request`] but without `replace_peers`, and a
    /// `remove` for each current peer the file does not name. Peers named in both keep their
    /// sessions; their allowed IPs are replaced by the file's.
    pub fn to_sync_request(&self, current: impl IntoIterator<Item = [u8; KEY_LEN]>) -> SetRequest {
        let mut req = self.to_set_request();
        req.replace_peers = false;
        let named: std::collections::HashSet<[u8; KEY_LEN]> = self.peers.iter().map(|p| p.public_key).collect();
        for key in current {
            if !named.contains(&key) {
                req.peers.push(PeerSet { public_key: key, ops: vec![PeerOp::Remove] });
            }
        }
        req
    }
}

/// Parses with no resolver: endpoints must be IP literals; a host name is an error naming it.
impl std::str::FromStr for InterfaceConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Self::parse_with_resolver(s, |_, _| Err("no resolver (endpoints must be IP addresses here)".into()))
    }
}

/// wireguard-tools `char_is_space`: the C locale's `isspace`.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

fn b64(k: &[u8; KEY_LEN]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn nonempty<'a>(key: &'static str, value: &'a str) -> Result<&'a str, ConfigErrorKind> {
    if value.is_empty() {
        Err(ConfigErrorKind::MissingValue(key))
    } else {
        Ok(value)
    }
}

/// A base64 key: exactly 44 characters ending in `=`, canonical (wireguard-tools
/// `key_from_base64`).
fn parse_key(name: &'static str, value: &str) -> Result<[u8; KEY_LEN], ConfigErrorKind> {
    nonempty(name, value)?;
    let bad = ConfigErrorKind::InvalidKey(name);
    if value.len() != 44 || !value.ends_with('=') {
        return Err(bad);
    }
    let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(value).map_err(|_| bad.clone())?);
    let mut key = [0u8; KEY_LEN];
    if bytes.len() != KEY_LEN {
        return Err(bad);
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Decimal digits only (no sign, no spaces), at most `max`.
fn parse_decimal(v: &str, max: u64) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().filter(|&n| n <= max)
}

/// wireguard-tools `parse_fwmark`: `off`, decimal, or `0x` hexadecimal.
fn parse_fwmark(v: &str) -> Option<u32> {
    if v.eq_ignore_ascii_case("off") {
        return Some(0);
    }
    let n = match v.strip_prefix("0x") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None => parse_decimal(v, u64::MAX)?,
    };
    u32::try_from(n).ok()
}

/// wireguard-tools `parse_endpoint`: `[host]:port` or `host:port` split at the last colon; an
/// IP literal is used as is, anything else goes to the resolver.
fn parse_endpoint(
    v: &str,
    resolve: &mut impl FnMut(&str, u16) -> Result<SocketAddr, String>,
) -> Result<SocketAddr, ConfigErrorKind> {
    let bad = |reason: &str| ConfigErrorKind::InvalidEndpoint { value: v.to_string(), reason: reason.to_string() };
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing `]`"))?;
        (host, after.strip_prefix(':').ok_or_else(|| bad("no port"))?)
    } else {
        v.rsplit_once(':').ok_or_else(|| bad("no port"))?
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = parse_decimal(port, u16::MAX.into()).ok_or_else(|| bad("the port is not a number 0-65535"))? as u16;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    resolve(host, port).map_err(|e| bad(&format!("cannot resolve `{host}`: {e}")))
}

/// One `AllowedIPs` entry: an address (IPv6 if it has a colon) with an optional `/cidr`.
fn parse_allowed_ip(entry: &str) -> Option<(IpAddr, u8)> {
    let (ip, mask) = match entry.split_once('/') {
        Some((ip, mask)) => (ip, Some(mask)),
        None => (entry, None),
    };
    let addr: IpAddr = if ip.contains(':') {
        IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?)
    } else {
        IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?)
    };
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let cidr = match mask {
        Some(m) => parse_decimal(m, max.into())? as u8,
        None => max,
    };
    Some((addr, cidr))
}

/// Close a `[Peer]` section: it must have a public key no earlier peer has.
fn finish_peer(
    cfg: &mut InterfaceConfig,
    seen: &mut HashMap<[u8; KEY_LEN], usize>,
    peer: Option<PendingPeer>,
) -> Result<(), ConfigError> {
    let Some(mut p) = peer else { return Ok(()) };
    let Some((public_key, key_line)) = p.public_key else {
        return Err(ConfigError { line: p.line, kind: ConfigErrorKind::MissingPublicKey });
    };
    if let Some(&first_line) = seen.get(&public_key) {
        return Err(ConfigError {
            line: key_line,
            kind: ConfigErrorKind::DuplicatePeer { key: b64(&public_key), first_line },
        });
    }
    seen.insert(public_key, key_line);
    cfg.peers.push(PeerConfig {
        public_key,
        preshared_key: p.preshared_key.take(),
        endpoint: p.endpoint,
        persistent_keepalive: p.persistent_keepalive,
        allowed_ips: std::mem::take(&mut p.allowed_ips),
    });
    Ok(())
}

#[cfg(test)]
mod tests;
