package config

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
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
// parses both: it allocates 3.7 MB at every start (this 1.7 MB), which
// set the daemon's peak heap (docs/memory.md). TestSystemRoots keeps the
// two equal.
func systemRoots() *x509.CertPool {
	l := rootLoader{pool: x509.NewCertPool(), seen: map[[sha256.Size]byte]bool{}}
	// One buffer for every file: the pool copies what it keeps.
	var buf bytes.Buffer
	read := func(path string) ([]byte, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		buf.Reset()
		_, err = buf.ReadFrom(f)
		return buf.Bytes(), err
	}
	bundles := rootBundles
	if f := os.Getenv("SSL_CERT_FILE"); f != "" {
		bundles = []string{f}
	}
	for _, f := range bundles {
		if b, err := read(f); err == nil {
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
			if b, err := read(path); err == nil {
				l.add(b)
			}
		}
	}
	return l.pool
}

// rootLoader fills a pool, skipping certificates it has seen before they
// are decoded.
type rootLoader struct {
	pool *x509.CertPool
	seen map[[sha256.Size]byte]bool
}

var (
	pemBegin = []byte("-----BEGIN CERTIFICATE-----")
	pemEnd   = []byte("-----END CERTIFICATE-----")
)

// add adds the certificates in the PEM text b that the pool lacks. A
// certificate is known by its PEM text (whitespace aside): one seen before
// costs neither a base64 decoding nor a parse. The pool's own decoding and
// parsing decide what a block holds.
func (l *rootLoader) add(b []byte) {
	for {
		i := bytes.Index(b, pemBegin)
		if i < 0 {
			return
		}
		n := bytes.Index(b[i:], pemEnd)
		if n < 0 {
			return
		}
		block := b[i : i+n+len(pemEnd)]
		b = b[i+n+len(pemEnd):]
		key := textKey(block)
		if l.seen[key] {
			continue
		}
		l.seen[key] = true
		// AppendCertsFromPEM keeps the DER and parses it again only when a
		// chain needs it.
		l.pool.AppendCertsFromPEM(block)
	}
}

// textKey hashes s without its whitespace.
func textKey(s []byte) [sha256.Size]byte {
	h := sha256.New()
	for len(s) > 0 {
		i := bytes.IndexAny(s, " \t\r\n")
		if i < 0 {
			i = len(s)
		}
		h.Write(s[:i])
		s = s[min(i+1, len(s)):]
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	return key
}
