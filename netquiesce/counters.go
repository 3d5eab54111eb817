package netquiesce

import "fmt"

// Direction of a dropped packet, seen from the locked interface or cgroup.
type Direction int

const (
	Ingress Direction = iota
	Egress
	numDirections = 2
)

func (d Direction) String() string {
	if d == Ingress {
		return "ingress"
	}
	return "egress"
}

// Protocol class of a dropped packet.
type Protocol int

const (
	TCP Protocol = iota
	UDP
	ICMP         // ICMP and ICMPv6
	Other        // ARP, non-IP, and every other IP protocol
	numProtocols = 4
)

func (p Protocol) String() string {
	return [...]string{"tcp", "udp", "icmp", "other"}[p]
}

// Count is a number of packets and their bytes (as skb->len).
type Count struct {
	Packets uint64
	Bytes   uint64
}

// Counters are the packets dropped while locked, by direction and protocol:
// c[Ingress][TCP].
type Counters [numDirections][numProtocols]Count

// Total sums every direction and protocol.
func (c Counters) Total() Count {
	var t Count
	for d := range c {
		for p := range c[d] {
			t.Packets += c[d][p].Packets
			t.Bytes += c[d][p].Bytes
		}
	}
	return t
}

// String lists the non-zero counters, e.g. "ingress/tcp=3p/180B".
func (c Counters) String() string {
	s := ""
	for d := range c {
		for p := range c[d] {
			if c[d][p].Packets == 0 {
				continue
			}
			if s != "" {
				s += " "
			}
			s += fmt.Sprintf("%s/%s=%dp/%dB", Direction(d), Protocol(p), c[d][p].Packets, c[d][p].Bytes)
		}
	}
	if s == "" {
		return "none"
	}
	return s
}
