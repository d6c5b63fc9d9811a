//! The UAPI server on a real unix socket: first with raw requests in a private directory, then
//! with the stock `wg` tool (wireguard-tools) against /var/run/wireguard, as an operator would
//! use it. scripts/test.sh installs wireguard-tools; without `wg` the second test fails.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use wgpmd::uapi_server::{ServerError, UapiHandler, UapiServer, SOCKET_DIR};
use wgpmd_proto::crypto::PrivateKey;
use wgpmd_proto::device::{Device, Output};
use wgpmd_proto::time::Timestamp;
use wgpmd_proto::uapi::{apply_set, format_get, InterfaceState, SetRequest, UapiError};

/// A device behind a mutex, as the daemon will hold it.
struct State {
    dev: Device,
    iface: InterfaceState,
    rng: ChaCha20Rng,
    out: Output,
}

#[derive(Clone)]
struct Handler(Arc<Mutex<State>>);

impl UapiHandler for Handler {
    fn get(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let s = self.0.lock().unwrap();
        out.write_all(
            format_get(&s.dev, &s.iface, |t| {
                (1_700_000_000 + t.as_nanos() / 1_000_000_000, (t.as_nanos() % 1_000_000_000) as u32)
            })
            .as_bytes(),
        )
    }
    fn set(&self, req: SetRequest) -> Result<(), UapiError> {
        let mut s = self.0.lock().unwrap();
        let State { dev, iface, rng, out } = &mut *s;
        apply_set(dev, iface, &req, rng, Timestamp::from_secs(1), out)
    }
}

const PRIV: [u8; 32] = [0x11; 32];

fn handler() -> Handler {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut dev = Device::new(&mut rng, 1_700_000_000_000_000_000);
    dev.set_private_key(Some(PrivateKey::from_bytes(PRIV)));
    Handler(Arc::new(Mutex::new(State {
        dev,
        iface: InterfaceState { listen_port: 51820, fwmark: 0 },
        rng,
        out: Output::default(),
    })))
}

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn request(path: &Path, req: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(req).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgpmd-uapi-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn raw_requests_on_the_socket() {
    let dir = temp_dir("raw").join("wireguard");
    let h = handler();
    let server = UapiServer::bind_in(&dir, "wgtest0", h.clone()).unwrap();
    let path = dir.join("wgtest0.sock");
    assert_eq!(server.path(), path);
    let md = std::fs::symlink_metadata(&path).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary directory left behind");

    // `wg`'s liveness probe: connect, send nothing, close. The server carries on.
    drop(UnixStream::connect(&path).unwrap());
    let own_pub = PrivateKey::from_bytes(PRIV).public_key();
    let get = request(&path, b"get=1\n\n");
    assert_eq!(get, format!("private_key={}\nlisten_port=51820\nerrno=0\n\n", hex(&PRIV)));

    let peer = [0x22u8; 32];
    let ok = format!("set=1\npublic_key={}\nallowed_ip=10.0.0.2/32\n\n", hex(&peer));
    assert_eq!(request(&path, ok.as_bytes()), "errno=0\n\n");
    let before = request(&path, b"get=1\n\n");
    assert!(
        before.contains(&format!("public_key={}\n", hex(&peer))) && before.contains("allowed_ip=10.0.0.2/32\n"),
        "{before}"
    );
    // Malformed: an error, and nothing changes (the first lines are valid).
    let bad = format!("set=1\nreplace_peers=true\npublic_key={}\nbogus_key=1\n\n", hex(&own_pub));
    assert_eq!(request(&path, bad.as_bytes()), "errno=-22\n\n");
    assert_eq!(request(&path, b"set=1\nlisten_port\n\n"), "errno=-71\n\n");
    assert_eq!(request(&path, b"get=1\n\n"), before);
    // A request sent in pieces, and one cut short by the client closing its side.
    let mut s = UnixStream::connect(&path).unwrap();
    for piece in [&b"se"[..], b"t=1\nlisten_port=5", b"1821\n", b"\n"] {
        s.write_all(piece).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "errno=0\n\n");
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(b"set=1\nfwmark=5\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "errno=0\n\n");
    assert_eq!(h.0.lock().unwrap().iface, InterfaceState { listen_port: 51821, fwmark: 5 });

    // A second server for the same name is refused while this one lives.
    match UapiServer::bind_in(&dir, "wgtest0", handler()) {
        Err(ServerError::InUse(p)) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    server.shutdown();
    assert!(!path.exists(), "shutdown removes the socket");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

/// A `set` over the former 64 MiB cap (700,000 peer sections, about 70 MB) streams through:
/// with a bad line at its very end it changes nothing and answers -22; whole, it applies. A
/// line over 4 KiB is refused the same way.
#[test]
fn requests_of_any_size_stream_and_stay_all_or_nothing() {
    const N: u32 = 700_000;
    let dir = temp_dir("big").join("wireguard");
    let h = handler();
    let server = UapiServer::bind_in(&dir, "wgtest1", h.clone()).unwrap();
    let path = dir.join("wgtest1.sock");
    let mut req = String::with_capacity(N as usize * 104 + 64);
    req.push_str("set=1\n");
    for i in 0..N {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        k[31] = 0x77;
        let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        req.push_str(&format!("public_key={}\nallowed_ip={a}/32\n", hex(&k)));
    }
    assert!(req.len() > 64 << 20, "{} bytes", req.len());
    let bad = format!("{req}listen_port=x\n\n");
    assert_eq!(request(&path, bad.as_bytes()), "errno=-22\n\n");
    assert_eq!(h.0.lock().unwrap().dev.peer_count(), 0, "a bad last line changes nothing");
    let long = format!("set=1\nlisten_port={}\n\n", "1".repeat(5000));
    assert_eq!(request(&path, long.as_bytes()), "errno=-22\n\n");
    req.push('\n');
    assert_eq!(request(&path, req.as_bytes()), "errno=0\n\n");
    let s = h.0.lock().unwrap();
    assert_eq!(s.dev.peer_count(), N as usize);
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&(N - 1).to_le_bytes());
    k[31] = 0x77;
    let last = s.dev.peer_by_key(&k).expect("the last peer");
    assert_eq!(s.dev.route(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + N - 1))), Some(last));
    drop(s);
    server.shutdown();
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn stale_sockets_are_replaced_and_other_files_left_alone() {
    let dir = temp_dir("stale");
    std::fs::create_dir_all(&dir).unwrap();
    // A socket nobody listens on any more (its process died).
    drop(UnixListener::bind(dir.join("wgstale.sock")).unwrap());
    let server = UapiServer::bind_in(&dir, "wgstale", handler()).unwrap();
    assert!(request(server.path(), b"get=1\n\n").ends_with("errno=0\n\n"));
    let path = server.path().to_path_buf();
    drop(server);
    assert!(!path.exists(), "drop removes the socket");

    std::fs::write(dir.join("wgfile.sock"), b"not a socket").unwrap();
    assert!(matches!(UapiServer::bind_in(&dir, "wgfile", handler()), Err(ServerError::NotASocket(_))));
    assert_eq!(std::fs::read(dir.join("wgfile.sock")).unwrap(), b"not a socket");
    for bad in ["", "a/b", "much-too-long-name", ".."] {
        assert!(matches!(UapiServer::bind_in(&dir, bad, handler()), Err(ServerError::InvalidName(_))), "{bad}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn wg(args: &[&str]) -> String {
    let out = Command::new("wg").args(args).output().unwrap_or_else(|e| panic!("cannot run `wg`: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wg {args:?} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn the_stock_wg_tool_drives_the_device() {
    assert!(
        Command::new("wg").arg("--version").output().is_ok(),
        "the `wg` binary (wireguard-tools) is missing: run scripts/test.sh, which installs it (or apt-get install wireguard-tools)"
    );
    let name = format!("wgpt{}", std::process::id());
    let h = handler();
    let server = UapiServer::bind(&name, h.clone())
        .unwrap_or_else(|e| panic!("cannot serve {SOCKET_DIR}/{name}.sock (root needed): {e}"));
    let own_pub = PrivateKey::from_bytes(PRIV).public_key();

    let show = wg(&["show", &name]);
    for line in [
        format!("interface: {name}"),
        format!("public key: {}", b64(&own_pub)),
        "private key: (hidden)".into(),
        "listening port: 51820".into(),
    ] {
        assert!(show.contains(&line), "missing {line:?} in:\n{show}");
    }

    let peer = [0x33u8; 32];
    wg(&["set", &name, "peer", &b64(&peer), "allowed-ips", "10.0.0.2/32", "persistent-keepalive", "5"]);
    {
        let s = h.0.lock().unwrap();
        let id = s.dev.peer_by_key(&peer).expect("wg set created the peer");
        assert_eq!(s.dev.peer(id).unwrap().persistent_keepalive(), 5);
        assert_eq!(s.dev.allowed_ips(id).collect::<Vec<_>>(), vec![("10.0.0.2".parse::<IpAddr>().unwrap(), 32)]);
    }
    let showconf = wg(&["showconf", &name]);
    assert_eq!(
        showconf,
        format!("[Interface]\nListenPort = 51820\nPrivateKey = {}\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 10.0.0.2/32\nPersistentKeepalive = 5\n", b64(&PRIV), b64(&peer))
    );
    let cfg = wgpmd::conf::parse(&showconf).unwrap();
    assert_eq!(cfg.to_wg_conf(), showconf, "our writer prints what wg prints");

    // setconf: the peer above is replaced; endpoints, PSKs and IPv6 go through wg's encoding.
    let other = [0x44u8; 32];
    let conf = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51999\nFwMark = 0x20\n\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = [fd00::9]:51820\nAllowedIPs = 10.0.1.0/24, fd00:1::/64\n",
        b64(&PRIV),
        b64(&other),
        b64(&[0x55; 32])
    );
    let file = temp_dir("conf");
    std::fs::write(&file, &conf).unwrap();
    wg(&["setconf", &name, file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    {
        let s = h.0.lock().unwrap();
        assert_eq!(s.iface, InterfaceState { listen_port: 51999, fwmark: 0x20 });
        assert_eq!(s.dev.peer_count(), 1);
        let id = s.dev.peer_by_key(&other).unwrap();
        assert_eq!(s.dev.peer(id).unwrap().preshared_key().0, [0x55; 32]);
        assert_eq!(s.dev.peer(id).unwrap().endpoint(), Some("[fd00::9]:51820".parse().unwrap()));
    }
    let back = wgpmd::conf::parse(&wg(&["showconf", &name])).unwrap();
    assert_eq!(back, wgpmd::conf::parse(&conf).unwrap());

    wg(&["set", &name, "peer", &b64(&other), "remove"]);
    assert_eq!(h.0.lock().unwrap().dev.peer_count(), 0);
    let path = server.path().to_path_buf();
    drop(server);
    assert!(!path.exists());
}
