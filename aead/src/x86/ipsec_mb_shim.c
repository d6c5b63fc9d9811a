/* The reference single-buffer ChaCha20-Poly1305 of Intel's libipsec-mb, for benchmarks only
 * (feature `ipsec-mb`). Its API is a set of macros over function pointers in the IMB_MGR, so
 * Rust reaches it through these three C functions. */
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
 * (computed over the ciphertext either way); 0 when the job completed, else the job's status.
 * One job through the library's job API (submitted, then flushed if the manager held it back:
 * one message at a time), the way its own tests and DPDK's and VPP's engines run the AEAD; the
 * direct API (init, update, finalize over a context) costs about twice as much at 64 bytes. */
int wgpmd_imb_chacha20_poly1305(IMB_MGR *m, const uint8_t *key, const uint8_t *iv, const uint8_t *aad,
                                uint64_t aad_len, uint8_t *buf, uint64_t len, uint8_t *tag, int decrypt)
{
        IMB_JOB *job = IMB_GET_NEXT_JOB(m);

        job->cipher_direction = decrypt ? IMB_DIR_DECRYPT : IMB_DIR_ENCRYPT;
        job->chain_order = decrypt ? IMB_ORDER_HASH_CIPHER : IMB_ORDER_CIPHER_HASH;
        job->cipher_mode = IMB_CIPHER_CHACHA20_POLY1305;
        job->hash_alg = IMB_AUTH_CHACHA20_POLY1305;
        job->enc_keys = key;
        job->dec_keys = key;
        job->key_len_in_bytes = 32;
        job->u.CHACHA20_POLY1305.aad = aad;
        job->u.CHACHA20_POLY1305.aad_len_in_bytes = aad_len;
        job->src = buf;
        job->dst = buf;
        job->iv = iv;
        job->iv_len_in_bytes = 12;
        job->cipher_start_src_offset_in_bytes = 0;
        job->msg_len_to_cipher_in_bytes = len;
        job->hash_start_src_offset_in_bytes = 0;
        job->msg_len_to_hash_in_bytes = len;
        job->auth_tag_output = tag;
        job->auth_tag_output_len_in_bytes = 16;

        job = IMB_SUBMIT_JOB(m);
        if (job == NULL)
                job = IMB_FLUSH_JOB(m);
        if (job == NULL)
                return -1;
        return job->status == IMB_STATUS_COMPLETED ? 0 : (int) job->status;
}
