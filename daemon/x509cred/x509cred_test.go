package x509cred_test

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/x509cred"
	"github.com/dpsd-project/dpsd/daemon/x509cred/x509credtest"
)

const regID = "regid-1"

func TestCreateCSR(t *testing.T) {
	t.Parallel()
	ecKey := x509credtest.NewKey(t)
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

// leaf issues a certificate for cn and pub, valid from notBefore to
// notAfter, with the one extended usage eku.
func leaf(t *testing.T, cn string, pub crypto.PublicKey, parent *x509credtest.CA, notBefore, notAfter time.Time, eku x509.ExtKeyUsage) []byte {
	return parent.Issue(t, cn, pub, func(c *x509.Certificate) {
		c.NotBefore, c.NotAfter, c.ExtKeyUsage = notBefore, notAfter, []x509.ExtKeyUsage{eku}
	}).Raw
}

func TestVerifyChain(t *testing.T) {
	t.Parallel()
	now := time.Now()
	root := x509credtest.NewCA(t, "root", nil)
	inter := x509credtest.NewCA(t, "intermediate", root)
	otherRoot := x509credtest.NewCA(t, "other root", nil)
	device := x509credtest.NewKey(t)
	other := x509credtest.NewKey(t)
	good := leaf(t, regID, &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth)

	tests := []struct {
		name  string
		chain [][]byte
		now   time.Time
		want  error // nil: accepted
	}{
		{"leaf, intermediate, root", [][]byte{good, inter.Cert.Raw, root.Cert.Raw}, now, nil},
		{"leaf and its root", [][]byte{leaf(t, regID, &device.PublicKey, root, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), root.Cert.Raw}, now, nil},
		{"empty", nil, now, x509cred.ErrMalformed},
		{"leaf alone", [][]byte{good}, now, x509cred.ErrMalformed},
		{"garbage", [][]byte{good, []byte("not DER"), root.Cert.Raw}, now, x509cred.ErrMalformed},
		{"missing intermediate", [][]byte{good, root.Cert.Raw}, now, x509cred.ErrUntrusted},
		{"foreign root", [][]byte{good, inter.Cert.Raw, otherRoot.Cert.Raw}, now, x509cred.ErrUntrusted},
		{"ends in an intermediate", [][]byte{good, inter.Cert.Raw}, now, x509cred.ErrUntrusted},
		{"server certificate", [][]byte{leaf(t, regID, &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageServerAuth), inter.Cert.Raw, root.Cert.Raw}, now, x509cred.ErrUntrusted},
		{"another key", [][]byte{leaf(t, regID, &other.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), inter.Cert.Raw, root.Cert.Raw}, now, x509cred.ErrWrongKey},
		{"another CN", [][]byte{leaf(t, "regid-2", &device.PublicKey, inter, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), inter.Cert.Raw, root.Cert.Raw}, now, x509cred.ErrWrongSubject},
		{"expired", [][]byte{good, inter.Cert.Raw, root.Cert.Raw}, now.Add(2 * time.Hour), x509cred.ErrNotValidNow},
		{"not yet valid", [][]byte{good, inter.Cert.Raw, root.Cert.Raw}, now.Add(-30 * time.Minute), x509cred.ErrNotValidNow},
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
	t.Parallel()
	now := time.Now()
	root := x509credtest.NewCA(t, "root", nil)
	device := x509credtest.NewKey(t)
	chain := [][]byte{leaf(t, regID, &device.PublicKey, root, now.Add(-time.Minute), now.Add(time.Hour), x509.ExtKeyUsageClientAuth), root.Cert.Raw}
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
	if _, err := x509cred.TLSCertificate(chain, x509credtest.NewKey(t)); !errors.Is(err, x509cred.ErrMalformed) {
		t.Errorf("chain for another key: %v, want ErrMalformed", err)
	}
}
