/* The reference single-buffer ChaCha20-Poly1305 of Intel's libipsec-mb, for benchmarks only
 * (feature `ipsec-mb`). Its direct AEAD API is a set of macros over function pointers in the
 * IMB_MGR, so Rust reaches it through these three C functions. */
#include <stdint.h>
#include <intel-ipsec-mb.h>

/* A manager initialised for the best architecture this CPU runs (NULL on failure); `arch` gets
 * the one chosen (IMB_ARCH_*). */
IMB_MGR *wgpmd_imb_new(int *arch)
{
        IMB_ARCH a = IMB_ARCH_NONE;
        IMB_MGR *m = alloc_mb_mgr(0);

        if (m == NULL)
                return NULL;
        init_mb_mgr_auto(m, &a);
        if (imb_get_errno(m) != 0) {
                free_mb_mgr(m);
                return NULL;
        }
        *arch = (int) a;
        return m;
}

void wgpmd_imb_free(IMB_MGR *m)
{
        free_mb_mgr(m);
}

/* Seals `len` bytes of `buf` in place (decrypt != 0: opens them) and writes the 16-byte tag
 * (computed over the ciphertext either way). */
void wgpmd_imb_chacha20_poly1305(IMB_MGR *m, const uint8_t *key, const uint8_t *iv, const uint8_t *aad,
                                 uint64_t aad_len, uint8_t *buf, uint64_t len, uint8_t *tag, int decrypt)
{
        struct chacha20_poly1305_context_data ctx;

        IMB_CHACHA20_POLY1305_INIT(m, key, &ctx, iv, aad, aad_len);
        if (decrypt)
                IMB_CHACHA20_POLY1305_DEC_UPDATE(m, key, &ctx, buf, buf, len);
        else
                IMB_CHACHA20_POLY1305_ENC_UPDATE(m, key, &ctx, buf, buf, len);
        IMB_CHACHA20_POLY1305_ENC_FINALIZE(m, &ctx, tag, 16);
        imb_clear_mem(&ctx, sizeof(ctx));
}
