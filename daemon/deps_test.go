package daemon_test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

// goList runs `go list -json` on patterns with the given environment.
func goList(t *testing.T, env []string, args ...string) []struct {
	ImportPath string
	Imports    []string
	Deps       []string
	CgoFiles   []string
} {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Env = append(cmd.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	var pkgs []struct {
		ImportPath string
		Imports    []string
		Deps       []string
		CgoFiles   []string
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Imports    []string
			Deps       []string
			CgoFiles   []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

const module = "github.com/dpsd-project/dpsd"

// TestShippedBinaryDeps keeps test-only and cgo code out of the daemon
// that ships in the .deb.
func TestShippedBinaryDeps(t *testing.T) {
	forbidden := []string{
		"github.com/google/go-tpm-tools",    // the simulator: cgo, test-only
		"github.com/mochi-mqtt/server",      // the emulator's broker
		module + "/tpmdev/tpmtest",          // test helpers
		module + "/internal/testenv",        // test helpers
		module + "/internal/harness",        // test and bench processes
		module + "/tpmdev/authblob/softtpm", // software TPM for tests
		module + "/daemon/dps/dpsemu",       // the emulator
		module + "/daemon/hub/hubemu",       // the emulator's hub
		"github.com/goreleaser/nfpm",        // packaging tool

		module + "/daemon/x509cred/x509credtest", // test CAs and certificates
	}
	for _, p := range goList(t, []string{"CGO_ENABLED=0"}, "-deps", module+"/cmd/dpsd") {
		for _, f := range forbidden {
			if strings.HasPrefix(p.ImportPath, f) {
				t.Errorf("cmd/dpsd depends on %s", p.ImportPath)
			}
		}
	}
}

// TestThirdPartyHomes checks that each third-party module is imported by
// its one home package (tests excepted), so that swapping it touches one
// place.
func TestThirdPartyHomes(t *testing.T) {
	homes := map[string][]string{
		"github.com/google/go-tpm/":           {module + "/tpmdev"},
		"github.com/google/go-tpm-tools/":     {module + "/tpmdev/tpmtest"},
		"github.com/eclipse/paho.mqtt.golang": {module + "/daemon/hub"},
		"github.com/mochi-mqtt/server/":       {module + "/daemon/hub/hubemu"},
		"github.com/BurntSushi/toml":          {module + "/daemon/config"},
		"github.com/coreos/go-systemd/v22/":   {module + "/daemon/sdnotify", module + "/daemon/localapi"},
		"github.com/goreleaser/nfpm/":         {module + "/packaging"},
	}
	for _, p := range goList(t, []string{"CGO_ENABLED=1"}, module+"/...") {
		for _, imp := range p.Imports {
			if strings.HasPrefix(imp, "github.com/google/go-tpm/legacy/") {
				t.Errorf("%s imports %s: use go-tpm's tpm2 API", p.ImportPath, imp)
			}
			for prefix, allowed := range homes {
				if !strings.HasPrefix(imp, prefix) && imp != strings.TrimSuffix(prefix, "/") {
					continue
				}
				ok := false
				for _, a := range allowed {
					// A home's own subpackages may share it (tpmdev/authblob).
					if p.ImportPath == a || strings.HasPrefix(p.ImportPath, a+"/") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s imports %s; only %v may", p.ImportPath, imp, allowed)
				}
			}
		}
	}
}
