package dpsemu

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/dpsd-project/dpsd/daemon/atomicfile"
)

// Files of the emulator's certificate authorities in the state directory.
// ca.pem is what devices and scripts trust for the TLS endpoints; the key
// stays beside it so that a restart keeps the same trust anchor. The
// device-* pair issues the operational certificates of enrollments with a
// credential policy: device-root.pem is what the hub (and an app checking
// a device) trusts, device-ca.pem the intermediate that signs.
const (
	caCertFile          = "ca.pem"
	caKeyFile           = "ca-key.pem"
	deviceRootFile      = "device-root.pem"
	deviceRootKeyFile   = "device-root-key.pem"
	deviceIssuerFile    = "device-ca.pem"
	deviceIssuerKeyFile = "device-ca-key.pem"
)

// Certificate lifetimes. The CAs outlive any CI run; the server certificate
// is made afresh at every start, so a year is plenty.
const (
	caLifetime     = 10 * 365 * 24 * time.Hour
	serverLifetime = 365 * 24 * time.Hour
	// backdate tolerates a device clock slightly behind the emulator's.
	backdate = time.Hour
)

// authority is one of the emulator's CAs: the TLS one signs the server
// certificate of the DPS and hub endpoints; the device issuer signs
// devices' operational certificates.
type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// caFiles names a CA's certificate and key files, its common name, the CA
// that signs it (nil: self-signed), and how many CAs may follow it.
type caFiles struct {
	cert, key  string
	name       string
	parent     *authority
	maxPathLen int
}

// loadOrCreateCA reads the CA's certificate and key from dir, or makes a
// new ECDSA P-256 CA when neither exists. One without the other is an
// error: the certificate may already be installed as a trust anchor
// somewhere.
func loadOrCreateCA(dir string, f caFiles, now time.Time) (*authority, error) {
	certPath, keyPath := filepath.Join(dir, f.cert), filepath.Join(dir, f.key)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return parseCA(certPEM, keyPEM, certPath, f.parent)
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
		return createCA(certPath, keyPath, f, now)
	case certErr != nil && !errors.Is(certErr, fs.ErrNotExist):
		return nil, fmt.Errorf("reading CA certificate: %w", certErr)
	case keyErr != nil && !errors.Is(keyErr, fs.ErrNotExist):
		return nil, fmt.Errorf("reading CA key: %w", keyErr)
	default:
		return nil, fmt.Errorf("%s and %s must both exist or both be absent: remove the one left to start a new CA", certPath, keyPath)
	}
}

func parseCA(certPEM, keyPEM []byte, certPath string, parent *authority) (*authority, error) {
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("decoding %s: no CERTIFICATE block", certPath)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", certPath, err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil || kb.Type != "EC PRIVATE KEY" {
		return nil, fmt.Errorf("decoding CA key: no EC PRIVATE KEY block")
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parsing CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("the CA key does not belong to %s", certPath)
	}
	if parent != nil {
		if err := cert.CheckSignatureFrom(parent.cert); err != nil {
			return nil, fmt.Errorf("%s is not signed by %s: remove both to start new ones: %w", certPath, parent.cert.Subject.CommonName, err)
		}
	}
	return &authority{cert: cert, key: key}, nil
}

func createCA(certPath, keyPath string, f caFiles, now time.Time) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: f.name, Organization: []string{"dpsd"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	tmpl.MaxPathLen, tmpl.MaxPathLenZero = f.maxPathLen, f.maxPathLen == 0
	parent, signer := tmpl, key
	if f.parent != nil {
		parent, signer = f.parent.cert, f.parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing new CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding CA key: %w", err)
	}
	// The key first: a crash between the two writes leaves a key without a
	// certificate, which the next start reports instead of trusting.
	if err := atomicfile.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

// issuer is the device PKI: a root and the intermediate that signs
// operational certificates, standing in for an Azure Device Registry
// credential's CA.
type issuer struct {
	root, ca *authority
}

// loadOrCreateIssuer loads or creates the device root, then the
// intermediate under it.
func loadOrCreateIssuer(dir string, now time.Time) (*issuer, error) {
	root, err := loadOrCreateCA(dir, caFiles{cert: deviceRootFile, key: deviceRootKeyFile, name: "dpsemu device root", maxPathLen: 1}, now)
	if err != nil {
		return nil, fmt.Errorf("device root CA: %w", err)
	}
	ca, err := loadOrCreateCA(dir, caFiles{cert: deviceIssuerFile, key: deviceIssuerKeyFile, name: "dpsemu device issuing CA", parent: root}, now)
	if err != nil {
		return nil, fmt.Errorf("device issuing CA: %w", err)
	}
	return &issuer{root: root, ca: ca}, nil
}

// rootPEM is the device root certificate, PEM encoded.
func (is *issuer) rootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.root.cert.Raw})
}

// issue signs a client certificate for the CSR's key and common name,
// valid until now+lifetime (capped at the issuing CA's expiry),
// and returns the chain DPS returns: leaf, intermediate, root (DER).
func (is *issuer) issue(csr *x509.CertificateRequest, lifetime time.Duration, now time.Time) ([][]byte, error) {
	notAfter := now.Add(lifetime)
	if notAfter.After(is.ca.cert.NotAfter) {
		notAfter = is.ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: csr.Subject.CommonName},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.ca.cert, csr.PublicKey, is.ca.key)
	if err != nil {
		return nil, fmt.Errorf("issuing certificate: %w", err)
	}
	return [][]byte{der, is.ca.cert.Raw, is.root.cert.Raw}, nil
}

// serverCert issues a certificate for the given DNS names and IP addresses.
func (a *authority) serverCert(dnsNames []string, ips []net.IP, now time.Time) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("generating server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "dpsemu", Organization: []string{"dpsd"}},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(serverLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dnsNames,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &key.PublicKey, a.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("creating server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der, a.cert.Raw}, PrivateKey: key}, nil
}

// randomSerial returns a positive 128-bit serial number.
func randomSerial() *big.Int {
	var b [16]byte
	rand.Read(b[:])
	b[0] &= 0x7f
	return new(big.Int).SetBytes(b[:])
}
