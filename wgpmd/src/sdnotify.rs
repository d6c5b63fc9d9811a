//! systemd's readiness protocol (sd_notify(3)), spoken directly: one datagram of
//! newline-separated `KEY=VALUE` assignments to the unix socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` for a name in the abstract namespace). Without the variable (not started
//! by systemd with `Type=notify`) every call does nothing.
//!
//! wgpmd sends `READY=1` once its ports, the TUN interface and the UAPI socket exist,
//! `RELOADING=1` and then `READY=1` around a reload (SIGHUP), and `STOPPING=1` when it starts
//! to shut down; `STATUS=` carries a one-line description in each.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where `$NOTIFY_SOCKET` points: `None` when unset or empty.
fn target() -> io::Result<Option<SocketAddr>> {
    let Some(v) = std::env::var_os(NOTIFY_SOCKET_ENV) else { return Ok(None) };
    let v = v.to_string_lossy().into_owned();
    if v.is_empty() {
        return Ok(None);
    }
    if let Some(abs) = v.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(abs.as_bytes()).map(Some);
    }
    if !v.starts_with('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("${NOTIFY_SOCKET_ENV}={v}: not a path or @name"),
        ));
    }
    SocketAddr::from_pathname(&v).map(Some)
}

/// Send `state` (e.g. `"READY=1\nSTATUS=serving"`) to the service manager. `Ok(false)`: not
/// running under one (`$NOTIFY_SOCKET` unset).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(addr) = target()? else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// [`notify`], logging a failure (a service manager that cannot be told is worth a warning, not
/// a stop: systemd then times the start out itself).
pub fn notify_or_warn(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!("telling systemd {:?} (${NOTIFY_SOCKET_ENV}): {e}", state.lines().next().unwrap_or(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    // One test: it sets the process-wide environment variable.
    #[test]
    fn notifies_a_path_and_an_abstract_socket_and_nothing_without_the_variable() {
        let dir = std::env::temp_dir().join(format!("wgpmd-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        std::env::set_var(NOTIFY_SOCKET_ENV, &path);
        assert!(notify("READY=1\nSTATUS=up").unwrap());
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");

        let name = format!("wgpmd-sdnotify-test-{}", std::process::id());
        let rx2 = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        std::env::set_var(NOTIFY_SOCKET_ENV, format!("@{name}"));
        assert!(notify("STOPPING=1").unwrap());
        let n = rx2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        std::env::set_var(NOTIFY_SOCKET_ENV, "relative/path");
        assert!(notify("READY=1").is_err(), "a relative path is refused");
        std::env::remove_var(NOTIFY_SOCKET_ENV);
        assert!(!notify("READY=1").unwrap(), "no manager: nothing sent");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
