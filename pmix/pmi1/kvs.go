package pmi1

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ErrBadBlob is returned when an exchanged key-value blob does not decode.
var ErrBadBlob = errors.New("pmi1: malformed key-value blob")

// encodePuts packs key-value pairs as (uvarint len, key, uvarint len, value)
// records, sorted by key. Concatenated blobs from several nodes still decode,
// which is what a fence through the upstream returns.
func encodePuts(kv map[string]string) []byte {
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(kv)) {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		v := kv[k]
		b = binary.AppendUvarint(b, uint64(len(v)))
		b = append(b, v...)
	}
	return b
}

// decodePuts adds every record of blob to into.
func decodePuts(blob []byte, into map[string]string) error {
	for len(blob) > 0 {
		var fields [2]string
		for i := range fields {
			n, w := binary.Uvarint(blob)
			if w <= 0 || n > uint64(len(blob)-w) {
				return fmt.Errorf("%w: bad length at %d bytes from the end", ErrBadBlob, len(blob))
			}
			fields[i] = string(blob[w : w+int(n)])
			blob = blob[w+int(n):]
		}
		into[fields[0]] = fields[1]
	}
	return nil
}
