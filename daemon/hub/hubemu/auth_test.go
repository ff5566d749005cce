package hubemu

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/x509cred/x509credtest"
)

// TestAuthenticateCertificate: an empty-password CONNECT is judged by the
// client certificate: chained to ClientCAs, for client authentication,
// valid now, named as the device's certificates are; the grant lasts until
// the certificate's notAfter.
func TestAuthenticateCertificate(t *testing.T) {
	t.Parallel()
	const hub, device = "h.example", "dev1"
	now := time.Now()
	ca, other := x509credtest.NewCA(t, "ca", nil), x509credtest.NewCA(t, "other", nil)
	issue := func(ca *x509credtest.CA, cn string, eku x509.ExtKeyUsage) []*x509.Certificate {
		c := ca.Issue(t, cn, &x509credtest.NewKey(t).PublicKey, func(c *x509.Certificate) { c.ExtKeyUsage = []x509.ExtKeyUsage{eku} })
		return []*x509.Certificate{c}
	}
	good := issue(ca, "reg-1", x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)

	s := New(Options{Hubs: []string{hub}, ClientCAs: roots})
	s.UpsertDevice(hub, device, []byte("k"))
	s.SetCertificateName(device, "reg-1")
	sasOnly := New(Options{Hubs: []string{hub}})
	sasOnly.UpsertDevice(hub, device, []byte("k"))

	tests := []struct {
		name string
		srv  *Server
		peer []*x509.Certificate
		at   time.Time
		ok   bool
	}{
		{"issued certificate", s, good, now, true},
		{"no certificate", s, nil, now, false},
		{"expired", s, good, good[0].NotAfter.Add(time.Minute), false},
		{"another CA", s, issue(other, "reg-1", x509.ExtKeyUsageClientAuth), now, false},
		{"the device ID instead of the registration ID", s, issue(ca, device, x509.ExtKeyUsageClientAuth), now, false},
		{"server certificate", s, issue(ca, "reg-1", x509.ExtKeyUsageServerAuth), now, false},
		{"hub without client CAs", sasOnly, good, now, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.srv.mu.Lock()
			g, err := tt.srv.authenticateLocked(device, hub+"/"+device+"/?api-version=2021-04-12", "", tt.peer, tt.at)
			tt.srv.mu.Unlock()
			if tt.ok != (err == nil) {
				t.Fatalf("err = %v, want accepted %v", err, tt.ok)
			}
			if tt.ok && (!g.until.Equal(good[0].NotAfter) || g.deviceID != device) {
				t.Errorf("grant %+v, want %s until %v", g, device, good[0].NotAfter)
			}
		})
	}
}
