package main

import "encoding/binary"

// pattern is the deterministic byte stream: byte i is byte i%8 (little
// endian) of splitmix64(key + i/8). Any lost, duplicated, reordered or
// corrupted byte changes what the receiver sees at that offset.
type pattern struct{ key uint64 }

func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// fill writes the stream bytes [off, off+len(b)) into b.
func (p pattern) fill(b []byte, off uint64) {
	var w [8]byte
	for i := 0; i < len(b); {
		pos := off + uint64(i)
		binary.LittleEndian.PutUint64(w[:], splitmix64(p.key+pos/8))
		n := copy(b[i:], w[pos%8:])
		i += n
	}
}

// check compares b with the stream at off and returns the index of the first
// mismatch, or -1.
func (p pattern) check(b []byte, off uint64, scratch []byte) int {
	want := scratch[:len(b)]
	p.fill(want, off)
	for i := range b {
		if b[i] != want[i] {
			return i
		}
	}
	return -1
}
