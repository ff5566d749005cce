package hubemu

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"
)

// testCert issues a certificate for cn; a nil parent self-signs a CA.
func testCert(t *testing.T, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, notAfter time.Time, eku x509.ExtKeyUsage) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{eku},
	}
	if parent == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage, tmpl.ExtKeyUsage = true, true, x509.KeyUsageCertSign, nil
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// TestAuthenticateCertificate: an empty-password CONNECT is judged by the
// client certificate: chained to ClientCAs, for client authentication,
// valid now, named as the device's certificates are; the grant lasts until
// the certificate's notAfter.
func TestAuthenticateCertificate(t *testing.T) {
	const hub, device = "h.example", "dev1"
	now := time.Now()
	later := now.Add(time.Hour)
	ca, caKey := testCert(t, "ca", nil, nil, now.Add(24*time.Hour), 0)
	other, otherKey := testCert(t, "other", nil, nil, now.Add(24*time.Hour), 0)
	good, _ := testCert(t, "reg-1", ca, caKey, later, x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	s := New(Options{Hubs: []string{hub}, ClientCAs: roots})
	s.UpsertDevice(hub, device, []byte("k"))
	s.SetCertificateName(device, "reg-1")
	sasOnly := New(Options{Hubs: []string{hub}})
	sasOnly.UpsertDevice(hub, device, []byte("k"))

	cert := func(cn string, parent *x509.Certificate, key *ecdsa.PrivateKey, notAfter time.Time, eku x509.ExtKeyUsage) []*x509.Certificate {
		c, _ := testCert(t, cn, parent, key, notAfter, eku)
		return []*x509.Certificate{c}
	}
	tests := []struct {
		name string
		srv  *Server
		peer []*x509.Certificate
		at   time.Time
		ok   bool
	}{
		{"issued certificate", s, []*x509.Certificate{good}, now, true},
		{"no certificate", s, nil, now, false},
		{"expired", s, []*x509.Certificate{good}, later.Add(time.Minute), false},
		{"another CA", s, cert("reg-1", other, otherKey, later, x509.ExtKeyUsageClientAuth), now, false},
		{"the device ID instead of the registration ID", s, cert(device, ca, caKey, later, x509.ExtKeyUsageClientAuth), now, false},
		{"server certificate", s, cert("reg-1", ca, caKey, later, x509.ExtKeyUsageServerAuth), now, false},
		{"hub without client CAs", sasOnly, []*x509.Certificate{good}, now, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.srv.mu.Lock()
			g, err := tt.srv.authenticateLocked(device, hub+"/"+device+"/?api-version=2021-04-12", "", tt.peer, tt.at)
			tt.srv.mu.Unlock()
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want accepted %v", err, tt.ok)
			}
			if tt.ok && (!g.until.Equal(good.NotAfter) || g.deviceID != device) {
				t.Errorf("grant %+v, want %s until %v", g, device, good.NotAfter)
			}
		})
	}
}
