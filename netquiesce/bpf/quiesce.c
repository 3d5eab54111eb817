//go:build ignore

// eBPF network lock for a job-node sandbox.
//
// While lock_state[0] != 0 every packet that reaches one of these programs is
// dropped and counted in `counters`, indexed by direction * 4 + protocol
// (direction 0 ingress, 1 egress; protocol 0 tcp, 1 udp, 2 icmp/icmpv6,
// 3 other). While unlocked the programs count nothing and let packets go on.
//
// Two attachments share the same logic:
//   - TCX ingress/egress on an interface: skb data starts at the Ethernet
//     header, the IP header follows at ETH_HLEN.
//   - cgroup_skb ingress/egress on a cgroup v2 directory, for jobs without a
//     network namespace of their own: skb data starts at the IP header.

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_INGRESS 0
#define DIR_EGRESS 1
#define NPROTO 4

struct counter {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * NPROTO);
	__type(key, __u32);
	__type(value, struct counter);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lock_state SEC(".maps");

static __always_inline __u32 proto_index(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return 0;
	case IPPROTO_UDP:
		return 1;
	case IPPROTO_ICMP:
	case 58: /* IPPROTO_ICMPV6 */
		return 2;
	default:
		return 3;
	}
}

// locked_drop returns 1 when the packet must be dropped, after counting it.
// l3 is the offset of the IP header from skb->data.
static __always_inline int locked_drop(struct __sk_buff *skb, __u32 dir, __u32 l3)
{
	__u32 zero = 0;
	__u32 *locked = bpf_map_lookup_elem(&lock_state, &zero);
	if (!locked || !*locked)
		return 0;

	__u8 proto = 255; /* not IP: "other" */
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (bpf_skb_load_bytes(skb, l3 + 9, &proto, 1) < 0)
			proto = 255;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (bpf_skb_load_bytes(skb, l3 + 6, &proto, 1) < 0)
			proto = 255;
	}

	__u32 idx = dir * NPROTO + proto_index(proto);
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);
	if (c) {
		c->packets += 1; /* per-CPU slot: no atomics needed */
		c->bytes += skb->len;
	}
	return 1;
}

/* TCX verdicts: TC_ACT_UNSPEC = TCX_NEXT (let later programs decide),
 * TC_ACT_SHOT = TCX_DROP. */
SEC("tcx/ingress")
int tcx_ingress(struct __sk_buff *skb)
{
	return locked_drop(skb, DIR_INGRESS, ETH_HLEN) ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

SEC("tcx/egress")
int tcx_egress(struct __sk_buff *skb)
{
	return locked_drop(skb, DIR_EGRESS, ETH_HLEN) ? TC_ACT_SHOT : TC_ACT_UNSPEC;
}

/* cgroup_skb verdicts: 1 allow, 0 drop. */
SEC("cgroup_skb/ingress")
int cgroup_ingress(struct __sk_buff *skb)
{
	return locked_drop(skb, DIR_INGRESS, 0) ? 0 : 1;
}

SEC("cgroup_skb/egress")
int cgroup_egress(struct __sk_buff *skb)
{
	return locked_drop(skb, DIR_EGRESS, 0) ? 0 : 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
