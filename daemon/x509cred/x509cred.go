// Package x509cred is the device side of X.509 operational certificates
// issued by DPS (api-version 2026-11-01, docs/dps-x509-issuance.md): the
// certificate signing request a device sends with its registration, the
// checks on the chain DPS returns, and the TLS credential built from both.
// The private key is any crypto.Signer (a TPM key in dpsd); this package
// never sees it. Standard library only.
package x509cred

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"time"
)

// Refusals of an issued chain, for errors.Is. Each says what a device must
// not accept before switching its hub connection to the certificate.
var (
	// ErrMalformed: the chain is empty, shorter than leaf and root, or an
	// element is not a DER certificate.
	ErrMalformed = errors.New("malformed certificate chain")
	// ErrUntrusted: the chain does not verify from the leaf up to its own
	// last element (each issued by the next, the last self-signed), or the
	// leaf is not for client authentication.
	ErrUntrusted = errors.New("certificate chain does not verify")
	// ErrWrongKey: the leaf certifies another public key than the device's.
	ErrWrongKey = errors.New("certificate is for another key")
	// ErrWrongSubject: the leaf's common name is not the registration ID.
	ErrWrongSubject = errors.New("certificate is for another registration ID")
	// ErrNotValidNow: the leaf (or another element) is expired or not yet
	// valid at the time given.
	ErrNotValidNow = errors.New("certificate not valid now")
)

// CreateCSR returns a DER PKCS #10 request signed by signer, with the
// subject common name DPS requires: the registration ID. DPS takes it
// base64-encoded, without PEM armour, as the registration's csr.
func CreateCSR(signer crypto.Signer, registrationID string) ([]byte, error) {
	if registrationID == "" {
		return nil, errors.New("creating CSR: empty registration ID")
	}
	alg, err := signatureAlgorithm(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("creating CSR: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:            pkix.Name{CommonName: registrationID},
		SignatureAlgorithm: alg,
	}, signer)
	if err != nil {
		return nil, fmt.Errorf("creating CSR: %w", err)
	}
	return der, nil
}

// signatureAlgorithm is the SHA-256 algorithm for the key: the TPM signer
// signs SHA-256 digests only.
func signatureAlgorithm(pub crypto.PublicKey) (x509.SignatureAlgorithm, error) {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return x509.ECDSAWithSHA256, nil
	case *rsa.PublicKey:
		return x509.SHA256WithRSA, nil
	}
	return 0, fmt.Errorf("unsupported public key %T", pub)
}

// VerifyChain checks a chain DPS issued (DER, leaf first, root last) before
// a device relies on it: it verifies to its own root at now, the leaf is for
// client authentication, certifies pub, and names registrationID as its
// common name. It returns the parsed leaf.
func VerifyChain(chain [][]byte, registrationID string, pub crypto.PublicKey, now time.Time) (*x509.Certificate, error) {
	if len(chain) < 2 {
		return nil, fmt.Errorf("%w: %d certificates, want the leaf up to its root", ErrMalformed, len(chain))
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %d: %v", ErrMalformed, i, err)
		}
		certs[i] = c
	}
	leaf, root := certs[0], certs[len(certs)-1]
	if leaf.Subject.CommonName != registrationID {
		return nil, fmt.Errorf("%w: common name %q, want %q", ErrWrongSubject, leaf.Subject.CommonName, registrationID)
	}
	want, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !want.Equal(leaf.PublicKey) {
		return nil, ErrWrongKey
	}
	for i, c := range certs {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return nil, fmt.Errorf("%w: certificate %d (%s) valid %s to %s", ErrNotValidNow, i, c.Subject.CommonName,
				c.NotBefore.UTC().Format(time.RFC3339), c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	if err := root.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("%w: the last certificate is not a self-signed root: %v", ErrUntrusted, err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(root)
	for _, c := range certs[1 : len(certs)-1] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	return leaf, nil
}

// TLSCertificate is the client credential for the hub: the chain DPS
// issued and the signer that holds its key. The signature schemes are
// pinned to SHA-256 ones, the only digests the TPM signer takes (and for
// RSA, TLS 1.3 needs PSS).
func TLSCertificate(chain [][]byte, signer crypto.Signer) (tls.Certificate, error) {
	if len(chain) == 0 {
		return tls.Certificate{}, ErrMalformed
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%w: leaf: %v", ErrMalformed, err)
	}
	// A leaf for another key would fail every handshake with an error that
	// names nothing; say it here.
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(signer.Public()) {
		return tls.Certificate{}, fmt.Errorf("%w: the certificate is not for this key", ErrMalformed)
	}
	var schemes []tls.SignatureScheme
	switch signer.Public().(type) {
	case *ecdsa.PublicKey:
		schemes = []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}
	case *rsa.PublicKey:
		schemes = []tls.SignatureScheme{tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	default:
		return tls.Certificate{}, fmt.Errorf("unsupported public key %T", signer.Public())
	}
	return tls.Certificate{
		Certificate:                  chain,
		PrivateKey:                   signer,
		Leaf:                         leaf,
		SupportedSignatureAlgorithms: schemes,
	}, nil
}
