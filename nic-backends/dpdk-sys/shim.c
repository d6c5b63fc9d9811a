#include <rte_errno.h>
#include <rte_mbuf.h>
#include "shim.h"

int wgpmd_rte_errno(void) { return rte_errno; }

uint16_t wgpmd_pktmbuf_headroom(void) { return RTE_PKTMBUF_HEADROOM; }

void wgpmd_mbuf_get(const struct rte_mbuf *m, void **buf_addr, uint16_t *data_off, uint16_t *data_len,
		    uint16_t *nb_segs, struct rte_mempool **pool, uint16_t *refcnt)
{
	*refcnt = rte_mbuf_refcnt_read(m);
	*buf_addr = m->buf_addr;
	*data_off = m->data_off;
	*data_len = m->data_len;
	*nb_segs = m->nb_segs;
	*pool = m->pool;
}

void wgpmd_mbuf_prepare_tx(struct rte_mbuf *m, uint16_t off, uint16_t len)
{
	rte_pktmbuf_reset(m);
	m->data_off = off;
	m->data_len = len;
	m->pkt_len = len;
}
