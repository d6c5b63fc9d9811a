//! Intel's libipsec-mb ChaCha20-Poly1305, one message at a time: a *reference* for benchmarks
//! (feature `ipsec-mb`, off by default; needs the library and its header, Debian's
//! `libipsec-mb-dev`). Not used by the crate's own paths.
//!
//! The library's API is macros over function pointers in its manager, so a small C shim
//! (`ipsec_mb_shim.c`, built by `build.rs`) calls them: one job per message through the job API
//! (submitted, flushed if held back), its fastest way to run one message; this module wraps the
//! shim.

use core::ffi::c_int;

use crate::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// The library's opaque manager (`IMB_MGR`).
#[repr(C)]
struct ImbMgr {
    _opaque: [u8; 0],
}

// SAFETY: these declarations match the definitions in `ipsec_mb_shim.c` (same names, argument
// and return types, C ABI), which `build.rs` compiles and links into this crate; every call site
// states what it passes.
extern "C" {
    fn wgpmd_imb_new(arch: *mut c_int) -> *mut ImbMgr;
    fn wgpmd_imb_free(m: *mut ImbMgr);
    #[allow(clippy::too_many_arguments)]
    fn wgpmd_imb_chacha20_poly1305(
        m: *mut ImbMgr,
        key: *const u8,
        iv: *const u8,
        aad: *const u8,
        aad_len: u64,
        buf: *mut u8,
        len: u64,
        tag: *mut u8,
        decrypt: c_int,
    ) -> c_int;
}

/// A libipsec-mb manager, initialised for the best architecture the CPU runs.
pub struct IpsecMb {
    mgr: *mut ImbMgr,
    arch: c_int,
}

impl IpsecMb {
    /// A manager, or `None` if the library could not make one.
    pub fn new() -> Option<Self> {
        let mut arch: c_int = 0;
        // SAFETY: `wgpmd_imb_new` writes `arch` only (a valid `c_int`) and returns an owned
        // manager or NULL.
        let mgr = unsafe { wgpmd_imb_new(&mut arch) };
        (!mgr.is_null()).then_some(IpsecMb { mgr, arch })
    }

    /// The code path the library chose: "sse", "avx", "avx2", "avx512" (or "other").
    pub fn arch(&self) -> &'static str {
        match self.arch {
            2 => "sse",
            3 => "avx",
            4 => "avx2",
            5 => "avx512",
            _ => "other",
        }
    }

    fn run(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        decrypt: bool,
    ) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        // The library's manager is not thread-safe: `self` is borrowed mutably.
        // The call reads and writes nothing but the pointers and lengths it is given, and
        // leaves no job in the manager (it flushes the one it submits).
        // SAFETY: `mgr` is live (owned by `self`); key (32 B), nonce (12), tag (16), aad and buf are valid.
        let status = unsafe {
            wgpmd_imb_chacha20_poly1305(
                self.mgr,
                key.as_ptr(),
                nonce.as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                buf.as_mut_ptr(),
                buf.len() as u64,
                tag.as_mut_ptr(),
                c_int::from(decrypt),
            )
        };
        assert_eq!(status, 0, "libipsec-mb did not complete the ChaCha20-Poly1305 job");
        tag
    }

    /// Seals `buf` in place; returns the tag. Panics if the library does not complete the job
    /// (it checks the arguments; these are always well formed).
    pub fn seal(&mut self, key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
        self.run(key, nonce, aad, buf, false)
    }

    /// Opens `buf` in place and checks `tag` (in constant time). The library decrypts while it
    /// authenticates: on a false return `buf` holds unauthenticated plaintext (a benchmark
    /// reference, not for the data path).
    pub fn open(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> bool {
        use subtle::ConstantTimeEq;
        let t = self.run(key, nonce, aad, buf, true);
        bool::from(t.ct_eq(tag))
    }
}

impl Drop for IpsecMb {
    fn drop(&mut self) {
        // SAFETY: `mgr` came from `wgpmd_imb_new` and is freed once, here.
        unsafe { wgpmd_imb_free(self.mgr) }
    }
}

#[cfg(test)]
mod tests {
    use super::IpsecMb;
    use crate::{portable, wireguard_nonce};

    /// The shim against the crate's portable RFC 8439 reference: the same ciphertext and tag for
    /// every length around the block sizes and the WireGuard sizes, with and without additional
    /// data; opening verifies and restores the plaintext; a changed tag or byte is refused.
    #[test]
    fn matches_the_portable_reference() {
        let mut imb = IpsecMb::new().expect("a libipsec-mb manager on this CPU");
        let key: [u8; 32] = core::array::from_fn(|i| i as u8 * 7 + 1);
        let aad: Vec<u8> = (0..32u8).collect();
        let lens = (0..=130).chain([255, 256, 257, 511, 512, 1024, 1420, 1436, 4000]);
        for (n, len) in lens.enumerate() {
            for aad in [&[][..], &aad[..13], &aad[..]] {
                let nonce = wireguard_nonce(n as u64 * 977);
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
                let (mut ours, mut theirs) = (plain.clone(), plain.clone());
                let tag = portable::seal(&key, &nonce, aad, &mut ours);
                assert_eq!(imb.seal(&key, &nonce, aad, &mut theirs), tag, "tag, {len} B, aad {}", aad.len());
                assert_eq!(theirs, ours, "ciphertext, {len} B");
                assert!(imb.open(&key, &nonce, aad, &mut theirs, &tag), "open, {len} B");
                assert_eq!(theirs, plain, "plaintext, {len} B");
                let mut bad = tag;
                bad[n % 16] ^= 1;
                let mut c = ours.clone();
                assert!(!imb.open(&key, &nonce, aad, &mut c, &bad), "forged tag accepted, {len} B");
                if len > 0 {
                    let mut c = ours.clone();
                    c[n % len] ^= 0x80;
                    assert!(!imb.open(&key, &nonce, aad, &mut c, &tag), "changed byte accepted, {len} B");
                }
            }
        }
    }
}
