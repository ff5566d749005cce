// Package x509credtest makes certificate authorities, keys and client
// certificates for tests of the X.509 paths (device credentials, the hub's
// client authentication). Standard library only; test code only.
package x509credtest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// CA is a certificate authority: its certificate and key.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewKey returns a fresh ECDSA P-256 key.
func NewKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// NewCA makes a CA named name, valid from an hour ago for a day, signed by
// parent (nil: self-signed root).
func NewCA(t testing.TB, name string, parent *CA) *CA {
	t.Helper()
	key := NewKey(t)
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	signer := &CA{Cert: tmpl, Key: key}
	if parent != nil {
		signer = parent
	}
	return &CA{Cert: signer.sign(t, tmpl, &key.PublicKey), Key: key}
}

// Issue signs a client-authentication certificate for pub with common name
// cn, valid from an hour ago for an hour; mod, when not nil, changes the
// template first (validity, usages).
func (ca *CA) Issue(t testing.TB, cn string, pub crypto.PublicKey, mod func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if mod != nil {
		mod(tmpl)
	}
	return ca.sign(t, tmpl, pub)
}

// ClientCertificate is a TLS client credential for cn: a fresh key and a
// certificate from ca, with Leaf set; the chain sent is the leaf and ca.
func (ca *CA) ClientCertificate(t testing.TB, cn string) tls.Certificate {
	t.Helper()
	key := NewKey(t)
	leaf := ca.Issue(t, cn, &key.PublicKey, nil)
	return tls.Certificate{Certificate: [][]byte{leaf.Raw, ca.Cert.Raw}, PrivateKey: key, Leaf: leaf}
}

// sign issues tmpl for pub under ca, with a random serial number.
func (ca *CA) sign(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) *x509.Certificate {
	t.Helper()
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
