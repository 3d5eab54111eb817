package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testPKI struct {
	dir string
	ca  *CA
}

func newPKI(t *testing.T) testPKI {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := EnsureCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		role  Role
		hosts []string
	}{
		{"coordinator", RoleServer, []string{"127.0.0.1", "localhost"}},
		{"shim", RoleClient, nil},
		{"shim-both", RoleBoth, []string{"127.0.0.1"}},
	} {
		if err := ca.Issue(dir, c.name, c.role, c.hosts); err != nil {
			t.Fatal(err)
		}
	}
	return testPKI{dir: dir, ca: ca}
}

func (p testPKI) paths(name string) (ca, cert, key string) {
	cert, key = CertPaths(p.dir, name)
	return filepath.Join(p.dir, CAFile), cert, key
}

func (p testPKI) server(t *testing.T, name string) *tls.Config {
	t.Helper()
	cfg, err := ServerConfig(p.paths(name))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (p testPKI) client(t *testing.T, name, serverName string) *tls.Config {
	t.Helper()
	ca, cert, key := p.paths(name)
	cfg, err := ClientConfig(ca, cert, key, serverName)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// handshake runs a real TLS 1.3 handshake over 127.0.0.1 and exchanges one message.
// In TLS 1.3 the client may finish its handshake before the server has rejected its
// certificate, so the client also reads the server's greeting.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(conn, server)
		if err := tc.HandshakeContext(ctx); err != nil {
			done <- err
			return
		}
		if tc.ConnectionState().Version != tls.VersionTLS13 {
			done <- errors.New("negotiated a TLS version below 1.3")
			return
		}
		_, err = tc.Write([]byte("ok"))
		done <- err
	}()
	d := tls.Dialer{Config: client}
	conn, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err == nil {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 2)
		if _, err = io.ReadFull(conn, buf); err == nil && string(buf) != "ok" {
			err = errors.New("unexpected greeting")
		}
		conn.Close()
	}
	return <-done, err
}

func TestHandshake(t *testing.T) {
	p := newPKI(t)
	other := newPKI(t) // a second, unrelated CA

	// A client that trusts our CA but presents a certificate from the other CA.
	_, rogueCert, rogueKey := other.paths("shim")
	rogue, err := ClientConfig(filepath.Join(p.dir, CAFile), rogueCert, rogueKey, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// Go clients only send a certificate whose issuer the server asked for; force it,
	// so that the server's verification is what rejects it.
	rogueCertificate := rogue.Certificates[0]
	rogue.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &rogueCertificate, nil }
	noCert := p.client(t, "shim", "127.0.0.1")
	noCert.Certificates = nil

	tests := []struct {
		name       string
		server     *tls.Config
		client     *tls.Config
		ok         bool
		hostname   bool // the client rejects the server's name
		unknownCA  bool // the client rejects the server's CA
		serverSays string
	}{
		{name: "valid by IP", server: p.server(t, "coordinator"), client: p.client(t, "shim", "127.0.0.1"), ok: true},
		{name: "valid by DNS name", server: p.server(t, "coordinator"), client: p.client(t, "shim", "localhost"), ok: true},
		{name: "shim cert as client and as server", server: p.server(t, "shim-both"), client: p.client(t, "shim-both", "127.0.0.1"), ok: true},
		{name: "client cert from another CA", server: p.server(t, "coordinator"), client: rogue, serverSays: "signed by unknown authority"},
		{name: "no client cert", server: p.server(t, "coordinator"), client: noCert, serverSays: "didn't provide a certificate"},
		{name: "server cert used as client cert", server: p.server(t, "coordinator"), client: p.client(t, "coordinator", "127.0.0.1"), serverSays: "incompatible key usage"},
		{name: "SAN mismatch", server: p.server(t, "coordinator"), client: p.client(t, "shim", "coordinator.example"), hostname: true},
		{name: "server from another CA", server: other.server(t, "coordinator"), client: p.client(t, "shim", "127.0.0.1"), unknownCA: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverErr, clientErr := handshake(t, tt.server, tt.client)
			if tt.ok {
				if serverErr != nil || clientErr != nil {
					t.Fatalf("handshake failed: server %v, client %v", serverErr, clientErr)
				}
				return
			}
			if serverErr == nil || clientErr == nil {
				t.Fatalf("handshake succeeded on one side: server %v, client %v", serverErr, clientErr)
			}
			if tt.serverSays != "" && !strings.Contains(serverErr.Error(), tt.serverSays) {
				t.Fatalf("server error %q does not mention %q", serverErr, tt.serverSays)
			}
			var he x509.HostnameError
			if tt.hostname && !errors.As(clientErr, &he) {
				t.Fatalf("client error = %v, want a hostname mismatch", clientErr)
			}
			var ua x509.UnknownAuthorityError
			if tt.unknownCA && !errors.As(clientErr, &ua) {
				t.Fatalf("client error = %v, want unknown authority", clientErr)
			}
			t.Logf("server: %v; client: %v", serverErr, clientErr)
		})
	}
}

func TestConfigsRequireTLS13AndClientCerts(t *testing.T) {
	p := newPKI(t)
	s := p.server(t, "coordinator")
	if s.MinVersion != tls.VersionTLS13 || s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil {
		t.Fatalf("server config = min %x auth %v", s.MinVersion, s.ClientAuth)
	}
	c := p.client(t, "shim", "127.0.0.1")
	if c.MinVersion != tls.VersionTLS13 || c.RootCAs == nil || c.ServerName != "127.0.0.1" || len(c.Certificates) != 1 {
		t.Fatalf("client config = %+v", c)
	}
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestEnsureCA(t *testing.T) {
	p := newPKI(t)
	if m := mode(t, p.dir); m != 0o700 {
		t.Errorf("PKI dir mode %#o, want 0700", m)
	}
	for _, f := range []string{CAKeyFile, "coordinator-key.pem", "shim-key.pem", "shim-both-key.pem"} {
		if m := mode(t, filepath.Join(p.dir, f)); m != 0o600 {
			t.Errorf("%s mode %#o, want 0600", f, m)
		}
	}
	again, err := EnsureCA(p.dir)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(p.ca.Cert) {
		t.Fatal("second EnsureCA created a new CA instead of loading the existing one")
	}
	if !p.ca.Cert.IsCA || p.ca.Cert.PublicKeyAlgorithm != x509.ECDSA {
		t.Fatalf("CA cert: IsCA %v alg %v", p.ca.Cert.IsCA, p.ca.Cert.PublicKeyAlgorithm)
	}

	tests := []struct {
		name    string
		break_  func(dir string)
		wantErr string
	}{
		{"key world readable", func(dir string) { os.Chmod(filepath.Join(dir, CAKeyFile), 0o644) }, "chmod 600"},
		{"key missing", func(dir string) { os.Remove(filepath.Join(dir, CAKeyFile)) }, "but not its key"},
		{"cert missing", func(dir string) { os.Remove(filepath.Join(dir, CAFile)) }, "but not its certificate"},
		{"key of another CA", func(dir string) {
			o := newPKI(t)
			data, _ := os.ReadFile(filepath.Join(o.dir, CAKeyFile))
			os.WriteFile(filepath.Join(dir, CAKeyFile), data, 0o600)
		}, "does not belong to CA certificate"},
		{"garbage cert", func(dir string) { os.WriteFile(filepath.Join(dir, CAFile), []byte("junk"), 0o644) }, "no PEM CERTIFICATE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newPKI(t)
			tt.break_(q.dir)
			_, err := EnsureCA(q.dir)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("EnsureCA = %v, want %q", err, tt.wantErr)
			}
		})
	}
	t.Run("expired CA", func(t *testing.T) {
		q := newPKI(t)
		_, err := ensureCA(q.dir, func() time.Time { return time.Now().Add(11 * 365 * 24 * time.Hour) })
		if err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("EnsureCA with an expired CA = %v", err)
		}
	})
}

func TestIssueIdempotent(t *testing.T) {
	p := newPKI(t)
	certPath, keyPath := CertPaths(p.dir, "coordinator")
	read := func() []byte {
		t.Helper()
		c, err := os.ReadFile(certPath)
		if err != nil {
			t.Fatal(err)
		}
		k, _ := os.ReadFile(keyPath)
		return append(c, k...)
	}
	issue := func(ca *CA, role Role, hosts ...string) {
		t.Helper()
		if err := ca.Issue(p.dir, "coordinator", role, hosts); err != nil {
			t.Fatal(err)
		}
	}
	otherCA := newPKI(t).ca

	steps := []struct {
		name    string
		do      func()
		reissue bool
	}{
		{"same request", func() { issue(p.ca, RoleServer, "127.0.0.1", "localhost") }, false},
		{"same hosts, other order and case", func() { issue(p.ca, RoleServer, "LOCALHOST", "127.0.0.1", "localhost") }, false},
		{"another SAN", func() { issue(p.ca, RoleServer, "127.0.0.1", "localhost", "198.18.0.1") }, true},
		{"another role", func() { issue(p.ca, RoleBoth, "127.0.0.1", "localhost", "198.18.0.1") }, true},
		{"unchanged again", func() { issue(p.ca, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost") }, false},
		{"close to expiry", func() {
			late := *p.ca
			late.now = func() time.Time { return time.Now().Add(leafValidity - 10*24*time.Hour) }
			issue(&late, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost")
		}, true},
		{"signed by another CA", func() { issue(otherCA, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost") }, true},
		{"back to our CA", func() { issue(p.ca, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost") }, true},
		{"key lost", func() { os.Remove(keyPath); issue(p.ca, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost") }, true},
		{"key made world readable", func() {
			os.Chmod(keyPath, 0o644)
			issue(p.ca, RoleBoth, "198.18.0.1", "127.0.0.1", "localhost")
		}, true},
	}
	before := read()
	for _, st := range steps {
		st.do()
		after := read()
		if changed := !bytes.Equal(before, after); changed != st.reissue {
			t.Fatalf("%s: reissued = %v, want %v", st.name, changed, st.reissue)
		}
		if m := mode(t, keyPath); m != 0o600 {
			t.Fatalf("%s: key mode %#o", st.name, m)
		}
		before = after
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if got := ipStrings(leaf.IPAddresses); strings.Join(got, ",") != "127.0.0.1,198.18.0.1" || strings.Join(leaf.DNSNames, ",") != "localhost" {
		t.Fatalf("SANs = %v %v", got, leaf.DNSNames)
	}
	if len(leaf.ExtKeyUsage) != 2 {
		t.Fatalf("EKU = %v, want server+client", leaf.ExtKeyUsage)
	}
}

func TestIssueErrors(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name    string
		cert    string
		role    Role
		hosts   []string
		wantErr string
	}{
		{"server without hosts", "srv", RoleServer, nil, "needs at least one host"},
		{"bad name", "../x", RoleClient, nil, "invalid name"},
		{"bad role", "x", Role(9), nil, "unknown certificate role"},
		{"bad host", "x", RoleServer, []string{"http://x"}, "neither an IP address nor a host name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := p.ca.Issue(p.dir, tt.cert, tt.role, tt.hosts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Issue = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestConfigFileErrors(t *testing.T) {
	p := newPKI(t)
	ca, cert, key := p.paths("coordinator")
	missing := filepath.Join(p.dir, "nope.pem")
	tests := []struct {
		name          string
		ca, cert, key string
		prepare       func()
		wantErr       []string
		notExist      bool
	}{
		{name: "missing CA", ca: missing, cert: cert, key: key, wantErr: []string{missing, "--init-pki"}, notExist: true},
		{name: "missing cert", ca: ca, cert: missing, key: key, wantErr: []string{missing, "--init-pki"}, notExist: true},
		{name: "missing key", ca: ca, cert: cert, key: missing, wantErr: []string{missing, "--init-pki"}, notExist: true},
		{name: "key readable by others", ca: ca, cert: cert, key: key, prepare: func() { os.Chmod(key, 0o640) }, wantErr: []string{key, "chmod 600"}},
		{name: "key of another cert", ca: ca, cert: cert, key: filepath.Join(p.dir, "shim-key.pem"), wantErr: []string{cert, "shim-key.pem"}},
		{name: "CA file without certificate", ca: key, cert: cert, key: key, wantErr: []string{"contains no PEM certificate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prepare != nil {
				tt.prepare()
				t.Cleanup(func() { os.Chmod(key, 0o600) })
			}
			for side, f := range map[string]func() error{
				"server": func() error { _, err := ServerConfig(tt.ca, tt.cert, tt.key); return err },
				"client": func() error { _, err := ClientConfig(tt.ca, tt.cert, tt.key, "127.0.0.1"); return err },
			} {
				err := f()
				if err == nil {
					t.Fatalf("%s: no error", side)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("%s: error %q does not mention %q", side, err, w)
					}
				}
				if tt.notExist != errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("%s: errors.Is(ErrNotExist) = %v for %v", side, !tt.notExist, err)
				}
			}
		})
	}
}
