package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

const stayConnected = "[hub]\nstay_connected = true\n"

// registrations is how many times DPS has assigned the device.
func registrations(t *testing.T, emu *emulator, regID string) int {
	t.Helper()
	var reg struct{ Attempts int }
	if code := emu.call("GET", "/registrations/"+regID, nil, &reg); code != 200 {
		t.Fatalf("GET registration: %d", code)
	}
	return reg.Attempts
}

func TestHubDeletedDeviceIsReprovisioned(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, stayConnected)
	d.waitFor("hub session", func(s apitype.Status) bool { return s.Hub.Connected })
	before := registrations(t, emu, s.RegistrationID)

	if code := emu.call("DELETE", "/devices/"+s.DeviceID, nil, nil); code >= 300 {
		t.Fatalf("DELETE device: %d", code)
	}
	again := d.waitFor("re-provisioned after the hub rejected the device", func(s apitype.Status) bool {
		return s.Reason == apitype.ReasonHubRejected && s.State == apitype.PhaseProvisioned && s.Hub.Connected
	})
	if again.DeviceID != s.DeviceID {
		t.Errorf("device ID %s, want %s", again.DeviceID, s.DeviceID)
	}
	if n := registrations(t, emu, s.RegistrationID); n != before+1 {
		t.Errorf("%d registrations after the rejection, want exactly one more than %d", n, before)
	}
}

func TestDirectMethods(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, stayConnected)
	d.waitFor("hub session", func(s apitype.Status) bool { return s.Hub.Connected })

	var res struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	if code := emu.call("POST", "/devices/"+s.DeviceID+"/methods/status", map[string]any{}, &res); code != 200 || res.Status != 200 {
		t.Fatalf("method status: HTTP %d, device answered %d", code, res.Status)
	}
	var st apitype.Status
	if err := json.Unmarshal(res.Payload, &st); err != nil || st.DeviceID != s.DeviceID {
		t.Errorf("method status payload %s: %v", res.Payload, err)
	}
	if emu.call("POST", "/devices/"+s.DeviceID+"/methods/nonsense", map[string]any{}, &res); res.Status != 404 {
		t.Errorf("unknown method answered %d, want 404", res.Status)
	}
	if code := emu.call("POST", "/devices/"+s.DeviceID+"/methods/reprovision", map[string]any{}, &res); code != 200 || res.Status != 200 {
		t.Fatalf("method reprovision: HTTP %d, device answered %d", code, res.Status)
	}
	d.waitFor("re-provisioned on request", func(s apitype.Status) bool {
		return s.Reason == apitype.ReasonRequested && s.State == apitype.PhaseProvisioned
	})
}

// mqttConnect connects to the emulator's hub as the device with a token,
// as an app on the device would after `dpsd token`.
func mqttConnect(t *testing.T, emu *emulator, hub, deviceID, sas string) error {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(emu.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	opts := paho.NewClientOptions().
		AddBroker("ssl://" + emu.hub).
		SetClientID(deviceID).
		SetUsername(hub + "/" + deviceID + "/?api-version=2021-04-12").
		SetPassword(sas).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetTLSConfig(&tls.Config{RootCAs: roots, ServerName: hub})
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(30 * time.Second) {
		t.Fatal("CONNECT timed out")
	}
	if tok.Error() == nil {
		c.Disconnect(0)
	}
	return tok.Error()
}

func TestTokenForApps(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "[hub]\nverify = false\n")
	tok := d.token("--ttl", "10m")
	if tok.Hub != s.AssignedHub || tok.DeviceID != s.DeviceID || time.Until(tok.ExpiresAt) > 11*time.Minute {
		t.Errorf("token %+v for %s/%s", tok, s.AssignedHub, s.DeviceID)
	}
	if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, tok.SAS); err != nil {
		t.Fatalf("the hub refused a token from dpsd token: %v", err)
	}
	// One changed character of the signature, and the hub refuses.
	i := strings.Index(tok.SAS, "sig=") + 4
	flip := map[byte]byte{'A': 'B'}
	b := []byte(tok.SAS)
	if nb, ok := flip[b[i]]; ok {
		b[i] = nb
	} else {
		b[i] = 'A'
	}
	if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, string(b)); err == nil {
		t.Error("the hub accepted a tampered token")
	}
	if _, _, code := d.cli("token", "--ttl", "10000h", "--socket", d.socket); code == 0 {
		t.Error("a token beyond max_ttl was issued")
	}
}

func TestHubUnreachable(t *testing.T) {
	closed := freeAddr(t)
	emu, d, s := provisioned(t, "[hub]\nendpoint_override = \""+closed+"\"\n")
	s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != apitype.HubUnreachable || s.State != apitype.PhaseProvisioned {
		t.Errorf("hub unreachable: state %s, hub %+v", s.State, s.Hub)
	}
	if n := registrations(t, emu, s.RegistrationID); n != 1 {
		t.Errorf("%d registrations, want 1: an unreachable hub must not cause re-registration", n)
	}
}

func TestDisabledEnrollment(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "")
	d.enroll(map[string]any{"provisioningStatus": "disabled"})
	d.start()
	s := d.waitFor("disabled", func(s apitype.Status) bool { return s.State == apitype.PhaseDisabled })
	if s.LastError == nil || !strings.Contains(*s.LastError, "disabled") || s.NextAttemptAt == nil {
		t.Errorf("disabled status without a reason or next attempt: %+v", s)
	}
}

func TestUnknownEnrollmentFails(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "")
	d.start() // never enrolled
	s := d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	if s.LastError == nil || s.NextAttemptAt == nil || time.Until(*s.NextAttemptAt) < 10*time.Minute {
		t.Errorf("an unknown enrollment should fail with a slow retry: %+v", s)
	}
}

func TestConfigChangeReprovisions(t *testing.T) {
	t.Parallel()
	_, d, _ := provisioned(t, "[hub]\nverify = false\n")
	d.stop()
	d.writeConfig("[hub]\nverify = false\n[provisioning]\npayload = '{\"site\":\"plant-7\"}'\n")
	d.start()
	d.waitFor("re-provisioned for the new payload", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonConfigChanged
	})
}

// TestHubStillRejectsBacksOff: a hub that refuses the device even after a
// new registration (here: a hub that never heard of it) earns exactly one
// re-registration, then a failed state with a slow retry, never a storm of
// registrations. A transient DPS failure during that one registration is
// retried as usual, not mistaken for the hub refusing again.
func TestHubStillRejectsBacksOff(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		dpsFaults map[string]any
	}{
		{"DPS answers", nil},
		{"DPS fails once during the re-registration", map[string]any{"serverErrors": 1}},
	} {
		dpsFaults := tc.dpsFaults
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			d := newDevice(t, emu, "")
			info := d.enroll(nil)
			d.start()
			d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result == apitype.HubOK })
			d.stop()

			// A second emulator's hub: same host names, no such device.
			stranger := startEmulator(t, t.TempDir(), "")
			bundle := filepath.Join(t.TempDir(), "cas.pem")
			var pems []byte
			for _, e := range []*emulator{emu, stranger} {
				b, err := os.ReadFile(filepath.Join(e.dir, "ca.pem"))
				if err != nil {
					t.Fatal(err)
				}
				pems = append(pems, b...)
			}
			if err := os.WriteFile(bundle, pems, 0o644); err != nil {
				t.Fatal(err)
			}
			d.writeConfig(fmt.Sprintf("[hub]\nendpoint_override = %q\n\n[network]\nca_file = %q\n", stranger.hub, bundle))
			before := registrations(t, emu, info.RegistrationID)
			if dpsFaults != nil {
				emu.faults(dpsFaults)
			}
			d.start()
			// The record says the hub accepted this identity, so the start
			// does not ask it; a technician's check does.
			d.waitProvisioned()
			d.cli("check", "--socket", d.socket)
			s := d.waitFor("failed after the hub kept refusing", func(s apitype.Status) bool {
				return s.State == apitype.PhaseFailed && s.LastError != nil && strings.Contains(*s.LastError, "still refuses")
			})
			if s.Hub.Result != apitype.HubRejected {
				t.Errorf("hub %+v, want rejected", s.Hub)
			}
			if s.NextAttemptAt == nil || time.Until(*s.NextAttemptAt) < 10*time.Minute {
				t.Errorf("next attempt %v: want a slow retry", s.NextAttemptAt)
			}
			if n := registrations(t, emu, info.RegistrationID); n != before+1 {
				t.Errorf("%d registrations after the rejections, want exactly one more than %d", n, before)
			}
		})
	}
}

// TestDeadKeyDoesNotDriveDPS: the TPM is cleared and a technician's
// re-registration fails for good (the enrollment was disabled meanwhile).
// Apps that keep asking for tokens must get "not provisioned", not make
// the daemon register with DPS on every request.
func TestDeadKeyDoesNotDriveDPS(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "[hub]\nverify = false\n\n[tpm]\ncheck_interval = \"1h\"\n")
	info := apitype.EnrollInfo{RegistrationID: s.RegistrationID}
	out, _, code := d.cli("enroll-info", "--json", "--socket", d.socket)
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("enroll-info: %d %s", code, out)
	}
	body := map[string]any{
		"registrationId":     info.RegistrationID,
		"attestation":        map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": info.EndorsementKey}},
		"provisioningStatus": "disabled",
	}
	if code := emu.call("PUT", "/enrollments/"+info.RegistrationID, body, nil); code >= 300 {
		t.Fatalf("PUT enrollment: %d", code)
	}
	tpmtest.ClearSwtpm(t, d.tpm)
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	disabled := d.waitFor("disabled", func(s apitype.Status) bool { return s.State == apitype.PhaseDisabled })
	// A technician's registration, run to its end, is what one attempt
	// costs; a second one after the token requests is the barrier: a
	// registration the tokens wrongly woke starts at once and has run (or
	// is counted) by the time the requested one has.
	requested := func() (apitype.Status, int) {
		t.Helper()
		now, ok := d.status()
		if !ok {
			t.Fatal("dpsd status failed")
		}
		if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
			t.Fatalf("dpsd reprovision: %d %s", code, errOut)
		}
		s := d.waitFor("the requested registration", func(s apitype.Status) bool {
			return s.State == apitype.PhaseDisabled && s.Attempts > now.Attempts
		})
		return s, emu.stats()["total"]
	}
	before := emu.stats()["total"]
	s1, after1 := requested()
	for range 10 {
		if _, _, code := d.cli("token", "--socket", d.socket); code == 0 {
			t.Fatal("a token was issued with the key of a cleared TPM")
		}
	}
	s2, after2 := requested()
	if s1.Attempts != disabled.Attempts+1 || s2.Attempts != s1.Attempts+1 {
		t.Errorf("attempts %d, %d, %d: registrations beyond the two requested", disabled.Attempts, s1.Attempts, s2.Attempts)
	}
	if n, one := after2-after1, after1-before; n != one {
		t.Errorf("%d DPS requests during the token requests and one requested registration, want %d (one registration)", n, one)
	}
}
