package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// consistent checks that the record names exactly the identity on disk and
// that no staged key is left over.
func consistent(t *testing.T, d *device) {
	t.Helper()
	key, err := os.ReadFile(filepath.Join(d.state, "identity.key"))
	if err != nil {
		t.Fatalf("identity.key: %v", err)
	}
	sum := sha256.Sum256(key)
	if got := d.record()["identityDigest"]; got != hex.EncodeToString(sum[:]) {
		t.Errorf("state.json names identity %v, identity.key is %x", got, sum)
	}
	if _, err := os.Stat(filepath.Join(d.state, "identity.key.new")); !os.IsNotExist(err) {
		t.Errorf("a staged identity was left behind (stat: %v)", err)
	}
}

// TestKilledDuringRegistration cuts the power while the daemon waits for
// DPS at each step of a registration; the next start must converge.
func TestKilledDuringRegistration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		faults         map[string]any
		during         apitype.Phase
		afterChallenge bool
	}{
		// The challenge is imported, the authenticated PUT is in flight.
		{"after the challenge import", map[string]any{"latency": "2s"}, apitype.PhaseRegistering, true},
		// The registration was accepted; DPS is still assigning.
		{"after the second PUT", map[string]any{"assignAfterPolls": 5}, apitype.PhaseAssigning, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			d := newDevice(t, emu, "")
			d.enroll(nil)
			emu.faults(tc.faults)
			d.start()
			d.waitFor(string(tc.during), func(s apitype.Status) bool { return s.State == tc.during })
			if tc.afterChallenge {
				// The authenticated PUT has arrived (so the challenge was
				// imported) and is held up by the latency.
				testenv.WaitUntil(t, "the authenticated registration", func() bool { return emu.stats()["register"] >= 1 })
			}
			d.kill()

			emu.faults(map[string]any{})
			d.start()
			s := d.waitProvisioned()
			consistent(t, d)
			s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
			if s.Hub.Result != apitype.HubOK {
				t.Errorf("the hub does not accept the converged identity: %+v", s.Hub)
			}
		})
	}
}

// TestInterruptedSwitch puts the disk in the two states a power cut
// between "assigned" and the end of the switch can leave, and checks that
// the next start converges without a new registration.
func TestInterruptedSwitch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, key, staged string)
	}{
		{"staged key not yet named by the record", func(t *testing.T, key, staged string) {
			// The new key was written, the record not: the old key stays.
			if err := os.WriteFile(staged, []byte("a key from a registration that never finished"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"record names the staged key", func(t *testing.T, key, staged string) {
			// The record was saved, the rename did not happen.
			if err := os.Rename(key, staged); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(key, []byte("the previous identity"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu, d, s := provisioned(t, "[hub]\nverify = false\n")
			d.stop()
			tc.setup(t, filepath.Join(d.state, "identity.key"), filepath.Join(d.state, "identity.key.new"))
			before := emu.stats()["total"]
			d.start()
			again := d.waitProvisioned()
			if again.Reason != s.Reason || emu.stats()["total"] != before {
				t.Errorf("the start registered again (reason %s, %d requests)", again.Reason, emu.stats()["total"]-before)
			}
			consistent(t, d)
			if _, errOut, code := d.cli("token", "--socket", d.socket); code != 0 {
				t.Errorf("no working identity after the switch: %s", errOut)
			}
		})
	}
}

// TestKilledDuringReregistration cuts the power while a technician's
// re-registration waits for DPS: the request must survive it, and the next
// start registers again (reason requested) and ends with one working
// identity.
func TestKilledDuringReregistration(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "[hub]\nverify = false\n")
	old := d.stuckReregistration()
	before := registrations(t, emu, s.RegistrationID)
	d.kill()

	emu.faults(map[string]any{})
	d.start()
	again := d.waitFor("the request carried out after the power cut", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonRequested
	})
	consistent(t, d)
	if n := registrations(t, emu, s.RegistrationID); n != before+1 {
		t.Errorf("%d assignments, want %d: the request registers once", n, before+1)
	}
	now, err := os.ReadFile(filepath.Join(d.state, "identity.key"))
	if err != nil || string(now) == string(old) || again.DeviceID != s.DeviceID {
		t.Fatalf("identity after the resumed registration: changed %t, device %s (was %s), err %v",
			string(now) != string(old), again.DeviceID, s.DeviceID, err)
	}
	if p, ok := d.record()["pendingReason"]; ok {
		t.Errorf("the completed request is still pending in state.json: %v", p)
	}
	tok := d.token()
	if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, tok.SAS); err != nil {
		t.Errorf("the hub refuses the identity of the resumed registration: %v", err)
	}
}
