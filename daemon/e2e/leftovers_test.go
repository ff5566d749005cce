package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// TestObjectsLeftInTheTPM: swtpm has no resource manager and room for
// three objects. Three left loaded while dpsd was down (by tpm2-tools
// here; a killed dpsd leaves its own the same way) used to keep it from
// ever provisioning again: dpsd check names them, and dpsd flushes them
// when it starts.
func TestObjectsLeftInTheTPM(t *testing.T) {
	t.Parallel()
	_, d, s := provisioned(t, "[hub]\nverify = false\n")
	d.stop()
	tpmtest.LeaveObjects(t, d.tpm, 3)

	out, _, _ := d.cli("check", "--json", "--config", d.cfgPath, "--socket", d.socket)
	var rep apitype.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check --json: %v: %q", err, out)
	}
	var found bool
	for _, c := range rep.Checks {
		if c.Name == "tpm-transients" {
			found = true
			if c.Status != apitype.CheckFail || !strings.Contains(c.Detail, "3 transient objects") || !strings.Contains(c.Fix, "dpsd") {
				t.Errorf("tpm-transients: %s %q, fix %q", c.Status, c.Detail, c.Fix)
			}
		}
	}
	if !found {
		t.Errorf("no tpm-transients check in %+v", rep)
	}

	d.start()
	again := d.waitFor("provisioned or failed", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned || s.State == apitype.PhaseFailed
	})
	if again.State != apitype.PhaseProvisioned || again.DeviceID != s.DeviceID {
		t.Fatalf("with three objects left in the TPM: %+v\n%s", again, d.log)
	}
	if !strings.Contains(d.log.String(), "flushed transient objects and sessions left in the TPM") {
		t.Errorf("the flush was not logged:\n%s", d.log)
	}
}
