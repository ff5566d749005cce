package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// TestFullStateDir: DPS replaces the hub key when it assigns the device, so
// a key the state directory cannot take must neither cost the device its
// hub connection nor make it register again and again. With the state dir
// on a full 256 KiB tmpfs and a kept hub session, a technician's
// `dpsd reprovision`:
//   - full before the request: dpsd finds out before it asks DPS, keeps the
//     old (still valid) identity and its session, and `dpsd check` fails
//     the state dir; with room again, the request goes through;
//   - filled while DPS assigns: dpsd uses the new key from memory (the
//     session comes back up with it) without registering again, and writes
//     it once there is room.
func TestFullStateDir(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t, "mount a tmpfs")
	for _, tc := range []struct {
		name string
		// fillWhileAssigning fills the disk after DPS accepted the
		// registration instead of before the request.
		fillWhileAssigning bool
	}{
		{"full before the request", false},
		{"filled while DPS assigns", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			d := newDevice(t, emu, stayConnected)
			mountSmallTmpfs(t, d.state)
			d.enroll(nil)
			d.start()
			s := d.waitFor("hub session", func(s apitype.Status) bool {
				return s.State == apitype.PhaseProvisioned && s.Hub.Connected
			})
			old := readFile(t, filepath.Join(d.state, "identity.key"))
			before := emu.stats()["assigned"]

			var filler string
			if tc.fillWhileAssigning {
				emu.faults(map[string]any{"assignAfterPolls": 10})
				reprovision(t, d)
				d.waitFor("DPS assigning", func(s apitype.Status) bool { return s.State == apitype.PhaseAssigning })
				filler = fill(t, d.state)
				if emu.stats()["assigned"] != before {
					t.Fatal("DPS assigned before the disk was full: the machine is too slow for this test")
				}
				s = d.waitFor("the new key in use from memory", func(s apitype.Status) bool {
					return s.State == apitype.PhaseProvisioned && s.Hub.Connected && s.Reason == apitype.ReasonRequested &&
						emu.stats()["assigned"] == before+1
				})
				if s.LastError == nil || !strings.Contains(*s.LastError, "memory") {
					t.Errorf("lastError %v, want it to say the key is kept in memory only", s.LastError)
				}
			} else {
				filler = fill(t, d.state)
				reprovision(t, d)
				s = d.waitFor("the registration held back", func(s apitype.Status) bool {
					return s.State == apitype.PhaseFailed && s.LastError != nil && strings.Contains(*s.LastError, "state directory")
				})
				if !s.Hub.Connected {
					t.Errorf("the hub session with the old identity is down: %+v", s.Hub)
				}
				if c := stateDirCheck(t, d); c.Status != apitype.CheckFail {
					t.Errorf("dpsd check state-dir on a full disk: %+v, want fail", c)
				}
			}
			if n := emu.stats()["assigned"]; n > before+1 {
				t.Errorf("%d assignments, want at most %d", n, before+1)
			}

			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
			if !tc.fillWhileAssigning {
				reprovision(t, d) // the technician tries again
			}
			testenv.WaitUntil(t, "the new key on disk", func() bool {
				key, err := os.ReadFile(filepath.Join(d.state, "identity.key"))
				if err != nil || string(key) == string(old) {
					return false
				}
				sum := sha256.Sum256(key)
				return d.record()["identityDigest"] == hex.EncodeToString(sum[:])
			})
			consistent(t, d)
			d.waitFor("provisioned, no error", func(s apitype.Status) bool {
				return s.State == apitype.PhaseProvisioned && s.LastError == nil && s.Hub.Connected
			})
			if n := emu.stats()["assigned"]; n != before+1 {
				t.Errorf("%d assignments, want %d", n, before+1)
			}
		})
	}
}

// mountSmallTmpfs puts dir on a 256 KiB tmpfs.
func mountSmallTmpfs(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// fill writes a file into dir until its file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	// More than the 256 KiB fit: the write stops at ENOSPC, full.
	if err := os.WriteFile(path, make([]byte, 512<<10), 0o600); err == nil {
		t.Fatalf("%s took 512 KiB: not the small tmpfs", dir)
	}
	return path
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func reprovision(t *testing.T, d *device) {
	t.Helper()
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
}

// stateDirCheck is the state-dir line of `dpsd check --json`.
func stateDirCheck(t *testing.T, d *device) apitype.Check {
	t.Helper()
	out, _, _ := d.cli("check", "--json", "--socket", d.socket)
	var rep apitype.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("dpsd check --json: %v: %q", err, out)
	}
	for _, c := range rep.Checks {
		if c.Name == "state-dir" {
			return c
		}
	}
	t.Fatalf("no state-dir check in %q", out)
	return apitype.Check{}
}
