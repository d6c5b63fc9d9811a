//! The UAPI socket: `/var/run/wireguard/<name>.sock`, served by one thread (wireguard-go
//! `ipc/uapi_linux.go` `UAPIOpen`/`UAPIListen`, `device/uapi.go` `IpcHandle`).
//!
//! - The directory is created 0755 if missing; the socket is made 0600 in a private 0700
//!   directory and renamed into place, so no other user can ever connect (wireguard-go sets a
//!   0077 umask for the same purpose; std has no umask).
//! - A socket of the same name that accepts a connection belongs to a live process: refused. One
//!   that refuses connections is stale: removed. Anything else at that path is left alone.
//! - Connections are served one at a time, each within [`CONNECTION_DEADLINE`]: read until the
//!   empty line that ends the request, answer, close. `wg` first connects once without sending
//!   anything, to see that the socket is alive; such connections are closed silently.
//! - Errors are logged as wireguard-go logs them: `IPC error -22: invalid UAPI device key: x`.
//! - Dropping the server (or [`UapiServer::shutdown`]) stops the thread and removes the socket,
//!   if the path still holds our socket.

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use zeroize::{Zeroize, Zeroizing};

use wgpmd_proto::uapi::{parse_request, Request, SetRequest, UapiError};

/// Where `wg` looks for userspace interfaces (shared by every network namespace).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long one connection may take to send its request and read the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The largest request accepted (a `setconf` of a million peers is about 150 MB; the largest
/// configurations are expected to be applied with `--config` at startup, not through `wg`).
pub const MAX_REQUEST_LEN: usize = 64 << 20;

/// Linux `IFNAMSIZ`: interface names are at most 15 bytes (`wg set` truncates longer ones).
const IFNAMSIZ: usize = 16;

/// What the server asks of the daemon. Called from the server's thread.
pub trait UapiHandler: Send + Sync {
    /// The full `get` response ([`wgpmd_proto::uapi::format_get`]), ending with `errno=0\n\n`.
    fn get(&self) -> String;
    /// Apply a validated `set` request ([`wgpmd_proto::uapi::apply_set`]).
    fn set(&self, req: SetRequest) -> Result<(), UapiError>;
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Not a valid interface name.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, not `.` or `..`, without `/`, `:` or whitespace")]
    InvalidName(String),
    /// A live process serves this name.
    #[error("{0} is in use by a running process (another wgpmd or wireguard-go with this interface name)")]
    InUse(PathBuf),
    /// Something other than a socket has the socket's path.
    #[error("{0} exists and is not a socket; remove it")]
    NotASocket(PathBuf),
    /// A filesystem or socket operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io { op, path: path.to_path_buf(), source }
}

/// A running UAPI socket server.
pub struct UapiServer {
    path: PathBuf,
    /// Device and inode of our socket, to remove only our own.
    inode: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UapiServer {
    /// Serve interface `name` at `/var/run/wireguard/<name>.sock`.
    pub fn bind<H: UapiHandler + 'static>(name: &str, handler: H) -> Result<Self, ServerError> {
        Self::bind_in(Path::new(SOCKET_DIR), name, handler)
    }

    /// Serve interface `name` at `<dir>/<name>.sock` (for tests and non-standard layouts).
    pub fn bind_in<H: UapiHandler + 'static>(dir: &Path, name: &str, handler: H) -> Result<Self, ServerError> {
        if !valid_name(name) {
            return Err(ServerError::InvalidName(name.to_string()));
        }
        DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(io_err("create directory", dir))?;
        let path = dir.join(format!("{name}.sock"));
        match fs::symlink_metadata(&path) {
            Ok(md) if !md.file_type().is_socket() => return Err(ServerError::NotASocket(path)),
            Ok(_) => {
                if UnixStream::connect(&path).is_ok() {
                    return Err(ServerError::InUse(path));
                }
                tracing::info!("Removing stale UAPI socket {}", path.display());
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("remove stale socket", &path)(e))
                    }
                    _ => {}
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspect", &path)(e)),
        }
        let listener = bind_private(dir, name, &path)?;
        let md = fs::symlink_metadata(&path).map_err(io_err("inspect", &path))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("uapi-{name}"))
                .spawn(move || serve(listener, &handler, &stop))
                .map_err(io_err("start a thread for", &path))?
        };
        tracing::info!("UAPI listener started on {}", path.display());
        Ok(UapiServer { path, inode: (md.dev(), md.ino()), stop, thread: Some(thread) })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving and remove the socket (what dropping the server does).
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        let ours = fs::symlink_metadata(&self.path).map(|md| (md.dev(), md.ino()) == self.inode).unwrap_or(false);
        if !ours {
            // Someone removed or replaced the socket: we cannot wake the thread through it, and
            // must not remove theirs. The thread stays blocked in accept on an orphaned socket.
            tracing::warn!("UAPI socket {} was removed or replaced; leaving it alone", self.path.display());
            return;
        }
        // Wake the accept; the thread sees `stop` and returns.
        if UnixStream::connect(&self.path).is_ok() {
            let _ = thread.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl core::fmt::Debug for UapiServer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("UapiServer").field("path", &self.path).finish()
    }
}

/// Whether `name` is a usable interface name (the kernel's `dev_valid_name`): 1 to 15 bytes,
/// not `.` or `..`, without `/`, `:`, NUL or whitespace.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// Bind in a fresh 0700 directory, make the socket 0600, and rename it to `path`.
fn bind_private(dir: &Path, name: &str, path: &Path) -> Result<UnixListener, ServerError> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err("create directory", &tmp))?;
    let sock = tmp.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&sock).map_err(io_err("bind", &sock))?;
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o600)).map_err(io_err("set the mode of", &sock))?;
        fs::rename(&sock, path).map_err(io_err("move the socket to", path))?;
        Ok(listener)
    })();
    let _ = fs::remove_dir_all(&tmp);
    result
}

fn serve(listener: UnixListener, handler: &dyn UapiHandler, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(stream) => {
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(stream, handler)));
                if served.is_err() {
                    tracing::error!("UAPI handler panicked; connection closed");
                }
            }
            Err(e) => {
                tracing::warn!("UAPI accept failed: {e}");
                // Out of descriptors and the like: do not spin.
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serve one connection: read one request, answer, close.
fn handle(mut stream: UnixStream, handler: &dyn UapiHandler) {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
    let mut chunk = Zeroizing::new([0u8; 4096]);
    let mut framer = Framer::default();
    let len = loop {
        if let Some(n) = framer.feed(&buf) {
            break n;
        }
        if buf.len() > MAX_REQUEST_LEN {
            let e = UapiError {
                errno: wgpmd_proto::uapi::IPC_ERROR_INVALID,
                message: format!("request longer than {MAX_REQUEST_LEN} bytes"),
            };
            tracing::error!("{e}");
            reply(&mut stream, &format!("errno={}\n\n", e.errno), deadline);
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            tracing::warn!("UAPI client sent no complete request within {CONNECTION_DEADLINE:?}");
            return;
        }
        match stream.read(&mut chunk[..]) {
            // `wg` probes the socket by connecting and closing without a word.
            Ok(0) if buf.is_empty() => return,
            // Cut short: take what came, as wireguard-go does.
            Ok(0) => break buf.len(),
            Ok(n) => extend_wiping(&mut buf, &chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("UAPI read failed: {e}");
                return;
            }
        }
    };
    let answer = match parse_request(&buf[..len]) {
        Ok(Request::Get) => Zeroizing::new(handler.get()),
        Ok(Request::Set(req)) => match handler.set(req) {
            Ok(()) => Zeroizing::new("errno=0\n\n".to_string()),
            Err(e) => status(&e),
        },
        Err(e) => status(&e),
    };
    reply(&mut stream, &answer, deadline);
}

fn status(e: &UapiError) -> Zeroizing<String> {
    tracing::error!("{e}");
    Zeroizing::new(format!("errno={}\n\n", e.errno))
}

fn reply(stream: &mut UnixStream, answer: &str, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = stream.set_write_timeout(Some(left));
    if let Err(e) = stream.write_all(answer.as_bytes()) {
        tracing::debug!("UAPI write failed: {e}");
    }
}

/// Append, wiping the old buffer if the vector has to move (requests carry keys).
fn extend_wiping(buf: &mut Vec<u8>, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        let mut bigger = Vec::with_capacity((buf.len() + data.len()).max(2 * buf.capacity()));
        bigger.extend_from_slice(buf);
        buf.zeroize();
        *buf = bigger;
    }
    buf.extend_from_slice(data);
}

/// Finds the empty line that ends a request, scanning each byte once as data arrives.
#[derive(Default)]
struct Framer {
    /// Bytes already scanned.
    scanned: usize,
    /// Where the current line starts.
    line_start: usize,
}

impl Framer {
    /// The request's length (through its empty line) once `buf` holds all of it.
    fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        while let Some(off) = buf.get(self.scanned..)?.iter().position(|&b| b == b'\n') {
            let nl = self.scanned + off;
            let line = buf.get(self.line_start..nl)?;
            self.scanned = nl + 1;
            self.line_start = nl + 1;
            if line.is_empty() || line == b"\r" {
                return Some(nl + 1);
            }
        }
        self.scanned = buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_finds_the_empty_line_across_chunks() {
        let req = b"set=1\npublic_key=ab\r\n\r\ntrailing";
        let mut f = Framer::default();
        let mut got = None;
        for end in 1..=req.len() {
            got = f.feed(&req[..end]);
            if got.is_some() {
                assert_eq!(end, 23, "found as soon as the empty line is complete");
                break;
            }
        }
        assert_eq!(got, Some(23));
        assert_eq!(Framer::default().feed(b"get=1\n\n"), Some(7));
        assert_eq!(Framer::default().feed(b"get=1\n"), None);
        assert_eq!(Framer::default().feed(b"\n"), Some(1));
    }

    #[test]
    fn names_follow_the_kernel_rules() {
        for good in ["wg0", "wgpmd1234567", "a", "x.y-z_1", "123456789012345"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "1234567890123456", "wg\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn extend_wiping_keeps_the_bytes() {
        let mut v = Vec::with_capacity(2);
        for chunk in [&b"ab"[..], b"cde", b"", b"fghijklmnop"] {
            extend_wiping(&mut v, chunk);
        }
        assert_eq!(v, b"abcdefghijklmnop");
    }
}
