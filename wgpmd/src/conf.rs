//! A wg.conf(5) file read the way `wg setconf` reads it: the parser is
//! [`InterfaceConfig::parse_with_resolver`], and endpoint host names go to the system resolver
//! (wg(8) takes its first answer).

use std::net::{SocketAddr, ToSocketAddrs};

use wgpmd_proto::config::{ConfigError, InterfaceConfig};

/// Resolve `host:port` with the system resolver (getaddrinfo): its first answer.
pub fn system_resolver(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the name has no address".to_string())
}

/// Parse a wg.conf(5) file, resolving endpoint host names with the system resolver.
pub fn parse(text: &str) -> Result<InterfaceConfig, ConfigError> {
    InterfaceConfig::parse_with_resolver(text, system_resolver)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB_B: &str = "ubYI2odLhIw3EP6iWBkoFOjVfu9Oli/E2ZAqHvnNFkY=";

    #[test]
    fn localhost_resolves_with_the_system_resolver() {
        let cfg = parse(&format!("[Peer]\nPublicKey = {PUB_B}\nEndpoint = localhost:51820\n")).unwrap();
        let ep = cfg.peers[0].endpoint.unwrap();
        assert!(ep.ip().is_loopback() && ep.port() == 51820, "{ep}");
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let e = parse(&format!("[Peer]\nPublicKey = {PUB_B}\nEndpoint = no-such-host.invalid:51820\n")).unwrap_err();
        assert!(e.to_string().contains("cannot resolve `no-such-host.invalid`"), "{e}");
    }
}
