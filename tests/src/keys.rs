//! WireGuard keys (X25519), in Rust: no dependency on `wg genkey`.

use anyhow::{bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::io::Read;
use x25519_dalek::{PublicKey, StaticSecret};

/// An X25519 key pair in the form wg(8) uses: 32 bytes, base64.
#[derive(Clone)]
pub struct KeyPair {
    private: [u8; 32],
    public: [u8; 32],
}

impl KeyPair {
    /// A fresh key pair from /dev/urandom, clamped like `wg genkey`.
    pub fn generate() -> KeyPair {
        let mut b = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("reading /dev/urandom");
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        Self::from_private(b)
    }

    pub fn from_private(private: [u8; 32]) -> KeyPair {
        let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
        KeyPair { private, public }
    }

    pub fn from_private_b64(s: &str) -> Result<KeyPair> {
        Ok(Self::from_private(decode_key(s)?))
    }

    pub fn private_bytes(&self) -> [u8; 32] {
        self.private
    }

    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    pub fn private_b64(&self) -> String {
        B64.encode(self.private)
    }

    pub fn public_b64(&self) -> String {
        B64.encode(self.public)
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair(public {})", self.public_b64())
    }
}

/// The public key of a base64 private key (what `wg pubkey` prints).
pub fn public_key_b64(private_b64: &str) -> Result<String> {
    Ok(KeyPair::from_private_b64(private_b64)?.public_b64())
}

pub(crate) fn decode_key(s: &str) -> Result<[u8; 32]> {
    let v = B64.decode(s.trim()).with_context(|| format!("key {s:?} is not base64"))?;
    if v.len() != 32 {
        bail!("key {s:?} is {} bytes, not 32", v.len());
    }
    let mut k = [0u8; 32];
    k.copy_from_slice(&v);
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 section 6.1, Alice.
        let sk = hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let pk = hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(KeyPair::from_private(sk).public_bytes(), pk);
    }

    #[test]
    fn base64_roundtrip_and_clamping() {
        let k = KeyPair::generate();
        let again = KeyPair::from_private_b64(&k.private_b64()).unwrap();
        assert_eq!(again.public_b64(), k.public_b64());
        assert_eq!(k.private_b64().len(), 44);
        let p = k.private_bytes();
        assert_eq!(p[0] & 7, 0);
        assert_eq!(p[31] & 0xc0, 0x40);
        assert!(decode_key("AAAA").is_err());
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
