//! The UAPI socket: `/var/run/wireguard/<name>.sock`, served by one thread (wireguard-go
//! `ipc/uapi_linux.go` `UAPIOpen`/`UAPIListen`, `device/uapi.go` `IpcHandle`).
//!
//! - The directory is created 0755 if missing; the socket is made 0600 in a private 0700
//!   directory and renamed into place, so no other user can ever connect (wireguard-go sets a
//!   0077 umask for the same purpose; std has no umask).
//! - A socket of the same name that accepts a connection belongs to a live process: refused. One
//!   that refuses connections is stale: removed. Anything else at that path is left alone.
//! - Connections are served one at a time: read until the empty line that ends the request,
//!   answer, close; a client that stays silent (or stops reading) for [`IDLE_TIMEOUT`] is cut
//!   off. `wg` first connects once without sending anything, to see that the socket is alive;
//!   such connections are closed silently.
//! - Requests of any size stream through: a `set` is validated line by line as it is read
//!   ([`SetParser`], compact records, no text kept; a line longer than [`MAX_LINE`] is an error)
//!   and applied once whole, all or nothing; a bad line anywhere makes the answer `errno=-22`
//!   (or -71) after the rest of the request is read and discarded, and nothing changes. A
//!   `get` is written to the socket piece by piece as it is formatted
//!   ([`wgpmd_proto::uapi::write_get`]).
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
use std::time::Duration;

use zeroize::Zeroizing;

use wgpmd_proto::uapi::{SetParser, SetRequest, UapiError};

/// Where `wg` looks for userspace interfaces (shared by every network namespace).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// How long a client may stay silent while sending its request, or not read while we answer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest request line accepted (the longest valid one, an IPv6 endpoint or allowed IP,
/// is under 100 bytes).
pub const MAX_LINE: usize = 4096;

/// The read buffer: a `set` of a million peers is about 140 MB, read in pieces of up to this
/// many bytes (a few system calls per thousand peers). At least twice [`MAX_LINE`], so that a
/// partial line moved to its front always leaves room to read.
const READ_BUF: usize = 64 * 1024;
const _: () = assert!(READ_BUF >= 2 * MAX_LINE);

/// Linux `IFNAMSIZ`: interface names are at most 15 bytes (`wg set` truncates longer ones).
const IFNAMSIZ: usize = 16;

/// What the server asks of the daemon. Called from the server's thread.
pub trait UapiHandler: Send + Sync {
    /// Write the full `get` response ([`wgpmd_proto::uapi::write_get`]), ending with
    /// `errno=0\n\n`, to `out`.
    fn get(&self, out: &mut dyn Write) -> io::Result<()>;
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
fn handle(stream: UnixStream, handler: &dyn UapiHandler) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err() || stream.set_write_timeout(Some(IDLE_TIMEOUT)).is_err() {
        return;
    }
    let mut lines = LineReader::new(&stream);
    let op = match lines.next_line() {
        // `wg` probes the socket by connecting and closing without a word.
        Ok(None) => return,
        Ok(Some(l)) => l.to_vec(),
        Err(e) => return read_failed(&e),
    };
    let mut out = &stream;
    match op.as_slice() {
        b"get=1" => match lines.next_line() {
            Ok(None | Some(b"")) => {
                if let Err(e) = handler.get(&mut out) {
                    tracing::debug!("UAPI write failed: {e}");
                }
            }
            Ok(Some(rest)) => {
                let e =
                    UapiError::invalid(format!("trailing characters in UAPI get: {:?}", String::from_utf8_lossy(rest)));
                reply(&mut out, &status(&e));
            }
            Err(e) => read_failed(&e),
        },
        b"set=1" => {
            let mut parser = SetParser::new();
            let mut error = None;
            loop {
                match lines.next_line() {
                    // Cut short: take what came, as wireguard-go does.
                    Ok(None) => break,
                    Ok(Some(line)) if error.is_some() => {
                        // Read and discard the rest, so the client reads our answer.
                        if line.is_empty() {
                            break;
                        }
                    }
                    Ok(Some(line)) => match parser.line(line) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => error = Some(e),
                    },
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                        error = Some(UapiError::invalid(format!("request line longer than {MAX_LINE} bytes")));
                        lines.skip_line();
                    }
                    Err(e) => return read_failed(&e),
                }
            }
            let answer = match error {
                Some(e) => status(&e),
                None => match handler.set(parser.finish()) {
                    Ok(()) => Zeroizing::new("errno=0\n\n".to_string()),
                    Err(e) => status(&e),
                },
            };
            reply(&mut out, &answer);
        }
        other => {
            let e = UapiError::invalid(format!("invalid UAPI operation: {:?}", String::from_utf8_lossy(other)));
            reply(&mut out, &status(&e));
        }
    }
}

fn read_failed(e: &io::Error) {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        tracing::warn!("UAPI client stalled for {IDLE_TIMEOUT:?} within its request");
    } else {
        tracing::debug!("UAPI read failed: {e}");
    }
}

fn status(e: &UapiError) -> Zeroizing<String> {
    tracing::error!("{e}");
    Zeroizing::new(format!("errno={}\n\n", e.errno))
}

fn reply(stream: &mut &UnixStream, answer: &str) {
    if let Err(e) = stream.write_all(answer.as_bytes()) {
        tracing::debug!("UAPI write failed: {e}");
    }
}

/// Lines from the socket through one fixed buffer, wiped when dropped (requests carry keys).
struct LineReader<'a> {
    stream: &'a UnixStream,
    buf: Zeroizing<Vec<u8>>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
    /// Skip input up to the next newline (after an over-long line).
    skipping: bool,
}

impl<'a> LineReader<'a> {
    fn new(stream: &'a UnixStream) -> Self {
        LineReader { stream, buf: Zeroizing::new(vec![0; READ_BUF]), start: 0, end: 0, eof: false, skipping: false }
    }

    /// Discard the rest of the current (over-long) line.
    fn skip_line(&mut self) {
        self.skipping = true;
    }

    /// The next line without its `\n` (and without a `\r` before it), or what is left before
    /// the end of input; `None` at the end. An over-long line is `InvalidData`.
    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            if let Some(off) = self.buf[self.start..self.end].iter().position(|&b| b == b'\n') {
                let (s, nl) = (self.start, self.start + off);
                self.start = nl + 1;
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                let line = &self.buf[s..nl];
                return Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)));
            }
            if self.skipping {
                self.start = self.end;
            }
            if self.eof {
                if self.start == self.end || std::mem::take(&mut self.skipping) {
                    return Ok(None);
                }
                let s = self.start;
                self.start = self.end;
                return Ok(Some(&self.buf[s..self.end]));
            }
            if self.end - self.start >= MAX_LINE {
                self.start = self.end;
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            // Move the partial line to the front, then read more after it.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            let end = self.end;
            match (&mut &*self.stream).read(&mut self.buf[end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernel_rules() {
        for good in ["wg0", "wgpmd1234567", "a", "x.y-z_1", "123456789012345"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "1234567890123456", "wg\0"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
