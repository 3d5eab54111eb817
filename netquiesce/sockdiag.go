package netquiesce

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/torpor-hpc/torpor/internal/nsrun"
)

// TCPSocket is one TCP socket as sock_diag reports it, with the figures that
// tell whether it is quiet.
type TCPSocket struct {
	Local, Remote netip.AddrPort
	State         string // "ESTABLISHED", "FIN_WAIT1", ...
	// Unacked is bytes sent and not yet acknowledged (snd_nxt - snd_una).
	Unacked uint32
	// UnackedSegments is tcpi_unacked: segments in flight (packets_out).
	UnackedSegments uint32
	// SendQueue is bytes written by the application and not yet sent
	// (tcpi_notsent_bytes): they stay in the send queue, which CRIU saves.
	SendQueue uint32
	// RecvQueue is bytes received and acknowledged but not yet read by the
	// application (rcv_nxt - copied_seq).
	RecvQueue   uint32
	Retransmits uint8  // consecutive RTO retransmissions
	Inode       uint32 // socket inode, as in /proc/<pid>/fd
	CgroupID    uint64 // cgroup v2 id (inode of its directory); 0 if unknown
}

// Quiet reports whether every sent byte has been acknowledged.
func (s TCPSocket) Quiet() bool { return s.Unacked == 0 && s.UnackedSegments == 0 }

// Tuple names the socket as "local -> remote".
func (s TCPSocket) Tuple() string { return s.Local.String() + " -> " + s.Remote.String() }

func (s TCPSocket) String() string {
	return fmt.Sprintf("%s %s unacked=%dB/%dseg sendq=%dB recvq=%dB", s.Tuple(), s.State,
		s.Unacked, s.UnackedSegments, s.SendQueue, s.RecvQueue)
}

var tcpStates = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

// connStates are the TCP states of sockets that can hold data in flight:
// everything but LISTEN, TIME_WAIT, CLOSE and request mini-sockets.
const connStates = 1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<5 | 1<<8 | 1<<9 | 1<<11

// Attribute numbers from linux/inet_diag.h.
const (
	inetDiagInfo     = 2
	inetDiagCgroupID = 21
)

// diagConn is a NETLINK_SOCK_DIAG socket bound to one network namespace.
type diagConn struct {
	fd  int
	seq uint32
	buf []byte
}

// openDiag opens a sock_diag socket inside n's namespace (nil: the caller's).
func openDiag(n *Net) (*diagConn, error) {
	open := func() (int, error) {
		return unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	}
	var fd int
	var err error
	if n == nil {
		fd, err = open()
	} else {
		err = nsrun.InNetNS(n.NS(), func() error {
			var e error
			fd, e = open()
			return e
		})
	}
	if err != nil {
		return nil, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind sock_diag netlink socket: %w", err)
	}
	return &diagConn{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (c *diagConn) Close() error { return unix.Close(c.fd) }

// dumpTCP lists the TCP sockets of one address family in connStates.
func (c *diagConn) dumpTCP(family uint8) ([]TCPSocket, error) {
	c.seq++
	const reqLen = unix.SizeofNlMsghdr + 56 // struct inet_diag_req_v2
	req := make([]byte, reqLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], reqLen)
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], c.seq)
	b := req[unix.SizeofNlMsghdr:]
	b[0] = family
	b[1] = unix.IPPROTO_TCP
	b[2] = 1 << (inetDiagInfo - 1) // ask for tcp_info
	ne.PutUint32(b[4:], connStates)
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("send sock_diag request: %w", err)
	}
	var out []TCPSocket
	for {
		k, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return nil, fmt.Errorf("receive sock_diag reply: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:k])
		if err != nil {
			return nil, fmt.Errorf("parse sock_diag reply: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != c.seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if e := int32(ne.Uint32(m.Data)); e != 0 {
						return nil, fmt.Errorf("sock_diag dump: %w", unix.Errno(-e))
					}
				}
				return out, nil
			case unix.SOCK_DIAG_BY_FAMILY:
				s, err := parseDiagMsg(m.Data)
				if err != nil {
					return nil, err
				}
				out = append(out, s)
			}
		}
	}
}

// parseDiagMsg decodes struct inet_diag_msg and its attributes.
func parseDiagMsg(b []byte) (TCPSocket, error) {
	const msgLen = 72
	if len(b) < msgLen {
		return TCPSocket{}, fmt.Errorf("parse sock_diag reply: short inet_diag_msg (%d bytes)", len(b))
	}
	ne := binary.NativeEndian
	var s TCPSocket
	family, state := b[0], b[1]
	if int(state) < len(tcpStates) {
		s.State = tcpStates[state]
	}
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	src, dst := b[8:24], b[24:40]
	if family == unix.AF_INET {
		s.Local = netip.AddrPortFrom(netip.AddrFrom4([4]byte(src[:4])), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom4([4]byte(dst[:4])), dport)
	} else {
		s.Local = netip.AddrPortFrom(netip.AddrFrom16([16]byte(src)).Unmap(), sport)
		s.Remote = netip.AddrPortFrom(netip.AddrFrom16([16]byte(dst)).Unmap(), dport)
	}
	s.RecvQueue = ne.Uint32(b[56:])
	wqueue := ne.Uint32(b[60:]) // write_seq - snd_una: unsent + unacked
	s.Inode = ne.Uint32(b[68:])

	var haveInfo bool
	attrs := b[msgLen:]
	for len(attrs) >= 4 {
		l := int(ne.Uint16(attrs[0:]))
		typ := ne.Uint16(attrs[2:]) & 0x3fff
		if l < 4 || l > len(attrs) {
			break
		}
		val := attrs[4:l]
		switch typ {
		case inetDiagInfo:
			var raw [unix.SizeofTCPInfo]byte
			copy(raw[:], val)
			info := (*unix.TCPInfo)(unsafe.Pointer(&raw))
			s.UnackedSegments = info.Unacked
			s.SendQueue = info.Notsent_bytes
			s.Retransmits = info.Retransmits
			haveInfo = true
		case inetDiagCgroupID:
			if len(val) >= 8 {
				s.CgroupID = ne.Uint64(val)
			}
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	if haveInfo && wqueue >= s.SendQueue {
		s.Unacked = wqueue - s.SendQueue
	} else {
		s.Unacked = wqueue // no tcp_info: count the whole queue as pending
	}
	return s, nil
}

// ListTCP lists the connected TCP sockets (IPv4 and IPv6) of n's namespace
// (nil: the caller's). With cgroup set, only sockets created in that cgroup
// v2 directory or below it are listed.
func ListTCP(n *Net, cgroup string) ([]TCPSocket, error) {
	var ids map[uint64]bool
	if cgroup != "" {
		var err error
		if ids, err = cgroupIDs(cgroup); err != nil {
			return nil, err
		}
	}
	c, err := openDiag(n)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.list(ids)
}

func (c *diagConn) list(cgroups map[uint64]bool) ([]TCPSocket, error) {
	var all []TCPSocket
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		ss, err := c.dumpTCP(fam)
		if err != nil {
			return nil, err
		}
		for _, s := range ss {
			if cgroups == nil || cgroups[s.CgroupID] {
				all = append(all, s)
			}
		}
	}
	return all, nil
}

// cgroupIDs returns the ids (directory inode numbers) of a cgroup v2
// directory and all its descendants.
func cgroupIDs(dir string) (map[uint64]bool, error) {
	ids := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != dir && errors.Is(err, os.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			if p != dir && errors.Is(err, unix.ENOENT) {
				return nil
			}
			return err
		}
		ids[st.Ino] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list cgroup %s: %w", dir, err)
	}
	return ids, nil
}
