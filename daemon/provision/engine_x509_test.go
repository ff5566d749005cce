package provision

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// newX509Rig is a rig whose device authenticates with certificates DPS
// issues for life, and keeps a hub session (which shows the certificate
// used).
func newX509Rig(t *testing.T, life time.Duration) *rig {
	r := newRig(t)
	r.cfg.Hub.Auth = config.AuthX509
	r.cfg.Hub.StayConnected = true
	r.dps.certs = &certPolicy{life: life}
	r.withCSR = r.dps.withCSR(t)
	return r
}

func (r *rig) certsIssued() int {
	r.dps.certs.mu.Lock()
	defer r.dps.certs.mu.Unlock()
	return r.dps.certs.issued
}

// sessionCerts are the serials of the hub sessions' client certificates.
func (h *fakeHub) sessionCerts(t *testing.T) []string {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	var serials []string
	for _, c := range h.certs {
		if c == nil || c.Leaf == nil {
			t.Fatal("a hub session without a client certificate in x509 mode")
		}
		serials = append(serials, c.Leaf.SerialNumber.Text(16))
	}
	return serials
}

func hasCert(s apitype.Status) bool { return isProvisioned(s) && s.Credential.Serial != "" }

// TestEngineX509: the certificate comes through the DPS seam with the
// registration, the hub session authenticates with it, a warm start loads
// it without DPS, and apps get no SAS tokens.
func TestEngineX509(t *testing.T) {
	r := newX509Rig(t, time.Hour)
	e := r.start(t)
	s := e.until(t, "provisioned with a certificate", hasCert)
	regID := dps.RegistrationID(r.tpm.ek)
	if s.Credential.Type != apitype.CredentialX509 || s.Credential.Subject != "CN="+regID {
		t.Errorf("credential %+v, want x509 for CN=%s", s.Credential, regID)
	}
	if _, err := e.Token(context.Background(), time.Hour); !errors.Is(err, ErrCertificateAuth) {
		t.Errorf("Token in x509 mode = %v, want ErrCertificateAuth", err)
	}
	_ = e.stop()
	if got := r.hub.sessionCerts(t); len(got) != 1 || got[0] != s.Credential.Serial {
		t.Errorf("hub sessions with %v, want one with %s", got, s.Credential.Serial)
	}

	e = r.start(t)
	again := e.until(t, "warm start with the certificate", hasCert)
	_ = e.stop()
	if again.Credential.Serial != s.Credential.Serial || r.certsIssued() != 1 {
		t.Errorf("warm start: serial %s (was %s), %d certificates issued; want the same, 1", again.Credential.Serial, s.Credential.Serial, r.certsIssued())
	}

	// A TPM clear while stopped: a new key and certificate, same device.
	r.tpm.clear()
	e = r.start(t)
	cleared := e.until(t, "a new certificate after the clear", func(st apitype.Status) bool {
		return hasCert(st) && st.Reason == apitype.ReasonTPMCleared
	})
	if cleared.Credential.Serial == s.Credential.Serial || cleared.DeviceID != s.DeviceID {
		t.Errorf("after the clear: serial %s device %s; want a new serial, device %s", cleared.Credential.Serial, cleared.DeviceID, s.DeviceID)
	}
}

// TestEngineX509Renewal: a short-lived certificate is renewed, each time
// with a new key, and the hub session moves to the new one.
func TestEngineX509Renewal(t *testing.T) {
	r := newX509Rig(t, 3*time.Second)
	r.cfg.Hub.CertKeyHandle = 0x81000101
	e := r.start(t)
	first := e.until(t, "provisioned with a certificate", hasCert)
	seen := map[string]bool{first.Credential.Serial: true}
	for len(seen) < 3 {
		s := e.until(t, "a renewed certificate", func(st apitype.Status) bool { return hasCert(st) && !seen[st.Credential.Serial] })
		if s.Reason != apitype.ReasonCertRenewal {
			t.Errorf("reason %s, want %s", s.Reason, apitype.ReasonCertRenewal)
		}
		seen[s.Credential.Serial] = true
	}
	_ = e.stop()
	for _, serial := range r.hub.sessionCerts(t) {
		delete(seen, serial)
	}
	if len(seen) != 0 {
		t.Errorf("certificates never used for a hub session: %v", seen)
	}
	// The handle holds the key of the certificate in use.
	files, err := (&state.Store{Dir: r.cfg.State.Dir}).LoadCertificate()
	if err != nil {
		t.Fatal(err)
	}
	var key tpmdev.SigningKey
	if err := key.UnmarshalBinary(files.Key); err != nil {
		t.Fatal(err)
	}
	if got := r.tpm.persistedAt("0x81000101"); string(got) != string(key.Public) {
		t.Error("the key at cert_key_handle is not the certificate's in use")
	}
	if s := e.Status(); s.Credential.KeyHandle != "0x81000101" {
		t.Errorf("status keyHandle %q, want 0x81000101", s.Credential.KeyHandle)
	}
}

// TestEngineX509RefusedChain: a chain for another key is refused before
// it replaces anything: the certificate in use, its files and the hub
// session stay.
func TestEngineX509RefusedChain(t *testing.T) {
	r := newX509Rig(t, time.Hour)
	e := r.start(t)
	s := e.until(t, "provisioned with a certificate", hasCert)
	store := state.Store{Dir: r.cfg.State.Dir}
	before, err := store.LoadCertificate()
	if err != nil {
		t.Fatal(err)
	}
	r.dps.certs.mu.Lock()
	r.dps.certs.wrongKey = true
	r.dps.certs.mu.Unlock()
	e.Reprovision(apitype.ReasonRequested)
	failed := e.until(t, "the chain refused", func(st apitype.Status) bool { return st.State == apitype.PhaseFailed })
	if failed.LastError == nil || !strings.Contains(*failed.LastError, "certificate is for another key") {
		t.Errorf("last error %v, want the refusal of a chain for another key", failed.LastError)
	}
	if failed.Credential.Serial != s.Credential.Serial || !failed.Hub.Connected {
		t.Errorf("after the refusal: %+v, connected %v; want %s still in use", failed.Credential, failed.Hub.Connected, s.Credential.Serial)
	}
	after, err := store.LoadCertificate()
	if err != nil || certDigest(after) != certDigest(before) {
		t.Errorf("the certificate files changed (%v)", err)
	}
}
