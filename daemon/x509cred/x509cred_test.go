package x509cred_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/x509cred"
)

const regID = "regid-1"

func TestCreateCSR(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, signer := range []crypto.Signer{ecKey, rsaKey} {
		der, err := x509cred.CreateCSR(signer, regID)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Errorf("%T: %v", signer, err)
		}
		if csr.Subject.CommonName != regID {
			t.Errorf("%T: CN %q, want %q", signer, csr.Subject.CommonName, regID)
		}
		if !signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(csr.PublicKey) {
			t.Errorf("%T: the CSR holds another key", signer)
		}
	}
	if _, err := x509cred.CreateCSR(ecKey, ""); err == nil {
		t.Error("CSR for an empty registration ID")
	}
}

// ca is a test authority: a certificate and its key.
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign issues tmpl for pub; a nil parent self-signs with key.
func sign(t *testing.T, tmpl *x509.Certificate, pub crypto.PublicKey, parent *ca, key *ecdsa.PrivateKey) *ca {
	t.Helper()
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	issuer, signKey := tmpl, key
	if parent != nil {
		issuer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &ca{cert: c, key: key}
}

func authority(t *testing.T, cn string, parent *ca, now time.Time) *ca {
	key := newKey(t)
	return sign(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, &key.PublicKey, parent, key)
}

func leaf(t *testing.T, cn string, pub crypto.PublicKey, parent *ca, notBefore, notAfter time.Time, eku x509.ExtKeyUsage) []byte {
	return sign(t, &x509.Certificate{
		Subject:   pkix.Name{CommonName: cn},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku},
	}, pub, parent, nil).cert.Raw
}

func TestVerifyChain(t *testing.T) {
	now := time.Now()
	root := authority(t, "root", nil, now)
	inter := authority(t, "intermediate", root, now)
	otherRoot := authority(t, "other root", nil, now)
	device := newKey(t)
	other := newKey(t)
	good := leaf(t, regID, &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth)

	tests := []struct {
		name  string
		chain [][]byte
		now   time.Time
		want  error // nil: accepted
	}{
		{"leaf, intermediate, root", [][]byte{good, inter.cert.Raw, root.cert.Raw}, now, nil},
		{"leaf and its root", [][]byte{leaf(t, regID, &device.PublicKey, root, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), root.cert.Raw}, now, nil},
		{"empty", nil, now, x509cred.ErrMalformed},
		{"leaf alone", [][]byte{good}, now, x509cred.ErrMalformed},
		{"garbage", [][]byte{good, []byte("not DER"), root.cert.Raw}, now, x509cred.ErrMalformed},
		{"missing intermediate", [][]byte{good, root.cert.Raw}, now, x509cred.ErrUntrusted},
		{"foreign root", [][]byte{good, inter.cert.Raw, otherRoot.cert.Raw}, now, x509cred.ErrUntrusted},
		{"ends in an intermediate", [][]byte{good, inter.cert.Raw}, now, x509cred.ErrUntrusted},
		{"server certificate", [][]byte{leaf(t, regID, &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageServerAuth), inter.cert.Raw, root.cert.Raw}, now, x509cred.ErrUntrusted},
		{"another key", [][]byte{leaf(t, regID, &other.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), inter.cert.Raw, root.cert.Raw}, now, x509cred.ErrWrongKey},
		{"another CN", [][]byte{leaf(t, "regid-2", &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), inter.cert.Raw, root.cert.Raw}, now, x509cred.ErrWrongSubject},
		{"expired", [][]byte{good, inter.cert.Raw, root.cert.Raw}, now.Add(2 * time.Hour), x509cred.ErrNotValidNow},
		{"not yet valid", [][]byte{good, inter.cert.Raw, root.cert.Raw}, now.Add(-30 * time.Minute), x509cred.ErrNotValidNow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := x509cred.VerifyChain(tt.chain, regID, &device.PublicKey, tt.now)
			if tt.want == nil {
				if err != nil || got.Subject.CommonName != regID {
					t.Fatalf("= %v, %v; want the leaf", got, err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
		})
	}
}

func TestTLSCertificate(t *testing.T) {
	now := time.Now()
	root := authority(t, "root", nil, now)
	device := newKey(t)
	chain := [][]byte{leaf(t, regID, &device.PublicKey, root, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), root.cert.Raw}
	c, err := x509cred.TLSCertificate(chain, device)
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf == nil || c.Leaf.Subject.CommonName != regID || c.PrivateKey != crypto.PrivateKey(device) {
		t.Errorf("certificate %+v", c)
	}
	if len(c.SupportedSignatureAlgorithms) != 1 || c.SupportedSignatureAlgorithms[0] != tls.ECDSAWithP256AndSHA256 {
		t.Errorf("schemes %v, want ECDSA P-256 SHA-256 only", c.SupportedSignatureAlgorithms)
	}
	if _, err := x509cred.TLSCertificate(nil, device); !errors.Is(err, x509cred.ErrMalformed) {
		t.Errorf("empty chain: %v, want ErrMalformed", err)
	}
}
