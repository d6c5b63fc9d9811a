/* The DPDK headers wgpmd binds (allowlisted in build.rs) and our own shim declarations. */
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_memzone.h>
#include "shim.h"
