package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// provisioned starts an emulator and a device, enrolls it and waits until
// the daemon is provisioned.
func provisioned(t *testing.T, extra string) (*emulator, *device, apitype.Status) {
	t.Helper()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, extra)
	d.enroll(nil)
	d.start()
	return emu, d, d.waitProvisioned()
}

// hubDevice is the hub identity as the emulator's admin API shows it.
type hubDevice struct {
	DeviceID        string         `json:"deviceId"`
	Status          string         `json:"status"`
	ConnectionState string         `json:"connectionState"`
	Reported        map[string]any `json:"reported"`
}

func TestFirstBootThenWarmRestart(t *testing.T) {
	t.Parallel()
	emu, d, s := provisioned(t, "")
	if s.Reason != apitype.ReasonFirstBoot || s.DeviceID == "" || s.AssignedHub == "" {
		t.Fatalf("first boot status: %+v", s)
	}
	// The hub accepted a CONNECT signed in the TPM: the daemon's check
	// reported its twin properties, which only a connected device can do.
	s = d.waitFor("hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	if s.Hub.Result != apitype.HubOK {
		t.Fatalf("hub check: %+v", s.Hub)
	}
	var hd hubDevice
	if code := emu.call("GET", "/devices/"+s.DeviceID, nil, &hd); code != 200 {
		t.Fatalf("GET device: %d", code)
	}
	rep, _ := hd.Reported["dpsd"].(map[string]any)
	if rep["registrationId"] != s.RegistrationID || rep["ekDigest"] != s.TPM.EKDigest {
		t.Errorf("twin reported properties %v, want registration %s and EK digest %s", hd.Reported, s.RegistrationID, s.TPM.EKDigest)
	}

	d.stop()
	before := emu.stats()
	snap := fileSnapshot(t, d.state)
	d.writeConfig("[hub]\nverify = false\n") // the hub check is not part of a warm start
	d.start()
	warm := d.waitProvisioned()
	if warm.DeviceID != s.DeviceID || warm.AssignedHub != s.AssignedHub {
		t.Errorf("warm start changed the identity: %+v, was %+v", warm, s)
	}
	if after := emu.stats(); after["total"] != before["total"] {
		t.Errorf("warm start sent %d DPS requests, want 0", after["total"]-before["total"])
	}
	if after := fileSnapshot(t, d.state); !reflect.DeepEqual(after, snap) {
		t.Errorf("warm start wrote files:\nbefore %v\nafter  %v", snap, after)
	}
}

func TestClearedWhileStopped(t *testing.T) {
	t.Parallel()
	_, d, s := provisioned(t, "[hub]\nverify = false\n")
	oldSRK := d.record()["srkName"]
	d.stop()

	tpmtest.ClearSwtpm(t, d.tpm) // tpm2_clear -c p, as an owner would
	d.start()
	again := d.waitFor("re-provisioned after the clear", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonTPMCleared
	})
	if again.DeviceID != s.DeviceID {
		t.Errorf("device ID changed across the clear: %s, was %s", again.DeviceID, s.DeviceID)
	}
	if rec := d.record(); rec["srkName"] == oldSRK || rec["reason"] != "tpm-cleared" {
		t.Errorf("state after the clear: srkName %v (was %v), reason %v", rec["srkName"], oldSRK, rec["reason"])
	}
}

func TestClearedWhileRunning(t *testing.T) {
	t.Parallel()
	_, d, s := provisioned(t, "[hub]\nverify = false\n")
	tpmtest.ClearSwtpm(t, d.tpm)
	again := d.waitFor("re-provisioned without a restart", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonTPMCleared
	})
	if again.DeviceID != s.DeviceID || again.TPM.SRKName == s.TPM.SRKName {
		t.Errorf("after the clear: %+v; before: %+v", again, s)
	}
}

func TestDPSDownAtFirstBoot(t *testing.T) {
	// Reserve a port for DPS, start the device while nothing listens there.
	port := freeAddr(t)

	emuDir := t.TempDir()
	emu := startEmulator(t, emuDir, port)
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	emu.stop()

	d.start()
	down := d.waitFor("a failed attempt", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed && s.LastError != nil })
	if down.NextAttemptAt == nil {
		t.Errorf("failed without a next attempt: %+v", down)
	}
	startEmulator(t, emuDir, port) // same dir: keeps the enrollment and CA
	d.waitProvisioned()
	if !d.running() {
		t.Fatal("dpsd exited while DPS was down")
	}
}

func TestThrottlingAndServerErrorsAreRetried(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	emu.faults(map[string]any{"throttle": 1, "retryAfter": 1, "serverErrors": 1})
	d.start()
	d.waitProvisioned()
	logs := d.log.String()
	for _, want := range []string{"429", "503"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log does not show the %s answer:\n%s", want, logs)
		}
	}
	if st := emu.stats(); st["throttled"] < 1 || st["server_error"] < 1 {
		t.Errorf("emulator stats %v: faults not exercised", st)
	}
}

// TestFailedReregistrationKeepsIdentity: DPS accepts the registration and
// then fails (its polls answer 503): the device must keep the identity it
// had, and the hub must still accept it.
func TestFailedReregistrationKeepsIdentity(t *testing.T) {
	t.Parallel()
	emu, d, _ := provisioned(t, "[hub]\nverify = false\n")
	old := d.stuckReregistration()
	emu.faults(map[string]any{"serverErrors": 1000})
	d.waitFor("the failed re-registration", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	now, err := os.ReadFile(filepath.Join(d.state, "identity.key"))
	if err != nil || string(now) != string(old) {
		t.Fatalf("identity.key changed by a failed registration (err %v)", err)
	}
	tok := d.token()
	if err := mqttConnect(t, emu, tok.Hub, tok.DeviceID, tok.SAS); err != nil {
		t.Errorf("the hub refuses the old identity after a failed re-registration: %v", err)
	}
}

// TestReplacedTPM: the state says one EK, the TPM has another. dpsd must
// not enroll anew by itself: failed, with a message saying what happened,
// no DPS request, no file touched.
func TestReplacedTPM(t *testing.T) {
	t.Parallel()
	emu, d, first := provisioned(t, "[hub]\nverify = false\n")
	d.stop()
	d.tpm = tpmtest.StartSwtpm(t, filepath.Join(d.dir, "new-tpm"))
	d.writeConfig("[hub]\nverify = false\n")
	snap := fileSnapshot(t, d.state)
	before := emu.stats()["total"]
	d.start()
	s := d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	if s.LastError == nil || !strings.Contains(*s.LastError, "replaced") {
		t.Errorf("lastError %v, want it to say the TPM was replaced", s.LastError)
	}
	if n := emu.stats()["total"] - before; n != 0 {
		t.Errorf("%d DPS requests for a replaced TPM, want 0", n)
	}
	if after := fileSnapshot(t, d.state); !reflect.DeepEqual(after, snap) {
		t.Errorf("files changed for a replaced TPM:\nbefore %v\nafter  %v", snap, after)
	}

	// What the message says to do: enroll the new EK, then reprovision.
	info := d.enroll(nil)
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	again := d.waitFor("provisioned with the new TPM", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonRequested
	})
	if again.RegistrationID != info.RegistrationID || again.TPM.EKDigest == first.TPM.EKDigest {
		t.Errorf("after the new enrollment: registration %s (enrolled %s), EK %s (old TPM's %s)",
			again.RegistrationID, info.RegistrationID, again.TPM.EKDigest, first.TPM.EKDigest)
	}
}

// TestSharedOwnership: an owner who keeps the TPM's owner auth gives it to
// dpsd in a file; dpsd uses it and never changes it. A wrong one is
// reported and not tried again soon (no busy retry).
func TestSharedOwnership(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, given string
		ok          bool
	}{
		{"right auth", "owner-secret", true},
		{"wrong auth", "not-the-secret", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			authFile := filepath.Join(t.TempDir(), "owner.auth")
			if err := os.WriteFile(authFile, []byte(tc.given+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			d := newDevice(t, emu, fmt.Sprintf("[tpm]\nownership = \"shared\"\nowner_auth_file = %q\n\n[hub]\nverify = false\n", authFile))
			d.enroll(nil)
			changeOwnerAuth(t, d, "", "owner-secret")
			d.start()
			if tc.ok {
				d.waitProvisioned()
				// Still the owner's auth: changing it from it works.
				changeOwnerAuth(t, d, "owner-secret", "owner-secret")
				return
			}
			s := d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
			if s.LastError == nil || !strings.Contains(*s.LastError, authFile) {
				t.Errorf("lastError %v does not name the auth file", s.LastError)
			}
			if s.NextAttemptAt == nil || time.Until(*s.NextAttemptAt) < 10*time.Minute {
				t.Errorf("a wrong auth is retried soon (next attempt %v)", s.NextAttemptAt)
			}
		})
	}
}

// changeOwnerAuth sets the owner hierarchy's auth with tpm2-tools, as the
// device's owner would.
func changeOwnerAuth(t *testing.T, d *device, from, to string) {
	t.Helper()
	args := []string{"-c", "o", "-T", "swtpm:path=" + d.tpm.Socket}
	if from != "" {
		args = append(args, "-p", from)
	}
	cmd := exec.Command("tpm2_changeauth", append(args, to)...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_changeauth %v: %v: %s", args, err, out)
	}
}

func TestBadInputIsReportedNotFatal(t *testing.T) {
	t.Parallel()
	t.Run("corrupt state.json", func(t *testing.T) {
		emu, d, s := provisioned(t, "[hub]\nverify = false\n")
		d.stop()
		if err := os.WriteFile(filepath.Join(d.state, "state.json"), []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = emu
		d.start()
		again := d.waitProvisioned()
		if again.DeviceID != s.DeviceID {
			t.Errorf("device ID %s, want %s", again.DeviceID, s.DeviceID)
		}
		if !strings.Contains(d.log.String(), "state") {
			t.Errorf("the corrupt state was not reported:\n%s", d.log)
		}
	})
	t.Run("truncated identity.key", func(t *testing.T) {
		_, d, _ := provisioned(t, "[hub]\nverify = false\n")
		d.stop()
		if err := os.WriteFile(filepath.Join(d.state, "identity.key"), []byte{0, 1}, 0o600); err != nil {
			t.Fatal(err)
		}
		d.start()
		d.waitProvisioned()
		if !strings.Contains(d.log.String(), "identity key") {
			t.Errorf("the bad identity key was not reported:\n%s", d.log)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		emu := startEmulator(t, t.TempDir(), "")
		d := newDevice(t, emu, "[tpm]\nownership = \"tak\"\n")
		_, errOut, code := d.cli("run", "--config", d.cfgPath)
		// 78 (EX_CONFIG) keeps systemd from restarting it in a loop.
		if code != 78 || !strings.Contains(errOut, "50-test.toml") || !strings.Contains(errOut, "ownership") {
			t.Errorf("bad config: exit %d, stderr %q; want 78 and a message naming the file and key", code, errOut)
		}
	})
}
