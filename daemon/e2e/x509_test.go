package e2e

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// x509Config is a device that authenticates to its hub with a certificate
// DPS issues and keeps a session (the hub's acceptance is visible).
const x509Config = "[provisioning]\napi_version = \"2026-11-01\"\n\n[hub]\nauth = \"x509\"\nstay_connected = true\n"

// x509Provisioned is a device enrolled with a credential policy of the
// given certificate lifetime, started, provisioned and connected to its
// hub over mTLS.
func x509Provisioned(t *testing.T, lifetime, extra string) (*emulator, *device, apitype.Status) {
	t.Helper()
	emu := startEmulator(t, t.TempDir(), "")
	if code := emu.call("PUT", "/credentialPolicies/test", map[string]any{"certificateLifetime": lifetime}, nil); code != 200 {
		t.Fatalf("PUT credential policy: %d", code)
	}
	d := newDevice(t, emu, x509Config+extra)
	d.enroll(map[string]any{"credentialPolicyName": "test"})
	start := time.Now()
	d.start()
	s := d.waitFor("provisioned and connected with the certificate", func(s apitype.Status) bool {
		return s.State == apitype.StateProvisioned && s.Hub.Connected
	})
	t.Logf("first boot in x509 mode to a hub session: %s, %d TPM commands", time.Since(start).Round(time.Millisecond), s.TPM.Commands)
	return emu, d, s
}

// leaf reads identity.crt's first certificate.
func (d *device) leaf() *x509.Certificate {
	d.t.Helper()
	raw, err := os.ReadFile(filepath.Join(d.state, "identity.crt"))
	if err != nil {
		d.t.Fatal(err)
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		d.t.Fatalf("identity.crt holds no PEM: %q", raw)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		d.t.Fatal(err)
	}
	return c
}

func TestX509FirstBootHubSession(t *testing.T) {
	t.Parallel()
	emu, d, s := x509Provisioned(t, "720h", "")
	cr := s.Credential
	if cr.Type != apitype.CredentialX509 || cr.Subject != "CN="+s.RegistrationID || cr.Serial == "" ||
		cr.NotBefore == nil || cr.NotAfter == nil || cr.RenewAt == nil {
		t.Fatalf("credential in status = %+v, want an x509 certificate for CN=%s", cr, s.RegistrationID)
	}
	// The emulator backdates notBefore by an hour: the life counts from
	// receipt (provisionedAt, to the second).
	if want := cr.NotAfter.Add(-cr.NotAfter.Sub(*s.ProvisionedAt) / 3); !cr.RenewAt.Equal(want) {
		t.Errorf("renewAt %v, want two thirds of the life from receipt (%v)", cr.RenewAt, want)
	}
	leaf := d.leaf()
	if leaf.Subject.CommonName != s.RegistrationID || !strings.EqualFold(leaf.SerialNumber.Text(16), cr.Serial) {
		t.Errorf("identity.crt: CN %q serial %x; status says %+v", leaf.Subject.CommonName, leaf.SerialNumber, cr)
	}
	for _, f := range []string{"identity.key", "identity.tlskey", "identity.crt"} {
		if _, err := os.Stat(filepath.Join(d.state, f)); err != nil {
			t.Errorf("state dir: %v", err)
		}
		if _, err := os.Stat(filepath.Join(d.state, f+".new")); err == nil {
			t.Errorf("%s.new left staged after the switch", f)
		}
	}
	if rec := d.record(); rec["certificateDigest"] == nil || rec["certificateDigest"] == "" {
		t.Errorf("state.json names no certificate: %v", rec)
	}
	if n := emu.stats()["certificates_issued"]; n != 1 {
		t.Errorf("certificates_issued = %d, want 1", n)
	}

	// No SAS tokens: the hub knows the device by its certificate.
	_, errOut, code := d.cli("token", "--socket", d.socket)
	if code == 0 || !strings.Contains(errOut, "this device authenticates with a certificate") {
		t.Errorf("dpsd token: exit %d, %q; want a refusal saying the device uses a certificate", code, errOut)
	}

	// The human view shows the certificate.
	out, _, code := d.cli("status", "--socket", d.socket)
	if code != 0 || !strings.Contains(out, "CN="+s.RegistrationID) || !strings.Contains(out, "Renew at") {
		t.Errorf("dpsd status: exit %d:\n%s", code, out)
	}

	// A warm restart loads the certificate and connects again: no DPS.
	before := emu.stats()["register"]
	d.stop()
	d.start()
	again := d.waitFor("connected again", func(s apitype.Status) bool {
		return s.State == apitype.StateProvisioned && s.Hub.Connected
	})
	if again.Credential.Serial != cr.Serial || again.Reason != apitype.ReasonFirstBoot {
		t.Errorf("after a restart: %+v, reason %s; want the same certificate", again.Credential, again.Reason)
	}
	if n := emu.stats()["register"]; n != before {
		t.Errorf("a warm restart registered again (%d -> %d)", before, n)
	}
}

// TestX509Renewals: a short-lived certificate is renewed again and again
// (a new TPM key and CSR each time), each new one taking over while the
// old one is still valid, without the hub ever refusing the device.
func TestX509Renewals(t *testing.T) {
	t.Parallel()
	_, d, s := x509Provisioned(t, "24s", "renew_before = \"12s\"\n")
	prev := s.Credential
	prevKey := readFile(t, filepath.Join(d.state, "identity.tlskey"))
	for i := 1; i <= 3; i++ {
		start := time.Now()
		next := d.waitFor("a renewed certificate in use", func(s apitype.Status) bool {
			return s.Credential.Serial != prev.Serial && s.State == apitype.StateProvisioned && s.Hub.Connected
		})
		if next.Reason != apitype.ReasonCertRenewal || next.DeviceID != s.DeviceID {
			t.Errorf("renewal %d: reason %s, device %s; want %s for %s", i, next.Reason, next.DeviceID, apitype.ReasonCertRenewal, s.DeviceID)
		}
		// No gap: the new certificate was accepted before the old expired.
		if connected := next.Hub.CheckedAt; connected == nil || !connected.Before(*prev.NotAfter) {
			t.Errorf("renewal %d: connected with the new certificate at %v, the old one expired at %v", i, connected, prev.NotAfter)
		}
		key := readFile(t, filepath.Join(d.state, "identity.tlskey"))
		if string(key) == string(prevKey) {
			t.Errorf("renewal %d kept the old TPM key", i)
		}
		t.Logf("renewal %d: in use %s after the previous one's renewAt wait began", i, time.Since(start).Round(time.Millisecond))
		prev, prevKey = next.Credential, key
	}
	if strings.Contains(d.log.String(), "hub rejected the device") {
		t.Errorf("the hub rejected the device during renewals:\n%s", d.log)
	}
}

// TestX509TPMCleared: a TPM clear invalidates the certificate's key; the
// device registers again with a new key and certificate, same device ID.
func TestX509TPMCleared(t *testing.T) {
	t.Parallel()
	_, d, s := x509Provisioned(t, "720h", "")
	oldKey := readFile(t, filepath.Join(d.state, "identity.tlskey"))
	tpmtest.ClearSwtpm(t, d.tpm)
	again := d.waitFor("a new certificate after the clear", func(st apitype.Status) bool {
		return st.Reason == apitype.ReasonTPMCleared && st.State == apitype.StateProvisioned && st.Hub.Connected &&
			st.Credential.Serial != s.Credential.Serial
	})
	if again.DeviceID != s.DeviceID {
		t.Errorf("device ID %s after the clear, want %s", again.DeviceID, s.DeviceID)
	}
	if string(readFile(t, filepath.Join(d.state, "identity.tlskey"))) == string(oldKey) {
		t.Error("the certificate's key is the one from before the clear")
	}
}

// TestX509ChainRefused: a chain for another key is refused before it
// replaces anything; the old certificate stays in use and the hub keeps
// accepting the device.
func TestX509ChainRefused(t *testing.T) {
	t.Parallel()
	emu, d, s := x509Provisioned(t, "720h", "")
	files := map[string][]byte{}
	for _, f := range []string{"identity.tlskey", "identity.crt"} {
		files[f] = readFile(t, filepath.Join(d.state, f))
	}
	emu.faults(map[string]any{"wrongKeyChain": true})
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	failed := d.waitFor("the chain refused", func(st apitype.Status) bool {
		return st.State == apitype.StateFailed && st.LastError != nil
	})
	if !strings.Contains(*failed.LastError, "certificate is for another key") {
		t.Errorf("last error %q, want the refusal of a chain for another key", *failed.LastError)
	}
	if failed.Credential.Serial != s.Credential.Serial {
		t.Errorf("credential in use %+v, want the old one %s", failed.Credential, s.Credential.Serial)
	}
	for f, before := range files {
		if string(readFile(t, filepath.Join(d.state, f))) != string(before) {
			t.Errorf("%s was replaced by a refused chain", f)
		}
	}
	d.waitFor("still connected with the old certificate", func(st apitype.Status) bool { return st.Hub.Connected })
}
