/* What bindgen cannot wrap (macros, TLS) and small mbuf field accessors, so the Rust side never
 * depends on the layout of rte_mbuf's anonymous unions. Implemented in shim.c. */
#include <stdint.h>
struct rte_mbuf;
struct rte_mempool;
/* rte_errno (a per-lcore TLS macro). */
int wgpmd_rte_errno(void);
/* RTE_PKTMBUF_HEADROOM as built into this DPDK. */
uint16_t wgpmd_pktmbuf_headroom(void);
/* buf_addr, data_off, data_len, nb_segs, pool and reference count of a received mbuf. */
void wgpmd_mbuf_get(const struct rte_mbuf *m, void **buf_addr, uint16_t *data_off, uint16_t *data_len,
		    uint16_t *nb_segs, struct rte_mempool **pool, uint16_t *refcnt);
/* Reset m (keeps the pinned-external-buffer flag) and make it one segment of len bytes at off. */
void wgpmd_mbuf_prepare_tx(struct rte_mbuf *m, uint16_t off, uint16_t len);
