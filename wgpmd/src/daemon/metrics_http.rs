//! The metrics endpoint's HTTP server (`--metrics ADDR:PORT`): one thread of its own, a
//! minimal HTTP/1.1 `GET` over non-blocking sockets multiplexed with poll(2), so that a client
//! that connects and never sends, or reads slowly, holds nothing but its own slot:
//! - at most [`MAX_CONNECTIONS`] connections at once (a new one evicts the oldest);
//! - each has [`DEADLINE`] from accept to the last byte of its answer, then it is closed;
//! - a request head is at most [`MAX_REQUEST`] bytes;
//! - one request per connection (`Connection: close`).
//!
//! `GET /metrics` answers OpenMetrics text when the client accepts it (Prometheus asks for it),
//! else the Prometheus text format 0.0.4; `GET /` a line pointing at `/metrics`.
//! The page is rendered on this thread from what the workers already published (`metrics.rs`):
//! nothing here runs on, or waits for, a worker.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Connections served at once; a new one beyond this evicts the oldest.
pub(crate) const MAX_CONNECTIONS: usize = 16;
/// From accept to the end of the answer.
pub(crate) const DEADLINE: Duration = Duration::from_secs(5);
/// Longest request head.
pub(crate) const MAX_REQUEST: usize = 8192;
/// How often the thread looks at its stop flag when nothing happens.
const TICK: Duration = Duration::from_millis(200);

/// Content type of OpenMetrics text.
pub(crate) const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text format.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the page: `true` for OpenMetrics, `false` for the Prometheus text format.
pub(crate) type Render = Box<dyn Fn(bool) -> String + Send>;

/// The running server; dropping it stops its thread.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listen on `addr` and serve `render` on a thread named `wgpmd-metrics`.
    pub fn start(addr: SocketAddr, render: Render) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread =
            std::thread::Builder::new().name("wgpmd-metrics".into()).spawn(move || serve(&listener, &render, &flag))?;
        Ok(MetricsServer { addr, stop, thread: Some(thread) })
    }

    /// Where it listens (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    /// The answer, once the request is complete.
    answer: Option<Vec<u8>>,
    sent: usize,
    done: bool,
}

impl Conn {
    /// Read what arrived; answer when the head is complete.
    fn readable(&mut self, render: &Render) {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.done = true;
                    return;
                }
                Ok(n) => {
                    self.request.extend_from_slice(&buf[..n]);
                    if let Some(answer) = respond(&self.request, render) {
                        self.answer = Some(answer);
                        self.writable();
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.done = true;
                    return;
                }
            }
        }
    }

    /// Send what the socket takes of the answer.
    fn writable(&mut self) {
        let Some(answer) = &self.answer else { return };
        while self.sent < answer.len() {
            match self.stream.write(&answer[self.sent..]) {
                Ok(0) => break,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.done = true;
    }
}

fn serve(listener: &TcpListener, render: &Render, stop: &AtomicBool) {
    let mut conns: Vec<Conn> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = conns.iter().map(|c| c.deadline.saturating_duration_since(now)).min().unwrap_or(TICK).min(TICK);
        let ready: Vec<bool> = {
            let mut fds = Vec::with_capacity(conns.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for c in &conns {
                let want = if c.answer.is_some() { PollFlags::POLLOUT } else { PollFlags::POLLIN };
                fds.push(PollFd::new(c.stream.as_fd(), want));
            }
            // Whole milliseconds, at least one (a zero timeout would spin).
            let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("metrics endpoint: poll failed: {e}; the endpoint stops");
                    return;
                }
            }
        };
        for (c, r) in conns.iter_mut().zip(&ready[1..]) {
            if *r {
                if c.answer.is_some() {
                    c.writable();
                } else {
                    c.readable(render);
                }
            }
        }
        let now = Instant::now();
        conns.retain(|c| !c.done && c.deadline > now);
        if ready[0] {
            accept(listener, &mut conns, now);
        }
    }
}

fn accept(listener: &TcpListener, conns: &mut Vec<Conn>, now: Instant) {
    // A bounded number per round: a connect flood cannot keep the thread here.
    for _ in 0..MAX_CONNECTIONS {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= MAX_CONNECTIONS {
                    conns.remove(0);
                }
                conns.push(Conn {
                    stream,
                    deadline: now + DEADLINE,
                    request: Vec::new(),
                    answer: None,
                    sent: 0,
                    done: false,
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            // A connection reset before accept, or out of descriptors: try again next round.
            Err(_) => return,
        }
    }
}

/// The answer to `request` once its head is complete (`None`: wait for more).
pub(crate) fn respond(request: &[u8], render: &Render) -> Option<Vec<u8>> {
    let end =
        request.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| request.windows(2).position(|w| w == b"\n\n"));
    if end.is_none() {
        if request.len() > MAX_REQUEST {
            return Some(answer(431, "Request Header Fields Too Large", "text/plain", b"request too large\n", false));
        }
        return None;
    }
    let head = String::from_utf8_lossy(&request[..end.unwrap_or(0)]);
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target, version) = (first.next(), first.next(), first.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Some(answer(400, "Bad Request", "text/plain", b"bad request\n", false));
    };
    if !version.starts_with("HTTP/1.") {
        return Some(answer(400, "Bad Request", "text/plain", b"HTTP/1.x only\n", false));
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return Some(answer(405, "Method Not Allowed", "text/plain", b"GET only\n", false));
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => {
            let openmetrics = lines.any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
                })
            });
            let body = render(openmetrics);
            let ty = if openmetrics { OPENMETRICS } else { PROMETHEUS_TEXT };
            Some(answer(200, "OK", ty, body.as_bytes(), head_only))
        }
        "/" => Some(answer(200, "OK", "text/plain", b"wgpmd: metrics at /metrics\n", head_only)),
        _ => Some(answer(404, "Not Found", "text/plain", b"not found: try /metrics\n", head_only)),
    }
}

fn answer(code: u16, reason: &str, ty: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut a = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        a.extend_from_slice(body);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> MetricsServer {
        MetricsServer::start(
            "127.0.0.1:0".parse().unwrap(),
            Box::new(|om| if om { "om_total 1\n# EOF\n".into() } else { "text_total 1\n".into() }),
        )
        .unwrap()
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_get_metrics_in_the_format_asked_for() {
        let srv = server();
        let a = srv.local_addr();
        let om = get(a, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n");
        assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
        assert!(om.contains(&format!("Content-Type: {OPENMETRICS}\r\n")), "{om}");
        assert!(om.ends_with("\r\n\r\nom_total 1\n# EOF\n"), "{om}");
        let text = get(a, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(text.contains(&format!("Content-Type: {PROMETHEUS_TEXT}\r\n")), "{text}");
        assert!(text.contains("Content-Length: 13\r\n") && text.ends_with("text_total 1\n"), "{text}");
        let head = get(a, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(a, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(get(a, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(get(a, "GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let big = format!("GET /metrics HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST + 10));
        assert!(get(a, &big).starts_with("HTTP/1.1 431 "));
    }

    #[test]
    fn silent_clients_do_not_block_the_others() {
        let srv = server();
        let a = srv.local_addr();
        // More silent clients than slots: they connect and never send, or send part of a
        // request and then nothing.
        let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .map(|i| {
                let mut s = TcpStream::connect(a).unwrap();
                if i % 2 == 1 {
                    s.write_all(b"GET /metr").unwrap();
                }
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        for _ in 0..5 {
            let r = get(a, "GET /metrics HTTP/1.1\r\n\r\n");
            assert!(r.ends_with("text_total 1\n"), "{r}");
        }
        // Served at once, not after a silent client's deadline.
        assert!(t.elapsed() < DEADLINE / 2, "5 scrapes took {:?} next to silent clients", t.elapsed());
        // A silent client is closed at its deadline.
        let mut last = silent.into_iter().last().unwrap();
        last.set_read_timeout(Some(DEADLINE * 2)).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 16];
        let n = last.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a silent client gets nothing");
        assert!(t.elapsed() < DEADLINE + Duration::from_secs(2), "closed after {:?}", t.elapsed());
    }

    #[test]
    fn a_request_in_pieces_is_answered() {
        let srv = server();
        let mut s = TcpStream::connect(srv.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for part in ["GET /met", "rics HTTP/1.1\r\n", "Host: x\r\n", "\r\n"] {
            s.write_all(part.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
        }
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK") && out.ends_with("text_total 1\n"), "{out}");
    }
}
