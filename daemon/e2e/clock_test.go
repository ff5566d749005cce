package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// TestClockBeforeBuildTime runs a dpsd built "in the future": the system
// clock is then certainly wrong, as on a device without an RTC before NTP.
// The daemon must take the time from DPS's Date header rather than sign
// tokens that are already expired or not yet valid.
func TestClockBeforeBuildTime(t *testing.T) {
	t.Parallel()
	future := filepath.Join(t.TempDir(), "dpsd")
	build := exec.Command("go", "build", "-tags", dpsdTags, "-o", future,
		"-ldflags", fmt.Sprintf("-X github.com/dpsd-project/dpsd/daemon/version.BuildUnix=%d", time.Now().AddDate(1, 0, 0).Unix()),
		"github.com/dpsd-project/dpsd/cmd/dpsd")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building dpsd: %v\n%s", err, out)
	}
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "")
	d.bin = future
	d.enroll(nil)
	d.start()
	s := d.waitProvisioned()
	s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != apitype.HubOK {
		t.Errorf("hub check with a corrected clock: %+v", s.Hub)
	}
	if !strings.Contains(d.log.String(), "using the DPS server's time") {
		t.Errorf("the wrong clock was not reported:\n%s", d.log)
	}

	// A restart with the clock still wrong: no registration brings a Date,
	// so the daemon asks DPS for its time rather than wait for time sync.
	d.stop()
	registered := emu.stats()["register"]
	d.start()
	s = d.waitProvisioned()
	s = d.waitFor("hub check after the restart", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != apitype.HubOK {
		t.Errorf("hub check after a restart with a wrong clock: %+v", s.Hub)
	}
	if n := emu.stats()["register"]; n != registered {
		t.Errorf("the restart registered again (%d registrations, was %d)", n, registered)
	}
	if _, errOut, code := d.cli("token", "--socket", d.socket); code != 0 {
		t.Errorf("no token after a restart with a wrong clock: %s", errOut)
	}
}
