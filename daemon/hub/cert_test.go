package hub_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu/hubtest"
)

// deviceCA is a CA that issues device client certificates.
type deviceCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newDeviceCA(t *testing.T) deviceCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "device CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return deviceCA{cert, key}
}

// issue returns a client credential for cn, with its parsed leaf.
func (ca deviceCA) issue(t *testing.T, cn string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// TestCheckWithCertificate: a device with an operational certificate
// connects without a SAS and reports its twin; a certificate the hub does
// not trust is a rejection, as a bad token is.
func TestCheckWithCertificate(t *testing.T) {
	ca, foreign := newDeviceCA(t), newDeviceCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	tests := []struct {
		name string
		cert *tls.Certificate
		want error
	}{
		{"issued by the hub's CA", ca.issue(t, "dev1"), nil},
		{"another CA", foreign.issue(t, "dev1"), hub.ErrRejected},
		{"another device", ca.issue(t, "dev2"), hub.ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHub(t, hubemu.Options{ClientCAs: roots})
			h.UpsertDevice(hubName, "dev1", hubtest.Key(t))
			cfg := config(h, "dev1", nil)
			cfg.Sign, cfg.Certificate = nil, tt.cert
			_, err := hub.Check(ctxFor(t), cfg, map[string]any{"x": 1})
			if !errors.Is(err, tt.want) {
				t.Fatalf("Check: %v, want %v", err, tt.want)
			}
			if info, _ := h.Device("dev1"); tt.want == nil && info.ReportedVersion != 2 {
				t.Errorf("reported version %d, want 2", info.ReportedVersion)
			}
		})
	}
}
