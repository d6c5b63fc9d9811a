//! Userspace WireGuard peers (wireguard-go, boringtun-cli) driven through their UAPI socket with
//! the stock `wg` tool, and a parser for `wg show <if> dump`.

use crate::ctx::Ctx;
use crate::keys::KeyPair;
use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{host, secs, unique_ifname, wait_until};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

/// Directory of the UAPI sockets. It is a plain directory, shared by all network namespaces:
/// interface names of userspace WireGuard must be unique on the machine ([`unique_ifname`]).
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// One `[Peer]` section of a wg(8) configuration.
#[derive(Clone, Debug, Default)]
pub struct PeerConfig {
    /// Base64 public key.
    pub public_key: String,
    /// Base64 pre-shared key.
    pub preshared_key: Option<String>,
    pub endpoint: Option<SocketAddr>,
    /// CIDRs, e.g. `10.100.0.2/32`.
    pub allowed_ips: Vec<String>,
    pub persistent_keepalive: Option<u16>,
}

impl PeerConfig {
    pub fn new(public_key: &str, allowed_ips: &[&str]) -> PeerConfig {
        PeerConfig {
            public_key: public_key.to_string(),
            allowed_ips: allowed_ips.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn endpoint(mut self, ep: SocketAddr) -> Self {
        self.endpoint = Some(ep);
        self
    }

    pub fn keepalive(mut self, secs: u16) -> Self {
        self.persistent_keepalive = Some(secs);
        self
    }

    pub fn psk(mut self, psk_b64: &str) -> Self {
        self.preshared_key = Some(psk_b64.to_string());
        self
    }
}

/// Everything needed to bring up one userspace WireGuard interface.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub key: KeyPair,
    pub listen_port: Option<u16>,
    /// Inner address with prefix, e.g. `10.100.0.10/24`; None: no address.
    pub address: Option<String>,
    /// 1420 like wireguard-go and wg-quick (boringtun-cli would default to 1500).
    pub mtu: u32,
    pub peers: Vec<PeerConfig>,
}

impl DeviceConfig {
    pub fn new(key: KeyPair, listen_port: Option<u16>, address: Option<&str>) -> DeviceConfig {
        DeviceConfig { key, listen_port, address: address.map(str::to_string), mtu: 1420, peers: vec![] }
    }

    pub fn peer(mut self, p: PeerConfig) -> Self {
        self.peers.push(p);
        self
    }

    /// The configuration in the format of `wg setconf` (wg(8) CONFIGURATION FILE FORMAT:
    /// no Address/MTU, which are wg-quick's).
    pub fn to_setconf(&self) -> String {
        let mut s = String::from("[Interface]\n");
        let _ = writeln!(s, "PrivateKey = {}", self.key.private_b64());
        if let Some(p) = self.listen_port {
            let _ = writeln!(s, "ListenPort = {p}");
        }
        for p in &self.peers {
            let _ = writeln!(s, "\n[Peer]\nPublicKey = {}", p.public_key);
            if let Some(psk) = &p.preshared_key {
                let _ = writeln!(s, "PresharedKey = {psk}");
            }
            if !p.allowed_ips.is_empty() {
                let _ = writeln!(s, "AllowedIPs = {}", p.allowed_ips.join(", "));
            }
            if let Some(ep) = p.endpoint {
                let _ = writeln!(s, "Endpoint = {ep}");
            }
            if let Some(k) = p.persistent_keepalive {
                let _ = writeln!(s, "PersistentKeepalive = {k}");
            }
        }
        s
    }
}

/// Which userspace implementation runs a [`WgDevice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgImpl {
    /// `wireguard-go -f <if>` (Debian package wireguard-go), env LOG_LEVEL=verbose.
    WireguardGo,
    /// `boringtun-cli -f --disable-drop-privileges -v info -t 2 <if>` (see [`crate::boringtun_cli`]).
    Boringtun,
}

/// A userspace WireGuard interface in a namespace: the daemon ([`Proc`], log `<ifname>.log`),
/// its TUN interface, its UAPI socket. Dropping it stops the daemon and removes the socket if
/// the daemon left it behind.
pub struct WgDevice {
    kind: WgImpl,
    ns: Netns,
    ifname: String,
    key: KeyPair,
    conf_path: PathBuf,
    proc: Proc,
}

impl WgDevice {
    /// Starts the daemon in `ns`, waits for its UAPI socket and TUN interface, applies `cfg` with
    /// `wg setconf`, sets the MTU and the address and brings the interface up.
    pub fn start(ctx: &Ctx, kind: WgImpl, ns: &Netns, cfg: &DeviceConfig) -> Result<WgDevice> {
        let ifname = unique_ifname(match kind {
            WgImpl::WireguardGo => "wgo",
            WgImpl::Boringtun => "wbt",
        });
        let bt;
        let (args, envs): (Vec<&str>, Vec<(&str, &str)>) = match kind {
            WgImpl::WireguardGo => (vec!["wireguard-go", "-f", &ifname], vec![("LOG_LEVEL", "verbose")]),
            WgImpl::Boringtun => {
                bt = crate::tools::boringtun_cli().to_string_lossy().into_owned();
                (
                    vec![&bt, "-f", "--disable-drop-privileges", "-v", "info", "-t", "2", &ifname],
                    vec![("NO_COLOR", "1")], // plain log lines, no ANSI colours
                )
            }
        };
        let proc = Proc::spawn(ctx, ns, &ifname, &args, &envs)?;
        let mut dev = WgDevice {
            kind,
            ns: ns.clone(),
            conf_path: ctx.dir().join(format!("{ifname}.conf")),
            ifname,
            key: cfg.key.clone(),
            proc,
        };
        let sock = dev.uapi_socket();
        let ifname = dev.ifname.clone();
        let ns2 = ns.clone();
        wait_until(&format!("{kind:?} {ifname}: UAPI socket {} and TUN", sock.display()), secs(30), || {
            dev.proc.ensure_running()?;
            Ok((sock.exists() && ns2.has_link(&ifname)).then_some(()))
        })
        .with_context(|| format!("log of {ifname}:\n{}", dev.proc.log_tail(30)))?;
        dev.setconf(cfg)?;
        dev.ns.ip(&["link", "set", "dev", &dev.ifname, "mtu", &cfg.mtu.to_string()])?;
        if let Some(addr) = &cfg.address {
            dev.ns.ip(&["addr", "add", addr, "dev", &dev.ifname])?;
        }
        dev.ns.ip(&["link", "set", "dev", &dev.ifname, "up"])?;
        Ok(dev)
    }

    /// Replaces the whole configuration (`wg setconf`: also resets the peers' sessions, which
    /// forces a new handshake). The private key of `cfg` becomes this device's key.
    pub fn setconf(&mut self, cfg: &DeviceConfig) -> Result<()> {
        crate::util::write_private(&self.conf_path, &cfg.to_setconf())?;
        self.key = cfg.key.clone();
        self.wg(&["setconf", &self.ifname, &self.conf_path.to_string_lossy()])
            .with_context(|| format!("log of {}:\n{}", self.ifname, self.proc.log_tail(20)))?;
        Ok(())
    }

    /// Runs `wg args...` inside the device's namespace, returns stdout.
    pub fn wg(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["wg"];
        v.extend_from_slice(args);
        self.ns.run(&v)
    }

    /// `wg show <if> dump`, parsed.
    pub fn show(&self) -> Result<WgShow> {
        wg_show(&self.ifname)
    }

    pub fn kind(&self) -> WgImpl {
        self.kind
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn key(&self) -> &KeyPair {
        &self.key
    }

    pub fn public_key(&self) -> String {
        self.key.public_b64()
    }

    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("{UAPI_DIR}/{}.sock", self.ifname))
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn proc_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Fails, with the end of the daemon's log, if the daemon has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.proc.ensure_running()
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        self.proc.stop();
        // Our interface name is unique: a socket left by a killed daemon is ours to remove.
        let _ = std::fs::remove_file(self.uapi_socket());
    }
}

impl std::fmt::Debug for WgDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgDevice({:?} {} in {})", self.kind, self.ifname, self.ns)
    }
}

/// A wireguard-go peer: a [`WgDevice`] of kind [`WgImpl::WireguardGo`].
#[derive(Debug)]
pub struct WgGo(pub WgDevice);

impl WgGo {
    /// `wireguard-go -f <unique ifname>` in `ns` (LOG_LEVEL=verbose), configured from `cfg`.
    pub fn start(ctx: &Ctx, ns: &Netns, cfg: &DeviceConfig) -> Result<WgGo> {
        WgDevice::start(ctx, WgImpl::WireguardGo, ns, cfg).map(WgGo)
    }
}

/// A boringtun-cli peer: a [`WgDevice`] of kind [`WgImpl::Boringtun`]. Its UAPI `get` differs
/// from wireguard-go's: no interface private/public key in `wg show`, and its latest handshake
/// is the time elapsed, not a Unix time (see [`WgShowPeer::latest_handshake`]).
#[derive(Debug)]
pub struct BoringtunPeer(pub WgDevice);

impl BoringtunPeer {
    /// `boringtun-cli -f --disable-drop-privileges <unique ifname>` in `ns`, configured from `cfg`.
    pub fn start(ctx: &Ctx, ns: &Netns, cfg: &DeviceConfig) -> Result<BoringtunPeer> {
        WgDevice::start(ctx, WgImpl::Boringtun, ns, cfg).map(BoringtunPeer)
    }
}

macro_rules! deref_device {
    ($t:ty) => {
        impl Deref for $t {
            type Target = WgDevice;
            fn deref(&self) -> &WgDevice {
                &self.0
            }
        }
        impl DerefMut for $t {
            fn deref_mut(&mut self) -> &mut WgDevice {
                &mut self.0
            }
        }
    };
}
deref_device!(WgGo);
deref_device!(BoringtunPeer);

/// `wg show <if> dump`, parsed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WgShow {
    /// Base64; None when the daemon does not report it (`(none)`, as with boringtun).
    pub private_key: Option<String>,
    pub public_key: Option<String>,
    pub listen_port: Option<u16>,
    pub fwmark: Option<u32>,
    pub peers: Vec<WgShowPeer>,
}

/// One peer line of `wg show <if> dump`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WgShowPeer {
    pub public_key: String,
    pub preshared_key: Option<String>,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<String>,
    /// Seconds as wg prints them: 0 = never. A Unix time for wireguard-go (and wg(4)); the
    /// seconds *elapsed* since the handshake for boringtun-cli 0.7.
    pub latest_handshake: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub persistent_keepalive: Option<u16>,
}

impl WgShow {
    pub fn peer(&self, public_key_b64: &str) -> Option<&WgShowPeer> {
        self.peers.iter().find(|p| p.public_key == public_key_b64)
    }

    /// Parses the output of `wg show <if> dump` (one interface: no leading interface column).
    /// Interface line: private-key, public-key, listen-port, fwmark. Peer lines: public-key,
    /// preshared-key, endpoint, allowed-ips, latest-handshake, transfer-rx, transfer-tx,
    /// persistent-keepalive.
    pub fn parse_dump(text: &str) -> Result<WgShow> {
        fn opt(s: &str) -> Option<String> {
            (s != "(none)" && s != "off" && !s.is_empty()).then(|| s.to_string())
        }
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().context("empty `wg show dump` output")?;
        let f: Vec<&str> = first.split('\t').collect();
        if f.len() != 4 {
            bail!("interface line of `wg show dump` has {} fields, not 4: {first:?}", f.len());
        }
        let mut show = WgShow {
            private_key: opt(f[0]),
            public_key: opt(f[1]),
            listen_port: f[2].parse().ok().filter(|p| *p != 0),
            fwmark: opt(f[3]).and_then(|s| parse_u32_maybe_hex(&s)),
            peers: vec![],
        };
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 8 {
                bail!("peer line of `wg show dump` has {} fields, not 8: {line:?}", f.len());
            }
            show.peers.push(WgShowPeer {
                public_key: f[0].to_string(),
                preshared_key: opt(f[1]),
                endpoint: opt(f[2]).map(|s| s.parse()).transpose().with_context(|| format!("endpoint in {line:?}"))?,
                allowed_ips: opt(f[3])
                    .map(|s| s.split(',').map(|a| a.trim().to_string()).collect())
                    .unwrap_or_default(),
                latest_handshake: f[4].parse().with_context(|| format!("handshake in {line:?}"))?,
                rx_bytes: f[5].parse().with_context(|| format!("rx in {line:?}"))?,
                tx_bytes: f[6].parse().with_context(|| format!("tx in {line:?}"))?,
                persistent_keepalive: opt(f[7]).and_then(|s| s.parse().ok()),
            });
        }
        Ok(show)
    }
}

fn parse_u32_maybe_hex(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `wg show <ifname> dump`, parsed. The UAPI socket is a file, so this works from the host
/// namespace for an interface in any namespace.
pub fn wg_show(ifname: &str) -> Result<WgShow> {
    WgShow::parse_dump(&host(&["wg", "show", ifname, "dump"])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wireguard_go_dump() {
        let text = "aGVsbG8=\tcHVi\t51820\toff\n\
                    UGVlcg==\t(none)\t10.99.0.2:51820\t10.100.0.2/32,fd00::2/128\t1764078000\t1234\t5678\t5\n\
                    UGVlcjI=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let s = WgShow::parse_dump(text).unwrap();
        assert_eq!(s.private_key.as_deref(), Some("aGVsbG8="));
        assert_eq!(s.listen_port, Some(51820));
        assert_eq!(s.fwmark, None);
        assert_eq!(s.peers.len(), 2);
        let p = s.peer("UGVlcg==").unwrap();
        assert_eq!(p.endpoint, Some("10.99.0.2:51820".parse().unwrap()));
        assert_eq!(p.allowed_ips, vec!["10.100.0.2/32", "fd00::2/128"]);
        assert_eq!((p.latest_handshake, p.rx_bytes, p.tx_bytes), (1764078000, 1234, 5678));
        assert_eq!(p.persistent_keepalive, Some(5));
        let q = s.peer("UGVlcjI=").unwrap();
        assert_eq!((q.endpoint, q.allowed_ips.len(), q.persistent_keepalive), (None, 0, None));
    }

    #[test]
    fn parses_boringtun_style_dump_and_rejects_garbage() {
        let s = WgShow::parse_dump("(none)\t(none)\t51820\t0x1f\n").unwrap();
        assert_eq!((s.private_key, s.public_key, s.fwmark), (None, None, Some(31)));
        assert!(WgShow::parse_dump("").is_err());
        assert!(WgShow::parse_dump("a\tb\n").is_err());
        assert!(WgShow::parse_dump("a\tb\t1\toff\nx\ty\n").is_err());
    }

    #[test]
    fn setconf_format() {
        let k = KeyPair::from_private([1; 32]);
        let cfg = DeviceConfig::new(k.clone(), Some(51820), Some("10.100.0.1/24")).peer(
            PeerConfig::new("UGVlcg==", &["10.100.0.2/32", "10.100.1.0/24"])
                .endpoint("10.99.0.2:51820".parse().unwrap())
                .keepalive(25),
        );
        let text = cfg.to_setconf();
        assert!(text.starts_with(&format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\n", k.private_b64())));
        assert!(text.contains("[Peer]\nPublicKey = UGVlcg==\nAllowedIPs = 10.100.0.2/32, 10.100.1.0/24\nEndpoint = 10.99.0.2:51820\nPersistentKeepalive = 25\n"));
        assert!(!text.contains("Address"));
    }
}
