package e2e

import (
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// TestWarmRestartsDoNotConnect: once the hub has accepted the identity,
// the record says so, and a restart makes no network connection at all:
// no DPS request and no hub connection, which would knock the device's app
// off the hub (one connection per device ID). A technician's `dpsd check`
// asks the hub again.
func TestWarmRestartsDoNotConnect(t *testing.T) {
	emu, d, s := provisioned(t, "")
	s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != "ok" {
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
			return s.State == apitype.StateProvisioned && s.Hub.Result != ""
		})
		if w.Hub.Result != "ok" || w.Hub.CheckedAt == nil || w.Reason != s.Reason {
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
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	emu.faults(map[string]any{"omitKeyName": true})
	d.start()
	d.waitProvisioned()
}
