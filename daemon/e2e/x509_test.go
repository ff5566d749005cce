package e2e

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
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
		return s.State == apitype.PhaseProvisioned && s.Hub.Connected
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
		return s.State == apitype.PhaseProvisioned && s.Hub.Connected
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
	pub := filepath.Join(t.TempDir(), "identity.crt")
	_, d, s := x509Provisioned(t, "24s", "renew_before = \"12s\"\ncert_file = \""+pub+"\"\n")
	prev := s.Credential
	prevKey := readFile(t, filepath.Join(d.state, "identity.tlskey"))
	for i := 1; i <= 3; i++ {
		start := time.Now()
		next := d.waitFor("a renewed certificate in use", func(s apitype.Status) bool {
			return s.Credential.Serial != prev.Serial && s.State == apitype.PhaseProvisioned && s.Hub.Connected
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
		// cert_file follows: the chain apps read is the one in use.
		testenv.WaitUntil(t, "cert_file holds the renewed chain", func() bool {
			b, err := os.ReadFile(pub)
			return err == nil && strings.Contains(string(b), "CERTIFICATE") &&
				string(b) == string(readFile(t, filepath.Join(d.state, "identity.crt")))
		})
		if fi, err := os.Stat(pub); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o640 {
			t.Errorf("cert_file mode %v, want 0640", fi.Mode().Perm())
		}
		t.Logf("renewal %d: in use %s after the previous certificate's, renewAt %s after it; %d TPM commands",
			i, time.Since(start).Round(time.Millisecond), prev.RenewAt.Sub(*s.ProvisionedAt), next.TPM.Commands-s.TPM.Commands)
		prev, prevKey, s = next.Credential, key, next
	}
	if strings.Contains(d.log.String(), "hub rejected the device") {
		t.Errorf("the hub rejected the device during renewals:\n%s", d.log)
	}
}

// TestX509TPMCleared: a TPM clear invalidates the certificate's key; the
// device registers again with a new key and certificate, same device ID,
// and other programs find the new key at cert_key_handle.
func TestX509TPMCleared(t *testing.T) {
	t.Parallel()
	_, d, s := x509Provisioned(t, "720h", "cert_key_handle = \"0x81000101\"\n")
	if s.Credential.KeyHandle != "0x81000101" {
		t.Errorf("status keyHandle %q, want 0x81000101", s.Credential.KeyHandle)
	}
	oldKey := readFile(t, filepath.Join(d.state, "identity.tlskey"))
	tpmtest.ClearSwtpm(t, d.tpm)
	again := d.waitFor("a new certificate after the clear", func(st apitype.Status) bool {
		return st.Reason == apitype.ReasonTPMCleared && st.State == apitype.PhaseProvisioned && st.Hub.Connected &&
			st.Credential.Serial != s.Credential.Serial
	})
	if again.DeviceID != s.DeviceID {
		t.Errorf("device ID %s after the clear, want %s", again.DeviceID, s.DeviceID)
	}
	if string(readFile(t, filepath.Join(d.state, "identity.tlskey"))) == string(oldKey) {
		t.Error("the certificate's key is the one from before the clear")
	}
	d.stop() // swtpm serves one client at a time
	d.signsWithHandle("0x81000101")
}

// signsWithHandle signs with the key persisted at handle through the
// standard TSS stack (tpm2_sign, what tpm2-openssl's handle: URIs reach)
// and checks the signature with identity.crt's key.
func (d *device) signsWithHandle(handle string) {
	d.t.Helper()
	bin := testenv.LookPath(d.t, "tpm2_sign")
	msg, sig := filepath.Join(d.dir, "msg"), filepath.Join(d.dir, "sig")
	data := []byte("signed by another program")
	if err := os.WriteFile(msg, data, 0o600); err != nil {
		d.t.Fatal(err)
	}
	cmd := exec.Command(bin, "-T", d.tpm.TCTI(), "-c", handle, "-g", "sha256", "-f", "plain", "-o", sig, msg)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=")
	if out, err := cmd.CombinedOutput(); err != nil {
		d.t.Fatalf("tpm2_sign: %v: %s", err, out)
	}
	digest := sha256.Sum256(data)
	pub, ok := d.leaf().PublicKey.(*ecdsa.PublicKey)
	if !ok || !ecdsa.VerifyASN1(pub, digest[:], readFile(d.t, sig)) {
		d.t.Errorf("the key at %s is not the certificate's (P-256: %v)", handle, ok)
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
		return st.State == apitype.PhaseFailed && st.LastError != nil
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

// TestX509KilledDuringRenewal cuts the power at the steps of a renewal:
// while DPS assigns it, and in the two disk states the switch can leave.
// Each start converges on one certificate the record names, with the hub
// accepting it.
func TestX509KilledDuringRenewal(t *testing.T) {
	t.Parallel()
	t.Run("while DPS assigns", func(t *testing.T) {
		t.Parallel()
		emu, d, s := x509Provisioned(t, "24s", "renew_before = \"12s\"\n")
		before := readFile(t, filepath.Join(d.state, "identity.crt"))
		emu.faults(map[string]any{"assignAfterPolls": 1000})
		d.waitFor("the renewal sent", func(st apitype.Status) bool {
			return st.State == apitype.PhaseAssigning && st.Reason == apitype.ReasonCertRenewal
		})
		d.kill()
		if got := readFile(t, filepath.Join(d.state, "identity.crt")); string(got) != string(before) {
			t.Error("the certificate changed before DPS assigned the renewal")
		}
		if r := d.record()["pendingReason"]; r != string(apitype.ReasonCertRenewal) {
			t.Errorf("pendingReason %v, want the renewal recorded", r)
		}
		emu.faults(map[string]any{})
		d.start()
		again := d.waitFor("renewed after the restart", func(st apitype.Status) bool {
			return st.State == apitype.PhaseProvisioned && st.Hub.Connected && st.Credential.Serial != s.Credential.Serial
		})
		if again.Reason != apitype.ReasonCertRenewal {
			t.Errorf("reason %s, want %s", again.Reason, apitype.ReasonCertRenewal)
		}
		consistentCert(t, d)
	})
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, state string)
	}{
		{"staged certificate not yet named by the record", func(t *testing.T, state string) {
			for _, f := range []string{"identity.crt.new", "identity.tlskey.new"} {
				if err := os.WriteFile(filepath.Join(state, f), []byte("from a renewal that never finished"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"record names the staged certificate and only its chain is still staged", func(t *testing.T, state string) {
			crt := filepath.Join(state, "identity.crt")
			if err := os.Rename(crt, crt+".new"); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(crt, []byte("the previous chain"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			emu, d, s := x509Provisioned(t, "720h", "")
			d.stop()
			tc.setup(t, d.state)
			before := emu.stats()["register"]
			d.start()
			again := d.waitFor("connected again", func(st apitype.Status) bool {
				return st.State == apitype.PhaseProvisioned && st.Hub.Connected
			})
			if again.Credential.Serial != s.Credential.Serial || emu.stats()["register"] != before {
				t.Errorf("the start registered again or changed the certificate (serial %s, was %s)", again.Credential.Serial, s.Credential.Serial)
			}
			consistentCert(t, d)
		})
	}
}

// consistentCert checks that the record names the certificate files on
// disk and that nothing is left staged.
func consistentCert(t *testing.T, d *device) {
	t.Helper()
	consistent(t, d)
	for _, f := range []string{"identity.crt.new", "identity.tlskey.new"} {
		if _, err := os.Stat(filepath.Join(d.state, f)); !os.IsNotExist(err) {
			t.Errorf("%s left behind (stat: %v)", f, err)
		}
	}
	if d.record()["certificateDigest"] == nil {
		t.Error("the record names no certificate")
	}
	d.leaf() // parses
}

// TestX509RenewalRetried: a renewal DPS fails is retried with backoff
// while the old certificate keeps the hub session up, and succeeds before
// the old one expires.
func TestX509RenewalRetried(t *testing.T) {
	t.Parallel()
	emu, d, s := x509Provisioned(t, "40s", "renew_before = \"20s\"\n")
	emu.faults(map[string]any{"serverErrors": 3})
	failed := d.waitFor("a failed renewal", func(st apitype.Status) bool {
		return st.State == apitype.PhaseFailed && st.Reason == apitype.ReasonCertRenewal
	})
	if failed.Credential.Serial != s.Credential.Serial || !failed.Hub.Connected {
		t.Errorf("while the renewal fails: %+v, connected %v; want the old certificate in use", failed.Credential, failed.Hub.Connected)
	}
	renewed := d.waitFor("the renewal retried", func(st apitype.Status) bool {
		return st.State == apitype.PhaseProvisioned && st.Hub.Connected && st.Credential.Serial != s.Credential.Serial
	})
	if at := renewed.Hub.CheckedAt; at == nil || !at.Before(*s.Credential.NotAfter) {
		t.Errorf("the renewed certificate connected at %v, the old one expired at %v", at, s.Credential.NotAfter)
	}
	if strings.Contains(d.log.String(), "hub rejected the device") {
		t.Errorf("the hub rejected the device:\n%s", d.log)
	}
}

// TestX509HubRejection: a hub that no longer knows the device refuses
// the certificate; as with SAS, the device registers again once, gets a
// new certificate and is accepted.
func TestX509HubRejection(t *testing.T) {
	t.Parallel()
	emu, d, s := x509Provisioned(t, "720h", "")
	if code := emu.call("DELETE", "/devices/"+s.DeviceID, nil, nil); code >= 300 {
		t.Fatalf("DELETE device: %d", code)
	}
	again := d.waitFor("registered again after the rejection", func(st apitype.Status) bool {
		return st.Reason == apitype.ReasonHubRejected && st.State == apitype.PhaseProvisioned && st.Hub.Connected
	})
	if again.DeviceID != s.DeviceID || again.Credential.Serial == s.Credential.Serial {
		t.Errorf("after the rejection: device %s serial %s; want device %s with a new certificate", again.DeviceID, again.Credential.Serial, s.DeviceID)
	}
	if n := emu.stats()["certificates_issued"]; n != 2 {
		t.Errorf("certificates_issued = %d, want 2: one registration for the rejection", n)
	}
}
