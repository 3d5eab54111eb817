package catalog

import (
	"bytes"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseJobManifest(f *testing.F) {
	key := testKey(7)
	s, err := Open(filepath.Join(f.TempDir(), "ckpt"), key)
	if err != nil {
		f.Fatal(err)
	}
	cp := commitOne(f, s, "fuzz")
	signed, err := os.ReadFile(filepath.Join(cp.Dir, JobManifestName))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add(bytes.Replace(signed, []byte(`"hmac"`), []byte(`"hmak"`), 1))
	f.Add([]byte(`{"format":1,"payload":{"handle":"a/000001","job":"a","seq":1,"nodes":[]}}`))
	f.Add([]byte(`{"format":1,"hmac":"","payload":null}`))
	f.Add([]byte(`{"format":2}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(``))
	f.Add([]byte(`{"format":1,"hmac":"zz","payload":{}} trailing`))

	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseJobManifest(data, key)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnsupportedFormat) {
				t.Fatalf("error is neither ErrCorrupt nor ErrUnsupportedFormat: %v", err)
			}
			return
		}
		// Accepted: it must really carry a valid HMAC over its payload, under this
		// key and no other.
		var env struct {
			HMAC    string          `json:"hmac"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(data, &env); err != nil {
			t.Fatalf("accepted input does not decode: %v", err)
		}
		sig, _ := hex.DecodeString(env.HMAC)
		if !hmac.Equal(sig, manifestMAC(key, env.Payload)) {
			t.Fatalf("accepted an input whose HMAC does not match")
		}
		if _, err := ParseJobManifest(data, testKey(8)); err == nil {
			t.Fatalf("accepted under a different key")
		}
		if err := m.validate(); err != nil {
			t.Fatalf("accepted an inconsistent manifest: %v", err)
		}
	})
}
