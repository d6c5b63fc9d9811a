//! QEMU 7.2's message order, made acceptable to the `vhost` crate's request loop.
//!
//! QEMU 7.2's virtio-net sends `SET_VRING_ENABLE` while the guest's driver negotiates its
//! features (`virtio_net_set_features` → `peer_attach` → `vhost_set_vring_enable`), and when it
//! starts the device (`vhost_net_start` restores that state), both before `SET_FEATURES`; it
//! sends none after. The vhost-user spec says the message needs `VHOST_USER_F_PROTOCOL_FEATURES`
//! negotiated, and the `vhost` crate's request loop checks that against the *acked* features
//! before it calls any handler: it fails, and `vhost-user-backend` ends the connection. Without
//! offering the feature, QEMU 7.2 refuses to start the device.
//!
//! So the frontend's socket is relayed to the crate's request loop, message by message with
//! their file descriptors: a `SET_VRING_ENABLE` that arrives before `SET_FEATURES` is held back
//! (acked at once if the frontend asked for a reply) and delivered right after `SET_FEATURES`,
//! where it has the meaning QEMU gives it. Everything else passes unchanged (the crate parses
//! and checks it); the crate's replies go back as they are, whole messages written one at a
//! time under the one lock the acks take too.
//!
//! The crate's end is a connection of our own: a socket bound in a fresh directory only
//! wgpmd's user may enter, connected to and unlinked at once, and accepted by the crate; if
//! anything else is found connected to it, the connection is refused.

use std::io::{IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;

const HDR_LEN: usize = 12;
/// The largest message body relayed (the memory table with its 8 regions is 200 bytes; the
/// largest known messages are well under 4 KiB).
const MAX_BODY: usize = 4096;
use crate::sys::fdpass::{is_truncated, recv_with_fds, MAX_FDS};
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
/// The two requests after which `vhost-user-backend` forgets the acked features (a new
/// negotiation follows, in QEMU 7.2's order again).
const RESET_OWNER: u32 = 4;
const RESET_DEVICE: u32 = 34;
const FLAG_VERSION_MASK: u32 = 0x3;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Messages held back at most (QEMU 7.2 sends about ten for one queue pair).
const MAX_HELD: usize = 256;

/// Starts `daemon`'s request loop on a connection of ours and returns our end of it.
pub(super) fn start_handler(daemon: &mut VhostUserDaemon<super::NetBackend>) -> Result<UnixStream, String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "wgpmd-vhost-user-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("s");
    let bound = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()));
    let ours = bound.as_ref().ok().map(|_| UnixStream::connect(&path));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    let l = bound?;
    let ours = ours.ok_or("no connection")?.map_err(|e| format!("connecting to the request loop: {e}"))?;
    let mut l = Listener::from(l);
    daemon.start(&mut l).map_err(|e| format!("starting the request loop: {e}"))?;
    // Only our connection may have been waiting: anything else, and the crate may have
    // accepted that instead of ours.
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    if let Ok(Some(_)) = l.accept() {
        daemon.request_shutdown();
        let _ = daemon.wait();
        return Err("another process connected to the request loop's socket".into());
    }
    Ok(ours)
}

/// Why the relay of the frontend's messages ended.
enum End {
    /// The frontend broke the protocol's framing (counted as a protocol error).
    Frontend(String),
    /// A socket closed or failed (either side): the connection just ends.
    Closed(String),
}

/// The two relay threads of a connection; each shuts both sockets down when its side ends, so
/// that the other ends too. `on_error` gets the frontend's framing errors. Both threads write to
/// the frontend (the request loop's replies, and the acks of held messages): whole messages,
/// one at a time, through one lock, so that they never interleave.
pub(super) fn spawn(
    front: UnixStream,
    handler: UnixStream,
    on_error: impl FnOnce(String) + Send + 'static,
) -> Result<Vec<std::thread::JoinHandle<()>>, String> {
    let clone = |s: &UnixStream| s.try_clone().map_err(|e| e.to_string());
    let (f2, h2, f3) = (clone(&front)?, clone(&handler)?, clone(&front)?);
    let writer = Arc::new(Mutex::new(clone(&front)?));
    let w2 = Arc::clone(&writer);
    let a = std::thread::Builder::new()
        .name("wgpmd-vhu-relay".into())
        .spawn(move || {
            match frontend_to_handler(&front, &handler, &writer) {
                Ok(()) => {}
                Err(End::Frontend(e)) => on_error(e),
                Err(End::Closed(e)) => tracing::debug!("vhost-user relay: {e}"),
            }
            let _ = front.shutdown(Shutdown::Both);
            let _ = handler.shutdown(Shutdown::Both);
        })
        .map_err(|e| e.to_string())?;
    let b = std::thread::Builder::new().name("wgpmd-vhu-relay".into()).spawn(move || {
        handler_to_frontend(&h2, &w2);
        let _ = f2.shutdown(Shutdown::Both);
        let _ = h2.shutdown(Shutdown::Both);
    });
    match b {
        Ok(b) => Ok(vec![a, b]),
        Err(e) => {
            let _ = f3.shutdown(Shutdown::Both);
            let _ = a.join();
            Err(e.to_string())
        }
    }
}

struct Msg {
    bytes: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Msg {
    fn word(&self, i: usize) -> u32 {
        u32::from_le_bytes([self.bytes[4 * i], self.bytes[4 * i + 1], self.bytes[4 * i + 2], self.bytes[4 * i + 3]])
    }
    fn request(&self) -> u32 {
        self.word(0)
    }
    fn flags(&self) -> u32 {
        self.word(1)
    }
    fn set_flags(&mut self, f: u32) {
        self.bytes[4..8].copy_from_slice(&f.to_le_bytes());
    }
}

/// Reads exactly `want` more bytes onto `buf` (collecting descriptors). Ok(false): the peer
/// closed the socket before the first byte of a message.
fn read_exact_fds(sock: &UnixStream, buf: &mut Vec<u8>, want: usize, fds: &mut Vec<OwnedFd>) -> Result<bool, End> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        let n = match recv_with_fds(sock, &mut buf[start + got..], fds) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // More descriptors than one message may carry (those received are closed).
            Err(e) if is_truncated(&e) => return Err(End::Frontend(e.to_string())),
            // Our own shutdown of the socket (the other relay thread, or the daemon) reads as
            // the end; a reset by the frontend too.
            Err(_) if got == 0 && start == 0 => return Ok(false),
            Err(e) => return Err(End::Closed(format!("reading from the frontend: {e}"))),
        };
        if n == 0 {
            if got == 0 && start == 0 {
                return Ok(false);
            }
            return Err(End::Closed("the frontend closed its socket in the middle of a message".into()));
        }
        got += n;
        // Checked on each read: a message split over many reads must not pile up descriptors.
        if fds.len() > MAX_FDS {
            return Err(End::Frontend(format!("a message with {} file descriptors", fds.len())));
        }
    }
    Ok(true)
}

fn read_msg(sock: &UnixStream) -> Result<Option<Msg>, End> {
    let mut bytes = Vec::with_capacity(HDR_LEN + 64);
    let mut fds = Vec::new();
    if !read_exact_fds(sock, &mut bytes, HDR_LEN, &mut fds)? {
        return Ok(None);
    }
    let size = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if size > MAX_BODY {
        return Err(End::Frontend(format!("a message of {size} bytes (more than {MAX_BODY})")));
    }
    if size > 0 {
        read_exact_fds(sock, &mut bytes, size, &mut fds)?;
    }
    Ok(Some(Msg { bytes, fds }))
}

fn send_msg(sock: &UnixStream, m: &Msg) -> Result<(), End> {
    let raw: Vec<RawFd> = m.fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut off = 0;
    while off < m.bytes.len() {
        let iov = [IoSlice::new(&m.bytes[off..])];
        let cm = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if off == 0 && !raw.is_empty() { &cm } else { &[] };
        match sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(End::Closed(format!("writing to the request loop: {e}"))),
        }
    }
    Ok(())
}

/// Writes one whole message to the frontend, under the lock all writers to it share.
fn write_frontend(w: &Mutex<UnixStream>, bytes: &[u8]) -> std::io::Result<()> {
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    g.write_all(bytes)
}

/// Relays frontend → request loop until either side closes (`front_w`: the frontend's writer).
fn frontend_to_handler(front: &UnixStream, handler: &UnixStream, front_w: &Mutex<UnixStream>) -> Result<(), End> {
    let mut features_seen = false;
    let mut held: Vec<Msg> = Vec::new();
    while let Some(mut m) = read_msg(front)? {
        let req = m.request();
        if req == SET_VRING_ENABLE && !features_seen {
            if held.len() >= MAX_HELD {
                return Err(End::Frontend(format!("more than {MAX_HELD} SET_VRING_ENABLE before SET_FEATURES")));
            }
            if m.flags() & FLAG_NEED_REPLY != 0 {
                // The reply the request loop would give: success (a u64 0).
                let mut r = Vec::with_capacity(HDR_LEN + 8);
                r.extend_from_slice(&req.to_le_bytes());
                r.extend_from_slice(&((m.flags() & FLAG_VERSION_MASK) | FLAG_REPLY).to_le_bytes());
                r.extend_from_slice(&8u32.to_le_bytes());
                r.extend_from_slice(&0u64.to_le_bytes());
                write_frontend(front_w, &r).map_err(|e| End::Closed(format!("writing to the frontend: {e}")))?;
                m.set_flags(m.flags() & !FLAG_NEED_REPLY);
            }
            held.push(m);
            continue;
        }
        send_msg(handler, &m)?;
        if req == SET_FEATURES && !features_seen {
            features_seen = true;
            if !held.is_empty() {
                tracing::debug!("vhost-user: {} SET_VRING_ENABLE held back until SET_FEATURES", held.len());
            }
            for h in held.drain(..) {
                send_msg(handler, &h)?;
            }
        } else if req == RESET_OWNER || req == RESET_DEVICE {
            // The backend has cleared the acked features: enables are held again until the
            // next SET_FEATURES, as on a new connection.
            features_seen = false;
        }
    }
    Ok(())
}

/// Copies the request loop's replies to the frontend, message by message, until either side
/// closes.
fn handler_to_frontend(handler: &UnixStream, front_w: &Mutex<UnixStream>) {
    let mut h = handler;
    let mut buf = Vec::with_capacity(HDR_LEN + MAX_BODY);
    loop {
        buf.resize(HDR_LEN, 0);
        if h.read_exact(&mut buf).is_err() {
            break;
        }
        let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if size > MAX_BODY {
            tracing::debug!("vhost-user relay: a reply of {size} bytes from the request loop");
            break;
        }
        buf.resize(HDR_LEN + size, 0);
        if h.read_exact(&mut buf[HDR_LEN..]).is_err() || write_frontend(front_w, &buf).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    fn read_one(s: &UnixStream) -> (u32, u32, Vec<u8>) {
        let m = read_msg(s).ok().flatten().expect("a message");
        (m.request(), m.flags(), m.bytes[HDR_LEN..].to_vec())
    }

    #[test]
    fn ring_enables_before_set_features_are_held_back_and_delivered_after_it() {
        let (mut front, front_relay) = UnixStream::pair().unwrap();
        let (handler_relay, handler) = UnixStream::pair().unwrap();
        let w = Mutex::new(front_relay.try_clone().unwrap());
        let t = std::thread::spawn(move || frontend_to_handler(&front_relay, &handler_relay, &w));
        let enable: Vec<u8> = [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
        let features = (1u64 << 32 | 1 << 30).to_le_bytes();
        front.write_all(&msg(3, 1, &[])).unwrap(); // SET_OWNER
        front.write_all(&msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable)).unwrap();
        front.write_all(&msg(SET_VRING_ENABLE, 1, &enable)).unwrap();
        // The held message that asked for a reply is acked at once, as success.
        assert_eq!(read_one(&front), (SET_VRING_ENABLE, 1 | FLAG_REPLY, 0u64.to_le_bytes().to_vec()));
        front.write_all(&msg(SET_FEATURES, 1, &features)).unwrap();
        // The request loop sees SET_OWNER, SET_FEATURES, then both enables (no reply asked).
        assert_eq!(read_one(&handler), (3, 1, vec![]));
        assert_eq!(read_one(&handler), (SET_FEATURES, 1, features.to_vec()));
        assert_eq!(read_one(&handler), (SET_VRING_ENABLE, 1, enable.clone()));
        assert_eq!(read_one(&handler), (SET_VRING_ENABLE, 1, enable.clone()));
        // After SET_FEATURES they pass straight through.
        front.write_all(&msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable)).unwrap();
        assert_eq!(read_one(&handler), (SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, enable));
        drop(front);
        assert!(t.join().unwrap().is_ok());
    }

    #[test]
    fn too_many_descriptors_are_the_frontends_error_and_none_stays_open() {
        use crate::sys::fdpass::{tests::Marker, SCM_MAX_FD};
        for n in [MAX_FDS + 8, SCM_MAX_FD] {
            let marker = Marker::new(&format!("relay-{n}"));
            let (front, front_relay) = UnixStream::pair().unwrap();
            let (handler_relay, _handler) = UnixStream::pair().unwrap();
            // The first byte of a header, with `n` descriptors.
            marker.send(&front, n).unwrap();
            let w = Mutex::new(front_relay.try_clone().unwrap());
            let r = frontend_to_handler(&front_relay, &handler_relay, &w);
            assert!(matches!(r, Err(End::Frontend(_))), "{n} descriptors");
            assert_eq!(marker.open(), 1, "{n} descriptors: the received ones are closed");
        }
    }

    #[test]
    fn ring_enables_are_held_again_after_a_reset() {
        for reset in [RESET_OWNER, RESET_DEVICE] {
            let (mut front, front_relay) = UnixStream::pair().unwrap();
            let (handler_relay, handler) = UnixStream::pair().unwrap();
            let w = Mutex::new(front_relay.try_clone().unwrap());
            let t = std::thread::spawn(move || frontend_to_handler(&front_relay, &handler_relay, &w));
            // An enable passed through would get no ack (the request loop is not running): the
            // read times out and the test fails.
            front.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            let enable: Vec<u8> = [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
            let features = (1u64 << 32 | 1 << 30).to_le_bytes();
            front.write_all(&msg(SET_FEATURES, 1, &features)).unwrap();
            front.write_all(&msg(reset, 1, &[])).unwrap();
            front.write_all(&msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable)).unwrap();
            assert_eq!(read_one(&front), (SET_VRING_ENABLE, 1 | FLAG_REPLY, 0u64.to_le_bytes().to_vec()));
            front.write_all(&msg(SET_FEATURES, 1, &features)).unwrap();
            assert_eq!(read_one(&handler), (SET_FEATURES, 1, features.to_vec()));
            assert_eq!(read_one(&handler), (reset, 1, vec![]), "request {reset}");
            assert_eq!(read_one(&handler), (SET_FEATURES, 1, features.to_vec()), "request {reset}: enable held");
            assert_eq!(read_one(&handler), (SET_VRING_ENABLE, 1, enable));
            drop(front);
            assert!(t.join().unwrap().is_ok());
        }
    }

    #[test]
    fn an_oversized_message_is_the_frontends_error() {
        let (mut front, front_relay) = UnixStream::pair().unwrap();
        let (handler_relay, _handler) = UnixStream::pair().unwrap();
        let w = Mutex::new(front_relay.try_clone().unwrap());
        let t = std::thread::spawn(move || frontend_to_handler(&front_relay, &handler_relay, &w));
        let mut m = msg(5, 1, &[]);
        m[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        front.write_all(&m).unwrap();
        assert!(matches!(t.join().unwrap(), Err(End::Frontend(_))));
    }

    #[test]
    fn acks_and_replies_reach_the_frontend_as_whole_messages() {
        let (mut front, front_relay) = UnixStream::pair().unwrap();
        let (handler_relay, handler) = UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let threads = spawn(front_relay, handler_relay, move |e| tx.send(e).unwrap()).unwrap();
        // The request loop's replies (20 bytes each) in one burst, which the relay reads in
        // pieces that need not end on a message, while the relay acks held ring enables sent one
        // by one meanwhile.
        const REPLIES: usize = 20000;
        const ACKS: usize = 200;
        let replies: Vec<u8> = (0..REPLIES).flat_map(|i| msg(1, 1 | FLAG_REPLY, &(i as u64).to_le_bytes())).collect();
        let enable: Vec<u8> = [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat();
        let enable = msg(SET_VRING_ENABLE, 1 | FLAG_NEED_REPLY, &enable);
        let (mut f2, mut h2) = (front.try_clone().unwrap(), handler.try_clone().unwrap());
        let w1 = std::thread::spawn(move || h2.write_all(&replies).unwrap());
        let w2 = std::thread::spawn(move || {
            for _ in 0..ACKS {
                f2.write_all(&enable).unwrap();
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        });
        let (mut got_replies, mut got_acks) = (0, 0);
        let mut hdr = [0u8; HDR_LEN];
        for _ in 0..REPLIES + ACKS {
            front.read_exact(&mut hdr).unwrap();
            let word = |i: usize| u32::from_le_bytes(hdr[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!((word(1), word(2)), (1 | FLAG_REPLY, 8), "a message header, not a piece of one");
            let mut body = [0u8; 8];
            front.read_exact(&mut body).unwrap();
            match word(0) {
                1 => {
                    assert_eq!(u64::from_le_bytes(body), got_replies as u64);
                    got_replies += 1;
                }
                SET_VRING_ENABLE => got_acks += 1,
                r => panic!("request {r}"),
            }
        }
        assert_eq!((got_replies, got_acks), (REPLIES, ACKS));
        w1.join().unwrap();
        w2.join().unwrap();
        drop((front, handler));
        for t in threads {
            t.join().unwrap();
        }
        assert!(rx.try_recv().is_err(), "no framing error");
    }
}
