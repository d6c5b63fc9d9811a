// SPDX-License-Identifier: MIT OR Apache-2.0
//
// wgpmd's XDP program for the `af_xdp:IFACE` WAN port. It steers into the AF_XDP sockets
// (through the XSKMAP, keyed by receive queue) only what wgpmd consumes:
//   - UDP to wgpmd's listen port on its IPv4/IPv6 address (not fragmented);
//   - ARP replies and IPv6 neighbour advertisements that answer a resolution wgpmd itself
//     started (the port puts the address it asks for in `wgpmd_wanted` when it sends the
//     request; the first answer is steered and the entry removed).
// Everything else is passed to the kernel, which keeps the interface, its address, SSH,
// routing and its own neighbour resolution (it answers ARP/ND for the shared address).
//
// Built by nic-backends/build.rs with `clang -O2 -g -target bpf` (Debian: clang, libbpf-dev,
// linux-libc-dev); loaded by the aya crate.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Byte layout shared with src/af_xdp.rs (`steer_config`): 32 bytes.
struct steer_config {
	__u32 addr4;    // network order
	__u8 addr6[16];
	__u16 port;     // network order
	__u8 has4;
	__u8 has6;
	__u16 vlan;     // VLAN id (host order), 0: untagged frames only
	__u16 pad0;
	__u32 pad1;
};

struct ip_key {
	__u8 a[16];     // IPv6, or IPv4-mapped ::ffff:a.b.c.d
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct steer_config);
} wgpmd_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} wgpmd_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ip_key);
	__type(value, __u8);
} wgpmd_wanted SEC(".maps");

// 0: steered, 1: for wgpmd but no socket on the receive queue (passed), 2: answers steered.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} wgpmd_stats SEC(".maps");

#define ETH_P_8021Q_ 0x8100
#define ETH_P_8021AD_ 0x88A8
#define ARP_BODY 28

static __always_inline void count(__u32 i)
{
	__u64 *c = bpf_map_lookup_elem(&wgpmd_stats, &i);
	if (c)
		*c += 1;
}

// A 16-byte comparison without a libcall (clang may turn __builtin_memcmp into one).
static __always_inline int same16(const __u8 *a, const __u8 *b)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static __always_inline int steer(struct xdp_md *ctx, __u32 which)
{
	__u32 q = ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&wgpmd_xsks, &q)) {
		count(1);
		return XDP_PASS;
	}
	count(which);
	return bpf_redirect_map(&wgpmd_xsks, q, XDP_PASS);
}

static __always_inline int wanted_answer(struct ip_key *k)
{
	if (!bpf_map_lookup_elem(&wgpmd_wanted, k))
		return 0;
	bpf_map_delete_elem(&wgpmd_wanted, k);
	return 1;
}

SEC("xdp")
int wgpmd_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct steer_config *cfg = bpf_map_lookup_elem(&wgpmd_cfg, &zero);
	if (!cfg)
		return XDP_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q_) || proto == bpf_htons(ETH_P_8021AD_)) {
		__u16 *tag = l3;
		if ((void *)(tag + 2) > end)
			return XDP_PASS;
		if ((bpf_ntohs(tag[0]) & 0x0fff) != cfg->vlan || cfg->vlan == 0)
			return XDP_PASS;
		proto = tag[1];
		l3 = tag + 2;
	} else if (cfg->vlan != 0) {
		return XDP_PASS;
	}

	if (proto == bpf_htons(ETH_P_IP) && cfg->has4) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
			return XDP_PASS;
		if (ip->daddr != cfg->addr4 || ip->protocol != IPPROTO_UDP)
			return XDP_PASS;
		if (ip->frag_off & bpf_htons(0x3fff))
			return XDP_PASS; // fragments: the kernel's
		struct udphdr *udp = (void *)ip + ip->ihl * 4;
		if ((void *)(udp + 1) > end || udp->dest != cfg->port)
			return XDP_PASS;
		return steer(ctx, 0);
	}
	if (proto == bpf_htons(ETH_P_IPV6) && cfg->has6) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return XDP_PASS;
		if (!same16((const __u8 *)&ip6->daddr, cfg->addr6))
			return XDP_PASS;
		if (ip6->nexthdr == IPPROTO_UDP) {
			struct udphdr *udp = (void *)(ip6 + 1);
			if ((void *)(udp + 1) > end || udp->dest != cfg->port)
				return XDP_PASS;
			return steer(ctx, 0);
		}
		if (ip6->nexthdr == IPPROTO_ICMPV6) {
			// Neighbour advertisement (136): type, code, checksum, flags, target.
			__u8 *icmp = (void *)(ip6 + 1);
			if ((void *)(icmp + 24) > end || icmp[0] != 136 || icmp[1] != 0)
				return XDP_PASS;
			struct ip_key k;
			__builtin_memcpy(k.a, icmp + 8, 16);
			if (wanted_answer(&k))
				return steer(ctx, 2);
		}
		return XDP_PASS;
	}
	if (proto == bpf_htons(ETH_P_ARP) && cfg->has4) {
		__u8 *arp = l3;
		if ((void *)(arp + ARP_BODY) > end)
			return XDP_PASS;
		// Ethernet/IPv4 reply (op 2) to our address.
		if (arp[0] != 0 || arp[1] != 1 || arp[2] != 0x08 || arp[3] != 0 || arp[6] != 0 || arp[7] != 2)
			return XDP_PASS;
		__u32 tpa;
		__builtin_memcpy(&tpa, arp + 24, 4);
		if (tpa != cfg->addr4)
			return XDP_PASS;
		struct ip_key k = {};
		k.a[10] = 0xff;
		k.a[11] = 0xff;
		__builtin_memcpy(&k.a[12], arp + 14, 4);
		if (wanted_answer(&k))
			return steer(ctx, 2);
		return XDP_PASS;
	}
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual MIT/GPL";
