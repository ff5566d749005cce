package config

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Where Linux keeps its trust anchors, as crypto/x509 looks for them: the
// first bundle file found, then every certificate file in the directories.
var (
	rootBundles = []string{
		"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu
		"/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL 6
		"/etc/ssl/ca-bundle.pem",                            // OpenSUSE
		"/etc/pki/tls/cacert.pem",                           // OpenELEC
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // CentOS, RHEL 7
		"/etc/ssl/cert.pem",                                 // Alpine
	}
	rootDirs = []string{"/etc/ssl/certs", "/etc/pki/tls/certs"}
)

// systemRoots returns the certificates x509.SystemCertPool trusts on Linux,
// found the same way (SSL_CERT_FILE and SSL_CERT_DIR included), but parses
// each distinct certificate once. On Debian every file in /etc/ssl/certs
// links to a certificate that the bundle holds too, and SystemCertPool
// parses both: it allocates 3.7 MB at every start (this 2.4 MB), which
// set the daemon's peak heap (docs/memory.md). TestSystemRoots keeps the
// two equal.
func systemRoots() *x509.CertPool {
	l := rootLoader{pool: x509.NewCertPool(), seen: map[[sha256.Size]byte]bool{}}
	bundles := rootBundles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		bundles = []string{f}
	}
	for _, f := range bundles {
		if b, err := os.ReadFile(f); err == nil {
			l.add(b)
			break
		}
	}
	dirs := rootDirs
	if d := os.Getenv("SSL_CERT_DIR"); d != "" {
		dirs = strings.Split(d, ":")
	}
	for _, dir := range dirs {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			path := filepath.Join(dir, e.Name())
			if e.Type()&fs.ModeSymlink != 0 {
				// c_rehash's hash names link to a file in the same
				// directory, which is read under its own name.
				if target, err := os.Readlink(path); err == nil && !strings.Contains(target, "/") {
					continue
				}
			}
			if b, err := os.ReadFile(path); err == nil {
				l.add(b)
			}
		}
	}
	return l.pool
}

// rootLoader fills a pool, skipping certificates it has seen before they
// are parsed.
type rootLoader struct {
	pool *x509.CertPool
	seen map[[sha256.Size]byte]bool
}

// add adds the certificates in the PEM text b that the pool lacks.
func (l *rootLoader) add(b []byte) {
	for {
		block, rest := pem.Decode(b)
		if block == nil {
			return
		}
		text := b[:len(b)-len(rest)]
		b = rest
		sum := sha256.Sum256(block.Bytes)
		if l.seen[sum] {
			continue
		}
		l.seen[sum] = true
		// AppendCertsFromPEM keeps the DER and parses it again only when a
		// chain needs it.
		l.pool.AppendCertsFromPEM(text)
	}
}
