package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// startActivated runs the daemon the way dpsd.socket does: the socket
// exists before the daemon, whose start the first connection triggers, so
// that first client's request always reaches a daemon that is just
// starting.
func (d *device) startActivated() {
	d.t.Helper()
	activate := testenv.LookPath(d.t, "systemd-socket-activate")
	// The activator binds the path itself and refuses one that exists.
	if err := os.Remove(d.socket); err != nil && !errors.Is(err, fs.ErrNotExist) {
		d.t.Fatal(err)
	}
	d.startCmd(exec.Command(activate, "--listen", d.socket, dpsdBin, "run", "--config", d.cfgPath))
	testenv.WaitUntil(d.t, "the activation socket", func() bool {
		fi, err := os.Stat(d.socket)
		return err == nil && fi.Mode().Type() == fs.ModeSocket
	})
}

// TestFirstCallAfterSocketActivation makes each client verb the first call
// of a daemon that the call itself starts: every answer must be the one a
// settled daemon gives, never a refusal from one that has not opened the
// TPM or loaded the identity yet.
func TestFirstCallAfterSocketActivation(t *testing.T) {
	_, d, _ := provisioned(t, "")
	out, errOut, code := d.cli("enroll-info", "--json", "--socket", d.socket)
	var info apitype.EnrollInfo
	if err := json.Unmarshal([]byte(out), &info); code != 0 || err != nil {
		t.Fatalf("enroll-info from the settled daemon: exit %d %v: %s", code, err, errOut)
	}
	d.stop()

	const starts = 10
	verbs := []struct {
		name string
		args []string
		// ok says what is wrong with a successful answer, or "".
		ok func(out string) string
	}{
		{"status", []string{"status", "--json"}, func(out string) string {
			var s apitype.Status
			if err := json.Unmarshal([]byte(out), &s); err != nil {
				return err.Error()
			}
			if s.State != apitype.PhaseProvisioned {
				return "state " + string(s.State)
			}
			return ""
		}},
		{"enroll-info", []string{"enroll-info", "--json"}, func(out string) string {
			var got apitype.EnrollInfo
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				return err.Error()
			}
			if got.EndorsementKey != info.EndorsementKey || got.RegistrationID != info.RegistrationID {
				return "another EK or registration ID"
			}
			return ""
		}},
		{"token", []string{"token", "--json"}, func(out string) string {
			var tok apitype.Token
			if err := json.Unmarshal([]byte(out), &tok); err != nil {
				return err.Error()
			}
			if !strings.HasPrefix(tok.SAS, "SharedAccessSignature ") {
				return "no SAS token"
			}
			return ""
		}},
		{"check", []string{"check"}, func(out string) string {
			if strings.Contains(out, "FAIL") {
				return "a check failed"
			}
			return ""
		}},
	}
	failures := map[string]int{}
	for i := range starts {
		d.startActivated()
		// All verbs at once: each is a first call, made before the daemon
		// (started by whichever connects first) has done anything.
		var wg sync.WaitGroup
		var mu sync.Mutex
		for _, v := range verbs {
			wg.Go(func() {
				out, errOut, code := d.cli(append(v.args, "--socket", d.socket, "--config", d.cfgPath)...)
				why := ""
				switch {
				case code != 0:
					why = fmt.Sprintf("exit %d: %s%s", code, errOut, out)
				default:
					why = v.ok(out)
				}
				if why != "" {
					mu.Lock()
					failures[v.name]++
					mu.Unlock()
					t.Errorf("start %d: dpsd %s as the first call: %s", i+1, v.name, why)
				}
			})
		}
		wg.Wait()
		d.stop()
	}
	for _, v := range verbs {
		t.Logf("%s as the first call: %d of %d right", v.name, starts-failures[v.name], starts)
	}
}

// TestWaitLatency measures how long after the daemon reaches
// "provisioned" `dpsd wait` returns, over three first boots: the daemon
// pushes the change (GET /v1/watch), so this is the cost of one status
// line, not of a poll interval. It reports the figure; speed is not
// asserted in tests.
func TestWaitLatency(t *testing.T) {
	emu := startEmulator(t, t.TempDir(), "")
	var lat []time.Duration
	for range 3 {
		d := newDevice(t, emu, "")
		d.enroll(nil)
		d.start()
		wait := exec.Command(dpsdBin, "wait", "--timeout", "2m", "--socket", d.socket)
		out, err := wait.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := wait.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(out).ReadString('\n')
		returned := time.Now()
		if err := wait.Wait(); err != nil || !strings.HasPrefix(line, "provisioned:") {
			t.Fatalf("dpsd wait: %q, %v\n%s", line, err, d.log)
		}
		at, ok := logTime(d.log.String(), "state=provisioned")
		if !ok {
			t.Fatalf("no provisioned line in the log\n%s", d.log)
		}
		lat = append(lat, returned.Sub(at))
		d.stop()
	}
	slices.Sort(lat)
	t.Logf("dpsd wait returned after the provisioned log line: median %s (each: %v)", lat[1], lat)
}

// logTime is the time of the daemon's first log line that contains text.
func logTime(log, text string) (time.Time, bool) {
	for line := range strings.Lines(log) {
		if !strings.Contains(line, text) {
			continue
		}
		f, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		t, err := time.Parse(time.RFC3339Nano, f)
		return t, err == nil
	}
	return time.Time{}, false
}
