package cli_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/cli"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/standalone"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// standaloneConfig writes a config for a device whose daemon is not
// running: the TPM is the given swtpm, the socket has no listener, DPS is
// unreachable on loopback.
func standaloneConfig(t *testing.T, info tpmtest.SwtpmInfo, extra string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	cfg := fmt.Sprintf(`[provisioning]
id_scope = "0ne00000A0A"
global_endpoint = "https://127.0.0.1:1"
%s
[tpm]
device = %q

[status]
socket = %q

[state]
dir = %q
`, extra, info.Spec(), filepath.Join(dir, "status.sock"), filepath.Join(dir, "state"))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runIn(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := cli.App{Standalone: standalone.Local{}}.Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// With the daemon down, enroll-info reads the TPM itself: the EK public as
// DPS stores it and the registration ID derived from exactly those bytes.
func TestEnrollInfoStandalone(t *testing.T) {
	t.Parallel()
	info := tpmtest.StartSwtpm(t, "")
	cfgPath := standaloneConfig(t, info, "")

	code, out, errOut := runIn("enroll-info", "--json", "--config", cfgPath)
	if code != cli.ExitOK {
		t.Fatalf("enroll-info: exit %d, %s", code, errOut)
	}
	if !strings.Contains(errOut, "created and persisted it at 0x81010001") {
		t.Errorf("the EK's creation was not mentioned: %q", errOut)
	}
	var got apitype.EnrollInfo
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("enroll-info --json: %v\n%s", err, out)
	}
	ekPub, err := base64.StdEncoding.DecodeString(got.EndorsementKey)
	if err != nil {
		t.Fatalf("endorsementKey is not standard base64: %v", err)
	}
	if got.RegistrationID != dps.RegistrationID(ekPub) || len(got.RegistrationID) != 52 {
		t.Errorf("registration ID %q, want %q", got.RegistrationID, dps.RegistrationID(ekPub))
	}

	// The TPM holds exactly the key that was printed.
	dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ek, err := dev.ReadEK(context.Background())
	dev.Close()
	if err != nil || !bytes.Equal(ek.Public, ekPub) {
		t.Fatalf("the persisted EK differs from the printed one (%v)", err)
	}

	// Again: the same answer, nothing created; the human view shows it.
	code, out, errOut = runIn("enroll-info", "--config", cfgPath)
	if code != cli.ExitOK || errOut != "" || !strings.Contains(out, "Registration ID:  "+got.RegistrationID) ||
		!strings.Contains(out, "Endorsement key:  "+got.EndorsementKey) || !strings.Contains(out, "EK certificate:   none") {
		t.Errorf("second enroll-info: exit %d\n%s\n%s", code, out, errOut)
	}

	// A live install has no ID scope yet: enroll-info needs none, and
	// the factory line reads the EK before the scope is set.
	unscoped := standaloneConfig(t, info, "")
	raw, err := os.ReadFile(unscoped)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unscoped, bytes.Replace(raw, []byte("id_scope = \"0ne00000A0A\"\n"), nil, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runIn("enroll-info", "--json", "--config", unscoped)
	if code != cli.ExitOK || !strings.Contains(out, `"registrationId": "`+got.RegistrationID+`"`) || errOut != "" {
		t.Errorf("enroll-info without an ID scope: exit %d\n%s\n%s", code, out, errOut)
	}

	// A configured registration ID wins over the derived one.
	code, out, _ = runIn("enroll-info", "--json", "--config", standaloneConfig(t, info, `registration_id = "factory-0042"`))
	if code != cli.ExitOK || !strings.Contains(out, `"registrationId": "factory-0042"`) {
		t.Errorf("configured registration ID: exit %d\n%s", code, out)
	}
}

// A TPM without an EK whose owner auth someone set: enroll-info creates
// nothing, guesses no password, and says what to do.
func TestEnrollInfoStandaloneOwnedTPM(t *testing.T) {
	t.Parallel()
	info := tpmtest.StartSwtpm(t, "")
	dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	// Someone else, on a TPM with no key to salt a session to yet.
	dev.SetBusProtection(tpmdev.BusOff)
	if err := dev.SetOwnerAuth(context.Background(), nil, []byte("someone else's")); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	code, _, errOut := runIn("enroll-info", "--config", standaloneConfig(t, info, ""))
	if code != cli.ExitFailure || !strings.Contains(errOut, "start dpsd") {
		t.Errorf("enroll-info on an owned TPM without EK: exit %d, %q", code, errOut)
	}
}

// With the daemon down, check runs the diagnostics itself and says so.
func TestCheckStandalone(t *testing.T) {
	t.Parallel()
	info := tpmtest.StartSwtpm(t, "")
	cfgPath := standaloneConfig(t, info, "")
	code, out, errOut := runIn("check", "--json", "--config", cfgPath)
	if code != cli.ExitFailure {
		t.Errorf("check with DPS unreachable: exit %d, want 1\n%s", code, errOut)
	}
	var rep apitype.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	want := map[string]apitype.CheckStatus{
		"daemon":         apitype.CheckWarn,
		"config":         apitype.CheckPass,
		"tpm-device":     apitype.CheckPass,
		"tpm-transients": apitype.CheckPass,
		"ek":             apitype.CheckWarn, // not created yet: check creates nothing
		"srk":            apitype.CheckWarn,
		"ownership":      apitype.CheckPass,
		"lockout":        apitype.CheckPass,
		"dps-tls":        apitype.CheckFail,
	}
	for _, c := range rep.Checks {
		if w, ok := want[c.Name]; ok && c.Status != w {
			t.Errorf("%s: %s (%s), want %s", c.Name, c.Status, c.Detail, w)
		}
		delete(want, c.Name)
	}
	if len(want) > 0 {
		t.Errorf("missing checks: %v", want)
	}
	// Still no EK: the check only read.
	dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.ReadEK(context.Background()); err == nil {
		t.Error("check created the EK")
	}
}

// Without a Standalone the command line is a client only: with the daemon
// down, enroll-info and check say so and touch no TPM.
func TestNoStandaloneWithoutDaemon(t *testing.T) {
	t.Parallel()
	cfgPath := standaloneConfig(t, tpmtest.SwtpmInfo{Socket: "/nonexistent/tpm.sock"}, "")
	for _, verb := range []string{"enroll-info", "check"} {
		var out, errOut bytes.Buffer
		code := cli.App{}.Main(context.Background(), []string{verb, "--config", cfgPath}, &out, &errOut)
		if code != cli.ExitFailure || !strings.Contains(errOut.String(), "dpsd is not running") || out.Len() != 0 {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", verb, code, &out, &errOut)
		}
	}
}
