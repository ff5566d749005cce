package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/cli"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// goldenDir holds the expected human outputs.
const goldenDir = "../../testdata/golden"

// testNow is the clock of the human views in golden files.
var testNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time {
	t := testNow.Add(d)
	return &t
}

func str(s string) *string { return &s }

// statusFixtures are the states a technician meets, one golden file each.
var statusFixtures = map[string]apitype.Status{
	"provisioned": {
		State: apitype.PhaseProvisioned, Reason: apitype.ReasonTPMCleared,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		AssignedHub: "hub-1.azure-devices.net", DeviceID: "sensor-0042",
		ProvisionedAt: at(-2 * time.Hour), Attempts: 1,
		TPM: apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e8a7d6f4e3c2b1a0998877665544332211ffeeddccbbaa99887766554",
			SRKName: "000b8f3c5a1e2d4b6c7a8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", OwnerAuthSet: true, Commands: 12},
		Hub:     apitype.HubStatus{CheckedAt: at(-2*time.Hour + 5*time.Second), Result: apitype.HubOK},
		Version: "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"provisioned-x509": {
		State: apitype.PhaseProvisioned, Reason: apitype.ReasonCertRenewal,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		AssignedHub: "hub-1.azure-devices.net", DeviceID: "sensor-0042",
		ProvisionedAt: at(-2 * time.Hour), Attempts: 1,
		TPM: apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e", SRKName: "000b8f3c", OwnerAuthSet: true, Commands: 48},
		Hub: apitype.HubStatus{CheckedAt: at(-2*time.Hour + 5*time.Second), Result: "ok", Connected: true},
		Credential: apitype.Credential{Type: apitype.CredentialX509,
			Subject: "CN=rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", Serial: "4f1c0a9e77d2b3",
			NotBefore: at(-3 * time.Hour), NotAfter: at(30*24*time.Hour - 3*time.Hour), RenewAt: at(20*24*time.Hour - 3*time.Hour)},
		Version: "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"failed": {
		State: apitype.PhaseFailed, Reason: apitype.ReasonFirstBoot,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		Attempts: 4, NextAttemptAt: at(90 * time.Second),
		LastError: str("registering with DPS: dial tcp: lookup global.azure-devices-provisioning.net: no such host"),
		TPM:       apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e", SRKName: "000b8f3c", OwnerAuthSet: true, Commands: 31},
		Version:   "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"waiting-for-tpm": {
		State: apitype.PhaseWaitingForTPM, Reason: apitype.ReasonFirstBoot,
		LastError: str("opening the TPM: no TPM device (/dev/tpmrm0, /dev/tpm0)"),
		TPM:       apitype.TPMStatus{Device: "auto"},
		Version:   "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"disabled": {
		State: apitype.PhaseDisabled, Reason: apitype.ReasonFirstBoot,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		Attempts: 2, NextAttemptAt: at(58 * time.Minute),
		LastError: str("DPS: enrollment disabled (403, 401002)"),
		TPM:       apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e", SRKName: "000b8f3c", OwnerAuthSet: true, Commands: 20},
		Version:   "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"reregistering": {
		State: apitype.PhaseAssigning, Reason: apitype.ReasonRequested,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		AssignedHub: "hub-1.azure-devices.net", DeviceID: "sensor-0042",
		ProvisionedAt: at(-26 * time.Hour), Attempts: 2,
		TPM:     apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e", SRKName: "000b8f3c", OwnerAuthSet: true, Commands: 25},
		Hub:     apitype.HubStatus{CheckedAt: at(-26 * time.Hour), Result: apitype.HubOK},
		Version: "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"reregistration-failed": {
		State: apitype.PhaseFailed, Reason: apitype.ReasonTPMCleared,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		AssignedHub: "hub-1.azure-devices.net", DeviceID: "sensor-0042",
		ProvisionedAt: at(-3 * time.Hour), Attempts: 3, NextAttemptAt: at(40 * time.Second),
		LastError: str("registering with DPS (tpm-cleared): requesting the TPM challenge: 503 Service Unavailable"),
		TPM:       apitype.TPMStatus{Device: "/dev/tpmrm0", EKDigest: "5f2b9c1e", SRKName: "0b0b1c2d", OwnerAuthSet: true, Commands: 60},
		Version:   "dpsd 1.0.0 (commit abc1234, go1.26.0)",
	},
	"lockout-hub-rejected": {
		State: apitype.PhaseProvisioned, Reason: apitype.ReasonHubRejected,
		RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", IDScope: "0ne00000A0A",
		AssignedHub: "hub-2.azure-devices.net", DeviceID: "sensor-0042",
		ProvisionedAt: at(-30 * time.Second), Attempts: 1,
		TPM: apitype.TPMStatus{Device: "/dev/tpm0", EKDigest: "5f2b9c1e", SRKName: "000b8f3c", OwnerAuthSet: true, InLockout: true, Commands: 40},
		Hub: apitype.HubStatus{CheckedAt: at(-10 * time.Second), Result: apitype.HubRejected, Error: "CONNACK 5: not authorized"},
	},
}

func TestStatusGolden(t *testing.T) {
	t.Parallel()
	for name, st := range statusFixtures {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			cli.RenderStatus(&out, st, testNow)
			golden(t, "status-"+name+".txt", out.Bytes())
		})
	}
}

func TestCheckGolden(t *testing.T) {
	t.Parallel()
	rep := apitype.CheckReport{Checks: []apitype.Check{
		{Name: "config", Status: apitype.CheckPass, Detail: "/etc/dpsd/config.toml valid (1 files)"},
		{Name: "tpm-device", Status: apitype.CheckFail, Detail: "/dev/tpmrm0 (owner root, group root, mode 0600): user dpsd may not open it",
			Fix: `give the device to group tss, mode 0660 (apt install tpm-udev)`},
		{Name: "tpm-resource-manager", Status: apitype.CheckPass, Detail: "kernel resource manager /dev/tpmrm0"},
		{Name: "lockout", Status: apitype.CheckWarn, Detail: "2 of 32 authorization failures counted", Fix: "find what sends wrong passwords to the TPM"},
	}}
	var out bytes.Buffer
	cli.RenderChecks(&out, rep)
	golden(t, "check-report.txt", out.Bytes())
}

// golden compares got with the file, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join(goldenDir, name)
	if *update {
		if err := os.MkdirAll(goldenDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the golden file (run go test -update to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = cli.App{}.Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	t.Parallel()
	verbs := []string{"run", "status", "wait", "reprovision", "token", "enroll-info", "check", "check-config", "version"}
	for _, v := range verbs {
		code, out, _ := run(t, v, "--help")
		if code != cli.ExitOK || !strings.HasPrefix(out, "usage: dpsd "+v) {
			t.Errorf("%s --help: exit %d, %q", v, code, out)
		}
		if v != "run" && v != "check-config" && v != "version" && !strings.Contains(out, "-socket") {
			t.Errorf("%s --help does not offer --socket:\n%s", v, out)
		}
	}
	tests := []struct {
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{nil, cli.ExitUsage, "", "usage: dpsd <command>"},
		{[]string{"--help"}, cli.ExitOK, "usage: dpsd <command>", ""},
		{[]string{"help", "token"}, cli.ExitOK, "usage: dpsd token", ""},
		{[]string{"frobnicate"}, cli.ExitUsage, "", `unknown command "frobnicate"`},
		{[]string{"status", "--bogus"}, cli.ExitUsage, "", "dpsd status --help"},
		{[]string{"status", "extra"}, cli.ExitUsage, "", `unexpected argument "extra"`},
		{[]string{"token", "--ttl", "-1h", "--socket", "/nonexistent"}, cli.ExitUsage, "", "must not be negative"},
		{[]string{"version"}, cli.ExitOK, "dpsd ", ""},
		{[]string{"run", "--log-level", "loud"}, cli.ExitUsage, "", "bad --log-level"},
		{[]string{"run"}, cli.ExitFailure, "", "built without the daemon"},
	}
	for _, tt := range tests {
		code, out, errOut := run(t, tt.args...)
		if code != tt.wantCode || !strings.Contains(out, tt.wantOut) || !strings.Contains(errOut, tt.wantErr) {
			t.Errorf("dpsd %v: exit %d, stdout %q, stderr %q; want exit %d, %q, %q", tt.args, code, out, errOut, tt.wantCode, tt.wantOut, tt.wantErr)
		}
	}
}

// run hands the config path and a logger to the daemon's entry point and
// maps its error to the exit code.
func TestRunCallsDaemon(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		var gotPath string
		app := cli.App{Run: func(_ context.Context, path string, log *slog.Logger) error {
			gotPath = path
			log.Info("running")
			if fail {
				return errors.New("opening the status socket: boom")
			}
			return nil
		}}
		var out, errOut bytes.Buffer
		code := app.Main(context.Background(), []string{"run", "--config", "/etc/x.toml"}, &out, &errOut)
		want := cli.ExitOK
		if fail {
			want = cli.ExitFailure
		}
		if code != want || gotPath != "/etc/x.toml" || !strings.Contains(errOut.String(), "running") {
			t.Errorf("run (fail %t): exit %d, path %q, stderr %q", fail, code, gotPath, &errOut)
		}
		if fail && !strings.Contains(errOut.String(), "dpsd run: opening the status socket: boom") {
			t.Errorf("run's error not shown: %q", &errOut)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	t.Parallel()
	code, out, errOut := run(t, "check-config", "--config", "../../testdata/config/minimal.toml")
	if code != cli.ExitOK || !strings.Contains(out, "config valid") {
		t.Errorf("minimal config: exit %d, %q, %q", code, out, errOut)
	}
	bad, err := filepath.Glob("../../testdata/config/bad/*.toml")
	if err != nil || len(bad) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, path := range bad {
		code, _, errOut := run(t, "check-config", "--config", path)
		if code != cli.ExitFailure || !strings.Contains(errOut, filepath.Base(path)) {
			t.Errorf("%s: exit %d, stderr %q; want 1 and the file named", path, code, errOut)
		}
	}
}

func TestDaemonNotRunning(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "status.sock")
	for _, verb := range []string{"status", "token", "reprovision"} {
		code, _, errOut := run(t, verb, "--socket", sock)
		if code != cli.ExitFailure || !strings.Contains(errOut, "dpsd is not running") || !strings.Contains(errOut, "systemctl status dpsd") {
			t.Errorf("%s without a daemon: exit %d, %q", verb, code, errOut)
		}
	}
}

func TestWait(t *testing.T) {
	t.Parallel()
	b := localapitest.NewBackend(apitype.Status{State: apitype.PhaseRegistering})
	sock := localapitest.Serve(t, localapi.New(b, localapi.Options{Log: localapitest.Logger(t)}), 0o600, "")

	// Not provisioned within the timeout: exit 1, and the state is named.
	code, _, errOut := run(t, "wait", "--timeout", "1500ms", "--socket", sock)
	if code != cli.ExitFailure || !strings.Contains(errOut, "not provisioned after 1.5s") || !strings.Contains(errOut, "registering") {
		t.Errorf("wait while registering: exit %d, %q", code, errOut)
	}

	// Provisioned while waiting: the daemon pushes the change, exit 0.
	var out, stderr testenv.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cli.App{}.Main(context.Background(), []string{"wait", "--socket", sock}, &out, &stderr)
	}()
	waitForText(t, &stderr, "state registering")
	b.SetStatus(apitype.Status{State: apitype.PhaseProvisioned, DeviceID: "dev-1", AssignedHub: "hub.example"})
	if code := <-done; code != cli.ExitOK || !strings.Contains(out.String(), "provisioned: device dev-1 on hub.example") {
		t.Errorf("wait until provisioned: exit %d, %q, %q", code, &out, &stderr)
	}
}

// TestStatusWatch: --watch shows the status at once and again at each
// change until interrupted; with --json, one JSON line each.
func TestStatusWatch(t *testing.T) {
	t.Parallel()
	b := localapitest.NewBackend(apitype.Status{State: apitype.PhaseRegistering})
	sock := localapitest.Serve(t, localapi.New(b, localapi.Options{Log: localapitest.Logger(t)}), 0o600, "")
	for _, tt := range []struct {
		args          []string
		first, second string
	}{
		{[]string{"--json"}, `{"state":"registering"`, `{"state":"provisioned"`},
		{nil, "Not provisioned yet: registering with DPS", "Provisioned: device dev-1 on hub.example"},
	} {
		b.SetStatus(apitype.Status{State: apitype.PhaseRegistering})
		ctx, cancel := context.WithCancel(context.Background())
		var out, errOut testenv.Buffer
		done := make(chan int, 1)
		go func() {
			done <- cli.App{}.Main(ctx, append([]string{"status", "--watch", "--socket", sock}, tt.args...), &out, &errOut)
		}()
		waitForText(t, &out, tt.first)
		b.SetStatus(apitype.Status{State: apitype.PhaseProvisioned, DeviceID: "dev-1", AssignedHub: "hub.example"})
		waitForText(t, &out, tt.second)
		cancel()
		if code := <-done; code != cli.ExitOK {
			t.Errorf("status --watch %v: exit %d after interrupt, %q", tt.args, code, &errOut)
		}
	}
}

// waitForText waits until buf holds text; the deadline only bounds a
// broken run.
func waitForText(t *testing.T, buf *testenv.Buffer, text string) {
	t.Helper()
	if !testenv.Poll(func() bool { return strings.Contains(buf.String(), text) }) {
		t.Fatalf("no %q in %q", text, buf)
	}
}

// BenchmarkStatus is what `dpsd status --json` and `dpsd status` cost the
// client once the answer is in: decoding the wire type and rendering the
// human view.
func BenchmarkStatus(b *testing.B) {
	raw, err := json.Marshal(statusFixtures["provisioned"])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var st apitype.Status
			if err := json.Unmarshal(raw, &st); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("render", func(b *testing.B) {
		b.ReportAllocs()
		st := statusFixtures["provisioned"]
		for b.Loop() {
			cli.RenderStatus(io.Discard, st, testNow)
		}
	})
}
