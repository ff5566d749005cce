package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOversizedStateFile: state.json filled with 100 MB of junk is treated
// like any corrupt record (reported, the device registers again and keeps
// its device ID), without the daemon reading it.
func TestOversizedStateFile(t *testing.T) {
	t.Parallel()
	_, d, s := provisioned(t, "[hub]\nverify = false\n")
	d.stop()
	path := filepath.Join(d.state, "state.json")
	if err := os.WriteFile(path, []byte("{junk"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 100<<20); err != nil { // sparse: no disk used
		t.Fatal(err)
	}
	d.start()
	again := d.waitProvisioned()
	if again.DeviceID != s.DeviceID {
		t.Errorf("device ID %s, want %s", again.DeviceID, s.DeviceID)
	}
	if log := d.log.String(); !strings.Contains(log, "state file unusable") || !strings.Contains(log, "file too large") {
		t.Errorf("the oversized state file was not reported:\n%s", log)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() > 4096 {
		t.Errorf("state.json not replaced by a record: %v, %v", fi, err)
	}
}
