// SPDX-License-Identifier: GPL-2.0
//
// Tessera's TC-eBPF fast path (`tessera agent --dataplane ebpf`).
//
// Four programs, three at TC ingress and one at egress (direct action):
//
// - `from_container`, on the host side of every endpoint's veth (`tv...`):
//   an IPv4 or IPv6 packet of a flow the kernel path already allowed (the
//   agent reflects conntrack's established flows into `ts_flows`), from the
//   port's own MAC and address, to an endpoint the network reaches (its own
//   or one of a network it imports), is sent straight to
//   the destination: into a local container's namespace with
//   `bpf_redirect_peer`, or to the destination host through the
//   metadata-mode VXLAN device with `bpf_skb_set_tunnel_key`. Everything
//   else (new flows, TCP SYN, FIN and RST, spoofed sources, other
//   protocols, fragments, IPv4 options and IPv6 extension headers,
//   destinations outside the network) goes on
//   through the kernel path, which judges it.
// - `from_tunnel`, on the metadata-mode VXLAN device (`tfast`): a packet of
//   a flow this host's kernel path also allowed (both ends judge) goes
//   straight into the local container; anything else is handed to the
//   network's own VXLAN device (`tx<vni>`) as if it had arrived there, so
//   the kernel path judges it exactly as before.
// - `from_underlay`, on the device that holds the host's underlay address:
//   a datagram on the fast path's port from the host of its inner packet's
//   source, of a flow this host's kernel path also allowed, to a local
//   endpoint, is decapsulated there and goes straight into the container
//   (the host's input path, the UDP socket, `tfast` and its GRO cell never
//   see it); one on the networks' own port from the host of its inner
//   packet's source, of ICMP or a TCP segment without data (a new
//   connection's handshake), is decapsulated there and handed to the
//   network's VXLAN device, where the kernel path takes it as before (the
//   host's input path, the UDP socket and `vxlan_rcv` never see it);
//   anything else goes on through the host's stack.
// - `to_underlay`, at the egress of each network's VXLAN device
//   (`tx<vni>`): a packet the kernel path sends to another host (it passed
//   this host's rules), not a GSO one, for an endpoint whose host is the
//   one the device's forwarding entry for the frame's destination MAC
//   names, is encapsulated as the device would (the same VNI, addresses,
//   port range, TTL, ECN and zero UDP checksum) and sent on the underlay
//   device with `bpf_redirect_neigh`, sparing it `vxlan_xmit`'s route
//   lookup and the host's output hooks for the datagram. A new
//   connection's handshake takes this way. GSO packets (a kernel-path
//   stream's), and anything else, go on through the device.
//
// Counters: every packet sent by the fast path adds to its flow's entry
// (packets and IP bytes, as conntrack counts them), so flow records and
// per-endpoint byte counts stay exact.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

// Keys and values, laid out exactly as `tessera_dataplane::fastpath` writes
// them (all addresses in network byte order; an IPv4 address as the
// IPv4-mapped IPv6 address ::ffff:a.b.c.d, in 16 bytes).

// An endpoint's address on the host side of its veth: anti-spoofing and the
// packet's network.
struct src_key {
	__u32 ifindex;
	__u8 addr[16];
};
struct src_val {
	__u8 mac[6];
	__u16 pad;
	__u32 vni;
};

// An endpoint a network reaches (its own, or one of a network whose routes
// it imports): local (`ifindex` of its host veth) or on the host with
// underlay address `underlay`; `vni` is the endpoint's own network, whose
// gateway MAC it sees and whose VNI the tunnel carries.
struct dst_key {
	__u32 vni;
	__u8 addr[16];
};
struct dst_val {
	__u32 ifindex;
	__u32 underlay;
	// The endpoint's MAC (local) or the remote host's VTEP MAC.
	__u8 mac[6];
	__u16 pad;
	__u32 vni;
};

// One direction of an allowed flow.
struct flow_key {
	__u32 vni;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};
struct flow_val {
	__u64 packets;
	__u64 bytes;
	// Set by the first FIN or RST: the connection is closing, and its
	// remaining packets take the kernel path, so conntrack sees its end.
	__u32 closing;
	__u32 pad;
};

// This host: the metadata-mode VXLAN device, its underlay address and the
// MAC of its VXLAN devices.
struct config {
	__u32 md_ifindex;
	__u32 underlay;
	__u8 vtep_mac[6];
	// The length of the underlay address's prefix: the other hosts in it
	// are its neighbours (0 when unknown).
	__u8 underlay_prefix;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct src_key);
	__type(value, struct src_val);
} ts_src SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct dst_key);
	__type(value, struct dst_val);
} ts_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} ts_flows SEC(".maps");

// What the fast path delivered into the container behind a host port
// (`bpf_redirect_peer` skips the port's own transmit, and so its link
// counters): packets and bytes as the link counts them, by the port's
// index. The agent makes an entry per port it attaches to.
struct port_val {
	__u64 packets;
	__u64 bytes;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct port_val);
} ts_ports SEC(".maps");

// VNI -> ifindex of the network's VXLAN device `tx<vni>` on this host.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} ts_tunnels SEC(".maps");

// The ifindex of a network's VXLAN device `tx<vni>` -> what `to_underlay`
// encapsulates its packets with.
struct encap_val {
	__u32 vni;
	// The device the network's VXLAN devices send through.
	__u32 underlay_ifindex;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct encap_val);
} ts_encap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} ts_config SEC(".maps");

#define IP_CSUM_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, check))
#define IP_TTL_OFF (ETH_HLEN + __builtin_offsetof(struct iphdr, ttl))
#define IP6_HOPS_OFF (ETH_HLEN + __builtin_offsetof(struct ipv6hdr, hop_limit))
#define TCP_FLAGS_OFF 13
#define TCP_SYN 0x02
#define TCP_FIN 0x01
#define TCP_RST 0x04
// The fast path's tunnel port (`tessera_dataplane::fastpath::FASTPATH_PORT`).
#define FASTPATH_PORT 4799
// The networks' own VXLAN port (`tessera_dataplane::desired::VXLAN_PORT`).
#define VXLAN_PORT 4789
// VXLAN's flags word with the VNI-present flag, as the kernel sends it.
#define VXLAN_FLAGS 0x08000000
// Where a fast-path datagram's inner Ethernet header begins: after the
// outer Ethernet, IPv4 (without options), UDP and VXLAN headers. It is also
// what decapsulation removes after the outer Ethernet header (IPv4, UDP,
// VXLAN and the inner Ethernet header), as both Ethernet headers are as long.
#define OUTER_LEN (ETH_HLEN + 20 + 8 + 8)
// `BPF_F_ADJ_ROOM_DECAP_L3_IPV6` (Linux 6.3; older headers lack it, and
// older kernels refuse it, leaving the packet as it was).
#define ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)

// The gateway MAC of network `vni` (its bridge's): 0e:01:VNI:01, as
// `tessera_dataplane::desired::bridge_mac`.
static __always_inline void bridge_mac(__u32 vni, __u8 mac[6])
{
	mac[0] = 0x0e;
	mac[1] = 0x01;
	mac[2] = (vni >> 16) & 0xff;
	mac[3] = (vni >> 8) & 0xff;
	mac[4] = vni & 0xff;
	mac[5] = 0x01;
}

// What the fast path needs of a packet.
struct packet {
	struct flow_key key;
	// 4 or 6.
	__u8 family;
	__u8 tcp_flags;
};

static __always_inline void mapped(__u8 out[16], __u32 v4)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &v4, 4);
}

// The flow of the IPv4 or IPv6 TCP or UDP packet whose Ethernet header is
// `off` bytes into the packet (under `vni`), and whether it is a TCP FIN or
// RST (the connection ends); 0 when the packet must take the kernel path (a
// TCP SYN among them).
static __always_inline int parse(struct __sk_buff *skb, __u32 off, __u32 vni, struct packet *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data + off;
	if ((void *)(eth + 1) > end)
		return 0;
	__u16 *ports;
	__u8 proto;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)) || ip->ttl <= 1)
			return 0;
		mapped(p->key.saddr, ip->saddr);
		mapped(p->key.daddr, ip->daddr);
		proto = ip->protocol;
		ports = (void *)(ip + 1);
		p->family = 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->hop_limit <= 1)
			return 0;
		__builtin_memcpy(p->key.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->key.daddr, &ip6->daddr, 16);
		proto = ip6->nexthdr;
		ports = (void *)(ip6 + 1);
		p->family = 6;
	} else {
		return 0;
	}
	if ((void *)(ports + 2) > end)
		return 0;
	if (proto == IPPROTO_TCP) {
		__u8 *flags = (__u8 *)ports + TCP_FLAGS_OFF;
		if ((void *)(flags + 1) > end || (*flags & TCP_SYN))
			return 0;
		p->tcp_flags = *flags;
	} else if (proto != IPPROTO_UDP) {
		return 0;
	}
	p->key.vni = vni;
	p->key.sport = ports[0];
	p->key.dport = ports[1];
	p->key.proto = proto;
	return 1;
}

// The flow's entry when the fast path carries the packet: none for a flow
// it does not carry or one that is closing. A FIN or RST marks both
// directions closing and goes the kernel path.
static __always_inline struct flow_val *carried(struct flow_key *fk, __u8 tcp_flags)
{
	struct flow_val *flow = bpf_map_lookup_elem(&ts_flows, fk);
	if (!flow || flow->closing)
		return 0;
	if (tcp_flags & (TCP_FIN | TCP_RST)) {
		flow->closing = 1;
		struct flow_key back = {
			.vni = fk->vni,
			.sport = fk->dport,
			.dport = fk->sport,
			.proto = fk->proto,
		};
		__builtin_memcpy(back.saddr, fk->daddr, 16);
		__builtin_memcpy(back.daddr, fk->saddr, 16);
		struct flow_val *reply = bpf_map_lookup_elem(&ts_flows, &back);
		if (reply)
			reply->closing = 1;
		return 0;
	}
	return flow;
}

// Counts the packet on its flow and decrements the TTL or hop limit, as
// routing does.
static __always_inline int forward(struct __sk_buff *skb, struct flow_val *flow, __u8 family)
{
	__sync_fetch_and_add(&flow->packets, 1);
	__sync_fetch_and_add(&flow->bytes, skb->len - ETH_HLEN);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (family == 6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return -1;
		__u8 hops = ip6->hop_limit - 1;
		return bpf_skb_store_bytes(skb, IP6_HOPS_OFF, &hops, 1, 0);
	}
	struct iphdr *ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end)
		return -1;
	// The 16-bit word of TTL and protocol, as it is in the packet.
	__u16 old = *(__u16 *)&ip->ttl;
	__u8 word[2] = { ip->ttl - 1, ip->protocol };
	__u16 new = *(__u16 *)word;
	if (bpf_skb_store_bytes(skb, IP_TTL_OFF, word, 1, 0) < 0)
		return -1;
	return bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, 2);
}

static __always_inline int same_mac(const __u8 a[6], const __u8 b[6])
{
	return *(__u32 *)a == *(__u32 *)b && *(__u16 *)(a + 4) == *(__u16 *)(b + 4);
}

// Into the container behind host port `ifindex`, counted on the port.
static __always_inline int deliver(struct __sk_buff *skb, __u32 ifindex)
{
	struct port_val *port = bpf_map_lookup_elem(&ts_ports, &ifindex);
	if (port) {
		__sync_fetch_and_add(&port->packets, 1);
		__sync_fetch_and_add(&port->bytes, skb->len);
	}
	return bpf_redirect_peer(ifindex, 0);
}

static __always_inline int set_macs(struct __sk_buff *skb, const __u8 dst[6], const __u8 src[6])
{
	if (bpf_skb_store_bytes(skb, 0, dst, 6, 0) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, 6, src, 6, 0);
}

// Into local endpoint `dst` from its gateway, counted on `flow`, its TTL or
// hop limit decremented.
static __always_inline int to_local(struct __sk_buff *skb, struct flow_val *flow, __u8 family, const struct dst_val *dst)
{
	if (forward(skb, flow, family) < 0)
		return TC_ACT_SHOT;
	__u8 gw[6];
	bridge_mac(dst->vni, gw);
	if (set_macs(skb, dst->mac, gw) < 0)
		return TC_ACT_SHOT;
	return deliver(skb, dst->ifindex);
}

SEC("classifier")
int from_container(struct __sk_buff *skb)
{
	struct packet p = {};
	if (!parse(skb, 0, 0, &p))
		return TC_ACT_OK;
	struct src_key sk = { .ifindex = skb->ifindex };
	__builtin_memcpy(sk.addr, p.key.saddr, 16);
	struct src_val *src = bpf_map_lookup_elem(&ts_src, &sk);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if (!src || (void *)(eth + 1) > end || !same_mac(src->mac, eth->h_source))
		return TC_ACT_OK;
	p.key.vni = src->vni;
	struct flow_val *flow = carried(&p.key, p.tcp_flags);
	if (!flow)
		return TC_ACT_OK;
	struct dst_key dk = { .vni = p.key.vni };
	__builtin_memcpy(dk.addr, p.key.daddr, 16);
	struct dst_val *dst = bpf_map_lookup_elem(&ts_dst, &dk);
	if (!dst)
		return TC_ACT_OK;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ts_config, &zero);
	if (!cfg || (!dst->ifindex && !cfg->md_ifindex))
		return TC_ACT_OK;
	if (dst->ifindex)
		return to_local(skb, flow, p.family, dst);
	if (forward(skb, flow, p.family) < 0)
		return TC_ACT_SHOT;
	struct bpf_tunnel_key key = {};
	key.tunnel_id = dst->vni;
	key.remote_ipv4 = bpf_ntohl(dst->underlay);
	key.local_ipv4 = bpf_ntohl(cfg->underlay);
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return TC_ACT_SHOT;
	if (set_macs(skb, dst->mac, cfg->vtep_mac) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(cfg->md_ifindex, 0);
}

SEC("classifier")
int from_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return TC_ACT_SHOT;
	__u32 vni = key.tunnel_id;
	__u32 *tunnel = bpf_map_lookup_elem(&ts_tunnels, &vni);
	if (!tunnel)
		return TC_ACT_SHOT;
	__u32 tunnel_ifindex = *tunnel;
	struct packet p = {};
	if (parse(skb, 0, vni, &p)) {
		struct flow_val *flow = carried(&p.key, p.tcp_flags);
		struct dst_key dk = { .vni = vni };
		__builtin_memcpy(dk.addr, p.key.daddr, 16);
		struct dst_val *dst = flow ? bpf_map_lookup_elem(&ts_dst, &dk) : 0;
		if (flow && dst && dst->ifindex)
			return to_local(skb, flow, p.family, dst);
	}
	// The kernel path: as if it had come out of the network's own tunnel.
	return bpf_redirect(tunnel_ifindex, BPF_F_INGRESS);
}

struct vxlan {
	__be32 flags;
	__be32 vni;
};

// The VNI of a VXLAN datagram from another host of the fabric to this one,
// on the fast path's port or the networks' own, or 0 (it goes on through the
// host's stack). Only what the kernel would take the same way is taken: no
// IPv4 options or fragments, no ECN congestion mark (the kernel copies it to
// the inner header), a zero UDP checksum (the fast path and the networks'
// devices send none), lengths that fill the packet, the headers in the
// packet's linear part.
static __always_inline __u32 datagram(struct __sk_buff *skb, const struct config *cfg, __u16 *port, __be32 *from)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	struct vxlan *vx = (void *)(udp + 1);
	if ((void *)(vx + 1) > end || skb->pkt_type != 0 || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)) || (ip->tos & 3) == 3)
		return 0;
	if (ip->daddr != cfg->underlay || bpf_ntohs(ip->tot_len) != skb->len - ETH_HLEN)
		return 0;
	*port = bpf_ntohs(udp->dest);
	if ((*port != FASTPATH_PORT && *port != VXLAN_PORT) || udp->check || bpf_ntohs(udp->len) != skb->len - ETH_HLEN - 20)
		return 0;
	if (vx->flags != bpf_htonl(VXLAN_FLAGS) || (vx->vni & bpf_htonl(0xff)))
		return 0;
	*from = ip->saddr;
	return bpf_ntohl(vx->vni) >> 8;
}

// Whether the inner IPv4 or IPv6 packet's source is an endpoint network
// `vni` reaches on the host with underlay address `from`.
static __always_inline int from_its_host(__u32 vni, const __u8 saddr[16], __be32 from)
{
	struct dst_key sk = { .vni = vni };
	__builtin_memcpy(sk.addr, saddr, 16);
	struct dst_val *src = bpf_map_lookup_elem(&ts_dst, &sk);
	return src && !src->ifindex && src->underlay == from;
}

// Removes the outer IPv4, UDP and VXLAN headers and the inner Ethernet
// header, and gives the outer Ethernet header the inner packet's protocol.
// The GSO size stays the inner packet's; an IPv6 packet changes the packet's
// protocol. A refusal (-1) leaves the packet as it was; -2: it is damaged.
static __always_inline int decapsulate(struct __sk_buff *skb, __u8 family)
{
	__u64 l3 = family == 6 ? ADJ_ROOM_DECAP_L3_IPV6 : 0;
	if (bpf_skb_adjust_room(skb, -OUTER_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO | l3) < 0)
		return -1;
	__be16 proto = bpf_htons(family == 6 ? ETH_P_IPV6 : ETH_P_IP);
	return bpf_skb_store_bytes(skb, 12, &proto, 2, 0) < 0 ? -2 : 0;
}

// Whether a TCP segment whose header is at `tcp` carries no data (`len`:
// the IP payload's length) and is no reset: a handshake's segment, a bare
// acknowledgement, a FIN alone.
static __always_inline int no_data(struct tcphdr *tcp, void *end, __u16 len)
{
	if ((void *)(tcp + 1) > end)
		return 0;
	return !tcp->rst && len == tcp->doff * 4;
}

// Whether the inner packet at `eth` is one `to_tunnel` takes: ICMP, or TCP
// without data (see `no_data`), from the IPv4 or IPv6 source it gives.
// Datagrams the host's stack takes go on to the network's device through
// its GRO cell, another queue than the one these join, so a packet that
// comes after them may arrive first: for these that changes nothing (a
// bare acknowledgement before earlier data, a FIN before the data it
// follows, which TCP holds until the data comes). A reset could end a
// connection before its last data arrived; it keeps the stack.
static __always_inline int setup_packet(struct ethhdr *eth, void *end, __u8 saddr[16], __u8 *family)
{
	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return 0;
		mapped(saddr, ip->saddr);
		*family = 4;
		if (ip->protocol == IPPROTO_ICMP)
			return 1;
		return ip->protocol == IPPROTO_TCP && no_data((void *)(ip + 1), end, bpf_ntohs(ip->tot_len) - 20);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		__builtin_memcpy(saddr, &ip6->saddr, 16);
		*family = 6;
		if (ip6->nexthdr == IPPROTO_ICMPV6)
			return 1;
		return ip6->nexthdr == IPPROTO_TCP && no_data((void *)(ip6 + 1), end, bpf_ntohs(ip6->payload_len));
	}
	return 0;
}

// A datagram of network `vni`'s own tunnel, not a GSO packet, whose inner
// packet `setup_packet` takes and comes from an endpoint on the datagram's
// source host: decapsulated here and handed to the network's VXLAN device
// `tunnel` as if that device had received it, so the kernel path judges it
// there exactly as before, without the host's input path, the UDP socket
// and `vxlan_rcv`. A new connection's handshake takes this way.
static __always_inline int to_tunnel(struct __sk_buff *skb, __u32 vni, __be32 from, __u32 tunnel)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data + OUTER_LEN;
	__u8 saddr[16];
	__u8 family = 0;
	if (skb->gso_size || !setup_packet(eth, end, saddr, &family) || !from_its_host(vni, saddr, from))
		return TC_ACT_OK;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	// The inner frame's MACs, which the network's device would see.
	__u8 macs[12];
	__builtin_memcpy(macs, eth, 12);
	int r = decapsulate(skb, family);
	if (r == -1)
		return TC_ACT_OK;
	if (r < 0 || bpf_skb_store_bytes(skb, 0, macs, 12, 0) < 0)
		return TC_ACT_SHOT;
	return bpf_redirect(tunnel, BPF_F_INGRESS);
}

// On the device that holds this host's underlay address (tcx ingress), for
// datagrams from the other hosts of the fabric:
// - on the fast path's port: one from the host of its inner packet's source
//   endpoint, of a flow this host's kernel path allowed too, to a local
//   endpoint, is decapsulated here and goes straight into the container.
//   This spares it the host's input path, the UDP socket, the metadata-mode
//   device and its GRO cell, and `from_tunnel`;
// - on the networks' own port: see `to_tunnel`.
// Anything else goes on through the host's stack as before: the
// metadata-mode device and `from_tunnel`, or the network's VXLAN device,
// take it.
SEC("classifier")
int from_underlay(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ts_config, &zero);
	__be32 from = 0;
	__u16 port = 0;
	__u32 vni = cfg ? datagram(skb, cfg, &port, &from) : 0;
	__u32 *tunnel = vni ? bpf_map_lookup_elem(&ts_tunnels, &vni) : 0;
	if (!tunnel)
		return TC_ACT_OK;
	if (port == VXLAN_PORT)
		return to_tunnel(skb, vni, from, *tunnel);
	struct packet p = {};
	if (!parse(skb, OUTER_LEN, vni, &p) || !from_its_host(vni, p.key.saddr, from))
		return TC_ACT_OK;
	struct dst_key dk = { .vni = vni };
	__builtin_memcpy(dk.addr, p.key.daddr, 16);
	struct dst_val *dst = bpf_map_lookup_elem(&ts_dst, &dk);
	if (!dst || !dst->ifindex)
		return TC_ACT_OK;
	struct flow_val *flow = carried(&p.key, p.tcp_flags);
	if (!flow)
		return TC_ACT_OK;
	int r = decapsulate(skb, p.family);
	if (r == -1)
		return TC_ACT_OK;
	if (r < 0)
		return TC_ACT_SHOT;
	return to_local(skb, flow, p.family, dst);
}

// The source port of a datagram of a flow with hash `hash`, in the local
// port range, as the kernel's `udp_flow_src_port` picks it.
#define SRC_PORT_MIN 32768
#define SRC_PORT_MAX 60999
static __always_inline __be16 source_port(__u32 hash)
{
	hash ^= hash << 16;
	return bpf_htons((__u16)((((__u64)hash * (SRC_PORT_MAX - SRC_PORT_MIN)) >> 32) + SRC_PORT_MIN));
}

// The outer header's ECN bits for an inner packet with ECN bits `ecn`:
// copied, a congestion mark as ECT(0) (`INET_ECN_encapsulate`).
static __always_inline __u8 outer_ecn(__u8 ecn)
{
	ecn &= 3;
	return ecn == 3 ? 2 : ecn;
}

// The outer headers `to_underlay` writes after the outer Ethernet header.
struct outer {
	struct iphdr ip;
	struct udphdr udp;
	struct vxlan vx;
} __attribute__((packed, aligned(4)));

// At the egress of a network's VXLAN device: see the top of this file.
SEC("classifier")
int to_underlay(struct __sk_buff *skb)
{
	if (skb->gso_size)
		return TC_ACT_OK;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&ts_config, &zero);
	__u32 ifindex = skb->ifindex;
	struct encap_val *enc = bpf_map_lookup_elem(&ts_encap, &ifindex);
	if (!cfg || !enc)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct dst_key dk = { .vni = enc->vni };
	__u8 ecn;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return TC_ACT_OK;
		mapped(dk.addr, ip->daddr);
		ecn = ip->tos;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(dk.addr, &ip6->daddr, 16);
		ecn = ip6->flow_lbl[0] >> 4;
	} else {
		return TC_ACT_OK;
	}
	// The device sends the frame to the host its forwarding entry for the
	// destination MAC names; the frame is taken only when that MAC is the
	// VTEP MAC of the destination endpoint's host (a next hop elsewhere, a
	// service instance's host among them, leaves it to the device).
	struct dst_val *dst = bpf_map_lookup_elem(&ts_dst, &dk);
	if (!dst || dst->ifindex || !same_mac(dst->mac, eth->h_dest))
		return TC_ACT_OK;
	__u32 len = skb->len;
	__u32 mtu = 0;
	if (bpf_check_mtu(skb, enc->underlay_ifindex, &mtu, sizeof(struct outer) + ETH_HLEN, 0))
		return TC_ACT_OK;
	__u8 inner[ETH_HLEN];
	__builtin_memcpy(inner, eth, ETH_HLEN);
	struct outer h = {};
	h.ip.version = 4;
	h.ip.ihl = 5;
	h.ip.tos = outer_ecn(ecn);
	h.ip.tot_len = bpf_htons(len + sizeof(h));
	h.ip.id = bpf_get_prandom_u32();
	h.ip.ttl = 64;
	h.ip.protocol = IPPROTO_UDP;
	h.ip.saddr = cfg->underlay;
	h.ip.daddr = dst->underlay;
	__u32 sum = bpf_csum_diff(0, 0, (__be32 *)(void *)&h, sizeof(h.ip), 0);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	h.ip.check = ~sum;
	h.udp.source = source_port(bpf_get_hash_recalc(skb));
	h.udp.dest = bpf_htons(VXLAN_PORT);
	h.udp.len = bpf_htons(len + sizeof(h.udp) + sizeof(h.vx));
	h.vx.flags = bpf_htonl(VXLAN_FLAGS);
	h.vx.vni = bpf_htonl(enc->vni << 8);
	__u64 flags = BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH |
		      BPF_F_ADJ_ROOM_ENCAP_L2(ETH_HLEN);
	// Room for the outer IPv4, UDP and VXLAN headers and the inner
	// Ethernet header, after the Ethernet header (which becomes the outer).
	if (bpf_skb_adjust_room(skb, sizeof(h) + ETH_HLEN, BPF_ADJ_ROOM_MAC, flags) < 0)
		return TC_ACT_OK;
	__u16 ipv4 = bpf_htons(ETH_P_IP);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) < 0 ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(h), inner, ETH_HLEN, 0) < 0 ||
	    bpf_skb_store_bytes(skb, 12, &ipv4, 2, 0) < 0)
		return TC_ACT_SHOT;
	// To the other host through the underlay device (the network's device
	// is bound to it): straight to its neighbour entry when it is in the
	// underlay address's prefix, by a route lookup otherwise.
	__u8 prefix = cfg->underlay_prefix;
	if (prefix && prefix < 32 && !((dst->underlay ^ cfg->underlay) & bpf_htonl(~0U << (32 - prefix)))) {
		// AF_INET.
		struct bpf_redir_neigh nh = { .nh_family = 2, .ipv4_nh = dst->underlay };
		return bpf_redirect_neigh(enc->underlay_ifindex, &nh, sizeof(nh), 0);
	}
	return bpf_redirect_neigh(enc->underlay_ifindex, 0, 0, 0);
}
