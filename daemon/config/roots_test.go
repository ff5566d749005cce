package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSystemRoots checks that the daemon trusts exactly what crypto/x509
// would on this machine.
func TestSystemRoots(t *testing.T) {
	want, err := x509.SystemCertPool()
	if err != nil {
		t.Fatal(err)
	}
	if !systemRoots().Equal(want) {
		t.Error("systemRoots differs from x509.SystemCertPool")
	}
}

// TestSystemRootsFromEnv checks the rules SystemCertPool follows, on a
// made-up store: one bundle, then the directories, duplicates and
// same-directory links read once, blocks that are no certificate skipped.
func TestSystemRootsFromEnv(t *testing.T) {
	a, b, c, d, e := testCert(t, "a"), testCert(t, "b"), testCert(t, "c"), testCert(t, "d"), testCert(t, "e")
	withHeader := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{"X": "y"}, Bytes: e.Raw})
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("not a key")})
	root := t.TempDir()
	dir1, dir2, elsewhere := filepath.Join(root, "certs"), filepath.Join(root, "more"), filepath.Join(root, "share")
	files := map[string][]byte{
		"bundle.crt":     cat(pemOf(a), key, pemOf(b)),
		"certs/c.pem":    pemOf(c),
		"certs/a.pem":    pemOf(a), // also in the bundle
		"certs/e.pem":    withHeader,
		"share/d.crt":    pemOf(d),
		"more/notes.txt": []byte("no PEM here"),
	}
	for name, data := range files {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		filepath.Join(dir1, "d.pem"):    filepath.Join(elsewhere, "d.crt"), // as Debian links
		filepath.Join(dir1, "1a2b3c.0"): "c.pem",                           // a hash link
	} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("SSL_CERT_FILE", filepath.Join(root, "bundle.crt"))
	t.Setenv("SSL_CERT_DIR", dir1+":"+dir2+":"+filepath.Join(root, "missing"))

	want := x509.NewCertPool()
	for _, cert := range []*x509.Certificate{a, b, c, d} {
		want.AddCert(cert)
	}
	if !systemRoots().Equal(want) {
		t.Error("systemRoots did not load exactly a, b, c and d")
	}
}

func testCert(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
