package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// The diagnoses a technician gets for what goes wrong with the TPM on a
// device: each must name the real cause and its fix.

// tpm2 runs a tpm2-tools command on the device's swtpm, as its owner
// would; the daemon must not be in a TPM operation (swtpm serves one
// client at a time, the others wait).
func tpm2(t *testing.T, d *device, tool string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool, append([]string{"-T", "swtpm:path=" + d.tpm.Socket}, args...)...)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustTPM2 is tpm2 that fails the test on an error.
func mustTPM2(t *testing.T, d *device, tool string, args ...string) {
	t.Helper()
	if out, err := tpm2(t, d, tool, args...); err != nil {
		t.Fatalf("%s %v: %v: %s", tool, args, err, out)
	}
}

// persistForeignKey persists an ECC primary (not dpsd's SRK) at handle, with
// the owner auth ownerAuth ("" for none).
func persistForeignKey(t *testing.T, d *device, handle, ownerAuth string) {
	t.Helper()
	ctxFile := filepath.Join(t.TempDir(), "primary.ctx")
	auth := []string{}
	if ownerAuth != "" {
		auth = []string{"-P", ownerAuth}
	}
	mustTPM2(t, d, "tpm2_createprimary", append([]string{"-Q", "-C", "o", "-G", "ecc", "-c", ctxFile}, auth...)...)
	mustTPM2(t, d, "tpm2_evictcontrol", append([]string{"-Q", "-C", "o", "-c", ctxFile}, append(auth, handle)...)...)
	mustTPM2(t, d, "tpm2_flushcontext", "-t")
}

// check runs `dpsd check --json` against the daemon.
func (d *device) check() apitype.CheckReport {
	d.t.Helper()
	out, errOut, _ := d.cli("check", "--json", "--socket", d.socket)
	var rep apitype.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		d.t.Fatalf("dpsd check --json: %v: %q %s", err, out, errOut)
	}
	return rep
}

// checkNamed returns the named check of rep.
func checkNamed(t *testing.T, rep apitype.CheckReport, name string) apitype.Check {
	t.Helper()
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, rep)
	return apitype.Check{}
}

// TestTPMGoneWhileRunning: the software TPM's process ends under a
// provisioned daemon. The status says the TPM does not answer, naming its
// socket, and `dpsd check` blames the TPM, not a missing credential.
func TestTPMGoneWhileRunning(t *testing.T) {
	t.Parallel()
	_, d, _ := provisioned(t, "[hub]\nverify = false\n")
	d.tpm.Stop()
	s := d.waitFor("the TPM reported unreachable", func(s apitype.Status) bool { return s.State == apitype.PhaseWaitingForTPM })
	t.Logf("lastError: %v", deref(s.LastError))
	if s.LastError == nil || !strings.Contains(*s.LastError, d.tpm.Socket) || !strings.Contains(*s.LastError, "unreachable") ||
		!strings.Contains(*s.LastError, "swtpm") {
		t.Errorf("lastError %v, want it to say that the TPM at %s is unreachable and what to start", s.LastError, d.tpm.Socket)
	}
	rep := d.check()
	if c := checkNamed(t, rep, "tpm-device"); c.Status != apitype.CheckFail || !strings.Contains(c.Detail, d.tpm.Socket) {
		t.Errorf("tpm-device check %+v, want a failure naming %s", c, d.tpm.Socket)
	}
	if c := checkNamed(t, rep, "identity-key"); strings.Contains(c.Detail, "no hub credential") {
		t.Errorf("identity-key check %+v blames a missing credential for a TPM that does not answer", c)
	}
}

// TestTokenAfterTPMCleared: the TPM of a provisioned device is cleared and
// the re-registration takes long. An app asking for a token is told that
// the key was invalidated and that dpsd registers again, not that the
// device is "not provisioned yet".
func TestTokenAfterTPMCleared(t *testing.T) {
	t.Parallel()
	emu, d, _ := provisioned(t, "[hub]\nverify = false\n\n[tpm]\ncheck_interval = \"1h\"\n")
	emu.faults(map[string]any{"assignAfterPolls": 1000})
	tpmtest.ClearSwtpm(t, d.tpm)
	// The first request meets the dead key in the TPM; the later ones the
	// engine's registration it woke.
	for i := range 2 {
		_, errOut, code := d.cli("token", "--socket", d.socket)
		if code == 0 || !strings.Contains(errOut, "no longer works") || !strings.Contains(errOut, "registers the device again") ||
			strings.Contains(errOut, "not provisioned yet") {
			t.Errorf("token %d after the clear: exit %d, %q; want it to say the key was invalidated and dpsd registers again", i, code, errOut)
		}
		t.Logf("dpsd token %d: %s", i, errOut)
		if i == 0 {
			d.waitFor("the re-registration", func(s apitype.Status) bool { return s.State == apitype.PhaseAssigning })
		}
	}
}

// TestForeignSRKFixedIsNoticed: a foreign key sits at the SRK's handle of
// a TPM someone owns. The status tells the truth about the owner auth and
// says how to retry at once; once the owner fixes the TPM (evicts the key,
// then gives up the owner auth), dpsd notices by itself within
// check_interval, not after the 30 minutes of a permanent failure.
func TestForeignSRKFixedIsNoticed(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	changeOwnerAuth(t, d, "", "someone")
	persistForeignKey(t, d, "0x81000001", "someone")
	d.start()

	s := d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	if s.LastError == nil || !strings.Contains(*s.LastError, "0x81000001") || !strings.Contains(*s.LastError, "dpsd reprovision") {
		t.Errorf("lastError %v, want it to name 0x81000001 and say how to retry now", s.LastError)
	}
	if !s.TPM.OwnerAuthSet {
		t.Errorf("status says ownerAuthSet false for a TPM whose owner auth is set: %+v", s.TPM)
	}
	t.Logf("lastError: %v", deref(s.LastError))
	if s.NextAttemptAt == nil || time.Until(*s.NextAttemptAt) > time.Minute {
		t.Errorf("next attempt %v: a fix on the device is not looked for within check_interval", s.NextAttemptAt)
	}

	mustTPM2(t, d, "tpm2_evictcontrol", "-Q", "-C", "o", "-P", "someone", "-c", "0x81000001")
	d.waitFor("owned by someone else", func(s apitype.Status) bool {
		return s.LastError != nil && strings.Contains(*s.LastError, "owned by someone else")
	})
	changeOwnerAuth(t, d, "someone", "")
	d.waitProvisioned()
}

// TestOwnerAuthDeleted: owner.auth is deleted on a device where dpsd took
// ownership. `dpsd check` says so (not "owned by someone else"), and the
// failure to persist the identity at identity_handle names the missing
// file (not a missing SRK, which is there).
func TestOwnerAuthDeleted(t *testing.T) {
	t.Parallel()
	_, d, _ := provisioned(t, "[hub]\nverify = false\n\n[tpm]\nidentity_handle = \"0x81000100\"\n")
	if d.record()["ownerAuthSealed"] != true {
		t.Errorf("state.json does not record that dpsd holds the owner auth: %v", d.record())
	}
	ownerAuth := filepath.Join(d.state, "owner.auth")
	if err := os.Remove(ownerAuth); err != nil {
		t.Fatal(err)
	}
	c := checkNamed(t, d.check(), "ownership")
	if c.Status != apitype.CheckFail || !strings.Contains(c.Detail, ownerAuth) || !strings.Contains(c.Detail, "missing") ||
		!strings.Contains(c.Fix, "clear the TPM") {
		t.Errorf("ownership check %+v, want a failure naming the missing %s and the fix", c, ownerAuth)
	}

	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	testenv.WaitUntil(t, "the identity_handle failure", func() bool {
		return strings.Contains(d.log.String(), "persisting the identity key for other apps failed")
	})
	var line string
	for l := range strings.SplitSeq(d.log.String(), "\n") {
		if strings.Contains(l, "persisting the identity key for other apps failed") {
			line = l
		}
	}
	if !strings.Contains(line, ownerAuth) || !strings.Contains(line, "missing") || strings.Contains(line, "no SRK") {
		t.Errorf("identity_handle failure %q, want it to name the missing %s", line, ownerAuth)
	}
	// The new record still knows whose the owner auth is.
	d.waitFor("the re-registration", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonRequested
	})
	if d.record()["ownerAuthSealed"] != true {
		t.Errorf("the re-registration dropped ownerAuthSealed from state.json: %v", d.record())
	}
	if c := checkNamed(t, d.check(), "ownership"); c.Status != apitype.CheckFail {
		t.Errorf("ownership check after the re-registration: %+v", c)
	}
}

// TestNVFullAtFirstBoot: the TPM's NV memory is full when dpsd first
// starts, so the SRK cannot be persisted. The status and `dpsd check` say
// so and how to make room (not "dpsd creates it"); doing what they say
// provisions the device.
func TestNVFullAtFirstBoot(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil) // persists the EK
	fillPersistentNV(t, d)
	d.start()

	s := d.waitFor("failed", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	t.Logf("lastError: %v", deref(s.LastError))
	if s.LastError == nil || !strings.Contains(*s.LastError, "NV memory is full") || !strings.Contains(*s.LastError, "tpm2_evictcontrol") {
		t.Errorf("lastError %v, want it to say NV is full and how to make room", s.LastError)
	}
	c := checkNamed(t, d.check(), "srk")
	if c.Status != apitype.CheckFail || !strings.Contains(c.Detail, "NV memory") || !strings.Contains(c.Fix, "tpm2_evictcontrol") {
		t.Errorf("srk check %+v, want a failure saying NV is full, with the fix", c)
	}

	mustTPM2(t, d, "tpm2_evictcontrol", "-Q", "-C", "o", "-c", fillerHandle(0))
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	d.waitProvisioned()
}

// fillerHandle is the i-th handle fillPersistentNV uses.
func fillerHandle(i int) string { return fmt.Sprintf("0x%08x", 0x81000100+i) }

// fillPersistentNV persists copies of one ECC primary until the TPM
// refuses for want of NV space (swtpm takes about 65).
func fillPersistentNV(t *testing.T, d *device) {
	t.Helper()
	ctxFile := filepath.Join(t.TempDir(), "primary.ctx")
	mustTPM2(t, d, "tpm2_createprimary", "-Q", "-C", "o", "-G", "ecc", "-c", ctxFile)
	for i := 0; ; i++ {
		out, err := tpm2(t, d, "tpm2_evictcontrol", "-Q", "-C", "o", "-c", ctxFile, fillerHandle(i))
		mustTPM2(t, d, "tpm2_flushcontext", "-t")
		if err == nil {
			if i > 1000 {
				t.Fatal("the TPM's NV memory never fills")
			}
			continue
		}
		if !strings.Contains(out, "0x14B") && !strings.Contains(out, "0x14b") {
			t.Fatalf("tpm2_evictcontrol %s: %v: %s, want TPM_RC_NV_SPACE", fillerHandle(i), err, out)
		}
		t.Logf("NV full after %d persistent objects", i)
		return
	}
}

// deref is *s, or "<nil>".
func deref(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}
