package e2e

import (
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// TestWarmRestartsDoNotConnect: once the hub has accepted the identity,
// the record says so, and a restart makes no network connection at all:
// no DPS request and no hub connection, which would knock the device's app
// off the hub (one connection per device ID). A technician's `dpsd check`
// asks the hub again.
func TestWarmRestartsDoNotConnect(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "")
	s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != apitype.HubOK {
		t.Fatalf("hub check: %+v", s.Hub)
	}
	acc, _ := d.record()["hubAccepted"].(map[string]any)
	if acc["hub"] != s.AssignedHub || acc["deviceId"] != s.DeviceID || acc["keyDigest"] == "" || acc["at"] == nil {
		t.Fatalf("state.json hubAccepted %v, want the hub's acceptance of %s on %s", acc, s.DeviceID, s.AssignedHub)
	}

	before := emu.stats()
	for i := range 3 {
		d.stop()
		d.start()
		w := d.waitFor("provisioned with the hub's recorded answer", func(s apitype.Status) bool {
			return s.State == apitype.PhaseProvisioned && s.Hub.Result != ""
		})
		if w.Hub.Result != apitype.HubOK || w.Hub.CheckedAt == nil || w.Reason != s.Reason {
			t.Errorf("restart %d: status %+v, want provisioned as before with hub ok", i+1, w)
		}
	}
	after := emu.stats()
	if n := after["total"] - before["total"]; n != 0 {
		t.Errorf("3 warm restarts sent %d DPS requests, want 0", n)
	}
	if n := after["hub_connect"] - before["hub_connect"]; n != 0 {
		t.Errorf("3 warm restarts made %d hub connections, want 0", n)
	}

	d.cli("check", "--json", "--socket", d.socket) // the verdict of other checks does not matter here
	if n := emu.stats()["hub_connect"] - after["hub_connect"]; n != 1 {
		t.Errorf("dpsd check made %d hub connections, want 1", n)
	}
}

// TestChallengeWithoutKeyName: a challenge that names no key (the emulator
// leaves keyName out) is signed with "registration", as production DPS
// names it, and the device provisions.
func TestChallengeWithoutKeyName(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	emu.faults(map[string]any{"omitKeyName": true})
	d.start()
	d.waitProvisioned()
}

// TestReplacedKeyUnusable: DPS assigns the device (replacing the hub key)
// but the answer cannot be used: its key does not import in the TPM, or it
// names no valid hub. The old key is dead on the hub: no token may be
// signed with it any more, and the status must not claim the hub accepts
// the device. Asked again, the device registers again.
func TestReplacedKeyUnusable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, fault, lastError string
	}{
		{"blob #2 does not import", "garbleKey", "importing the hub identity"},
		{"no valid hub in the answer", "badAssignedHub", "assigned without a usable hub"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu, d, _ := provisioned(t, "")
			d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result == apitype.HubOK })
			emu.faults(map[string]any{tc.fault: true})
			reprovision(t, d)
			s := d.waitFor("the failed registration", func(s apitype.Status) bool {
				return s.State == apitype.PhaseFailed && s.LastError != nil && strings.Contains(*s.LastError, tc.lastError)
			})
			if s.Hub.Result == apitype.HubOK {
				t.Errorf("hub status %+v after DPS replaced the key in use", s.Hub)
			}
			if _, _, code := d.cli("token", "--socket", d.socket); code == 0 {
				t.Error("a token was signed with the key DPS replaced")
			}

			emu.faults(map[string]any{})
			reprovision(t, d)
			d.waitFor("provisioned with a new key", func(s apitype.Status) bool {
				return s.State == apitype.PhaseProvisioned && s.Hub.Result == apitype.HubOK
			})
			tok := d.token()
			if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, tok.SAS); err != nil {
				t.Errorf("the hub refuses the new identity: %v", err)
			}
		})
	}
}

// TestFailingRequestAcrossRestart: a technician's request that DPS keeps
// failing (503) is kept across a restart and tried again; meanwhile the
// identity DPS never replaced keeps signing tokens the hub accepts.
func TestFailingRequestAcrossRestart(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "[hub]\nverify = false\n")
	emu.faults(map[string]any{"serverErrors": 1000000})
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	d.stop()
	before := emu.stats()["server_error"]
	d.start()
	d.waitFor("the request tried again", func(s apitype.Status) bool {
		return s.State == apitype.PhaseFailed && s.Reason == apitype.ReasonRequested && emu.stats()["server_error"] > before
	})
	tok := d.token()
	if tok.DeviceID != s.DeviceID {
		t.Errorf("token for %s, want %s", tok.DeviceID, s.DeviceID)
	}
	if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, tok.SAS); err != nil {
		t.Errorf("the hub refuses the identity DPS never replaced: %v", err)
	}
}
