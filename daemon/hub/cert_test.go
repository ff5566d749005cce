package hub_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu/hubtest"
	"github.com/dpsd-project/dpsd/daemon/x509cred/x509credtest"
)

// TestCheckWithCertificate: a device with an operational certificate
// connects without a SAS and reports its twin; a certificate the hub does
// not trust is a rejection, as a bad token is.
func TestCheckWithCertificate(t *testing.T) {
	t.Parallel()
	ca, foreign := x509credtest.NewCA(t, "device CA", nil), x509credtest.NewCA(t, "foreign", nil)
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	tests := []struct {
		name string
		cert tls.Certificate
		want error
	}{
		{"issued by the hub's CA", ca.ClientCertificate(t, "dev1"), nil},
		{"another CA", foreign.ClientCertificate(t, "dev1"), hub.ErrRejected},
		{"another device", ca.ClientCertificate(t, "dev2"), hub.ErrRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHub(t, hubemu.Options{ClientCAs: roots})
			h.UpsertDevice(hubName, "dev1", hubtest.Key(t))
			cfg := config(h, "dev1", nil)
			cfg.Sign, cfg.Certificate = nil, &tt.cert
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
