//! Software prefetch for callers' own data structures: a data path that looks up a whole burst's
//! table entries first can start every entry's cache miss at once and touch them afterwards (the
//! DPDK way of hiding misses across a burst). Safe to call with any pointer: a prefetch is a
//! hint that never faults and changes no state a program can observe, only the caches. A no-op
//! on other architectures than x86-64.
//!
//! The instructions themselves are in the crate's `x86` module (the crate's only `unsafe`).

/// Start loading the cache line holding `*r`.
#[inline(always)]
pub fn read<T: ?Sized>(r: &T) {
    read_ptr(core::ptr::from_ref(r).cast::<u8>());
}

/// Start loading the cache line holding `*r` for writing (exclusive, with PREFETCHW where the
/// build enables `prfchw`; a plain prefetch otherwise), ahead of a store or an atomic
/// read-modify-write of it.
#[inline(always)]
pub fn write<T: ?Sized>(r: &T) {
    write_ptr(core::ptr::from_ref(r).cast::<u8>());
}

/// Start loading the cache line holding address `p`. `p` need not be valid: nothing is read.
#[inline(always)]
pub fn read_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    crate::x86::prefetch_read(p.cast());
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Start loading the cache line holding address `p` for writing. `p` need not be valid.
#[inline(always)]
pub fn write_ptr<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    crate::x86::prefetch_write(p.cast());
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_address_is_fine_and_nothing_changes() {
        // A prefetch must not fault: null, unmapped, dangling and kernel addresses included (a
        // load instead of a prefetch would crash this test).
        for addr in [0usize, 8, 0x1000, usize::MAX - 63, 0xffff_8000_0000_0000, 0xdead_beef_0000] {
            read_ptr(addr as *const u8);
            write_ptr(addr as *const u64);
        }
        let v = vec![7u64; 1024];
        for x in v.iter().step_by(8) {
            read(x);
            write(x);
        }
        read(&v[..]);
        assert!(v.iter().all(|&x| x == 7));
        let freed = {
            let b = Box::new([1u8; 4096]);
            b.as_ptr()
        };
        read_ptr(freed);
        write_ptr(freed);
    }
}
