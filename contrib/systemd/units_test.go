package systemd_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/internal/testenv"
)

// units are the unit files this directory ships in the .deb.
var units = []string{"dpsd.service", "dpsd.socket", "dpsd-wait-provisioned.service"}

// shippedBinary is where the package installs dpsd; every ExecStart uses it.
const shippedBinary = "/usr/bin/dpsd"

// maxExposure is the highest `systemd-analyze security` exposure accepted for
// a service (0 safest, 10 unprotected).
const maxExposure = 2.0

// stageUnits copies the units into a temporary directory with every
// /usr/bin/dpsd replaced by an executable placeholder there, and the man page
// into a man tree beside it. `systemd-analyze verify` refuses a unit whose
// ExecStart is not an executable file and runs man(1) on each
// Documentation=man: entry; the build machine has neither installed. Verify
// looks at no more than the path and its mode, so a placeholder script stands
// in for the binary; the man page is the real one from docs/. It returns the
// staged unit paths and the MANPATH to run verify with.
func stageUnits(t *testing.T) (paths []string, manPath string) {
	t.Helper()
	dir := t.TempDir()
	placeholder := filepath.Join(dir, "dpsd")
	if err := os.WriteFile(placeholder, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unitDir := filepath.Join(dir, "units")
	manDir := filepath.Join(dir, "man")
	for _, d := range []string{unitDir, filepath.Join(manDir, "man8")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range units {
		body, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(name, ".service") && !bytes.Contains(body, []byte("ExecStart="+shippedBinary+" ")) {
			t.Fatalf("%s: ExecStart does not run %s", name, shippedBinary)
		}
		staged := bytes.ReplaceAll(body, []byte(shippedBinary), []byte(placeholder))
		path := filepath.Join(unitDir, name)
		if err := os.WriteFile(path, staged, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, path)
	}
	page, err := os.ReadFile(filepath.Join("..", "..", "docs", "dpsd.8"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(manDir, "man8", "dpsd.8"), page, 0o644); err != nil {
		t.Fatal(err)
	}
	return paths, manDir
}

// TestVerify fails on anything systemd-analyze verify prints to stderr: it
// reports unknown keys and bad values there while still exiting 0.
func TestVerify(t *testing.T) {
	analyze := testenv.LookPath(t, "systemd-analyze")
	paths, manPath := stageUnits(t)

	cmd := exec.Command(analyze, append([]string{"verify"}, paths...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+manPath, "SYSTEMD_LOG_COLOR=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, stderr.String())
	}
}

var overallExposure = regexp.MustCompile(`Overall exposure level for \S+: ([0-9]+(?:\.[0-9]+)?)`)

// TestSecurity scores each service offline and fails above maxExposure.
func TestSecurity(t *testing.T) {
	analyze := testenv.LookPath(t, "systemd-analyze")
	tests := []struct {
		unit string
	}{
		{unit: "dpsd.service"},
		{unit: "dpsd-wait-provisioned.service"},
	}
	for _, tt := range tests {
		t.Run(tt.unit, func(t *testing.T) {
			cmd := exec.Command(analyze, "security", "--offline=yes", "--no-pager", "./"+tt.unit)
			cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0", "SYSTEMD_COLORS=0")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("systemd-analyze security: %v\n%s%s", err, out, stderr.String())
			}
			m := overallExposure.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no overall exposure in the output:\n%s", out)
			}
			score, err := strconv.ParseFloat(string(m[1]), 64)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: exposure %.1f (limit %.1f)", tt.unit, score, maxExposure)
			if score > maxExposure {
				t.Errorf("%s: exposure %.1f above %.1f; what is left open:\n%s", tt.unit, score, maxExposure, exposed(out))
			}
		})
	}
}

// exposed keeps the lines of a security report that cost exposure.
func exposed(report []byte) string {
	var b strings.Builder
	for _, line := range strings.Split(string(report), "\n") {
		if strings.HasPrefix(line, "✗") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// unitValues returns the values of key in a unit file, in order.
func unitValues(t *testing.T, unit, key string) []string {
	t.Helper()
	body, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	var values []string
	for line := range strings.Lines(string(body)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k == key {
			values = append(values, v)
		}
	}
	return values
}

// TestSocketOwner: the service's RuntimeDirectory= re-owns the directory
// and everything in it, the listening socket included, to the service's
// user and group at every start. A socket in that directory declaring
// another owner would say what is true only until the daemon first starts.
func TestSocketOwner(t *testing.T) {
	listen := unitValues(t, "dpsd.socket", "ListenStream")
	runtime := unitValues(t, "dpsd.service", "RuntimeDirectory")
	if len(listen) != 1 || len(runtime) != 1 {
		t.Fatalf("ListenStream %q, RuntimeDirectory %q: want one each", listen, runtime)
	}
	if !strings.HasPrefix(listen[0], "/run/"+runtime[0]+"/") {
		t.Skipf("the socket %s is outside the runtime directory /run/%s", listen[0], runtime[0])
	}
	for _, tc := range []struct{ socketKey, serviceKey string }{
		{"SocketUser", "User"},
		{"SocketGroup", "Group"},
	} {
		got, want := unitValues(t, "dpsd.socket", tc.socketKey), unitValues(t, "dpsd.service", tc.serviceKey)
		if len(want) != 1 || !slices.Equal(got, want) {
			t.Errorf("dpsd.socket %s=%q, but dpsd.service's RuntimeDirectory= makes it %s=%q", tc.socketKey, got, tc.serviceKey, want)
		}
	}
}
