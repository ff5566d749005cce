package daemon_test

import (
	"encoding/json"
	"os/exec"
	"slices"
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
		// Quasi-standard library, but still one home each: the raw socket
		// calls of the status socket, and the daemon's task group (a home
		// shares it with its subpackages, so all of daemon/... may).
		"golang.org/x/sys/":  {module + "/daemon/localapi"},
		"golang.org/x/sync/": {module + "/daemon"},
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

// allowedImports is the import rule of docs/architecture.md, package by
// package: which project packages each may import (tests aside). Imports
// point one way, cmd -> daemon -> {provision, localapi, hub, dps} ->
// tpmdev. A new package fails the test until it is added here, so that its
// place in the direction is decided, not drifted into.
var allowedImports = map[string][]string{
	// The leaves: no project package.
	"daemon/apitype":    nil,
	"daemon/atomicfile": nil,
	"daemon/backoff":    nil,
	"daemon/filelimit":  nil,
	"daemon/x509cred":   nil,
	"daemon/sas":        nil,
	"daemon/sdnotify":   nil,
	"daemon/version":    nil,
	"tpmdev/authblob":   nil,
	"tpmdev/tpmhandle":  nil,
	"contrib/systemd":   nil, // unit-file tests only
	"daemon/e2e":        nil, // tests only; they run the binaries

	"daemon/config":    {"daemon/apitype", "daemon/dps", "daemon/filelimit", "tpmdev/tpmhandle"},
	"daemon/state":     {"daemon/apitype", "daemon/atomicfile", "daemon/filelimit"},
	"daemon/dps":       {"daemon/version"},
	"daemon/hub":       {"daemon/backoff", "daemon/sas"},
	"daemon/localapi":  {"daemon/apitype"},
	"daemon/client":    {"daemon/apitype"},
	"tpmdev":           {"tpmdev/authblob", "tpmdev/tpmhandle"},
	"daemon/enroll":    {"daemon/apitype", "daemon/config", "daemon/dps", "tpmdev"},
	"daemon/check":     {"daemon/apitype", "daemon/config", "daemon/state", "tpmdev", "tpmdev/tpmhandle"},
	"daemon/provision": {"daemon/apitype", "daemon/atomicfile", "daemon/backoff", "daemon/config", "daemon/dps", "daemon/enroll", "daemon/filelimit", "daemon/hub", "daemon/sas", "daemon/state", "daemon/version", "daemon/x509cred", "tpmdev", "tpmdev/authblob", "tpmdev/tpmhandle"},
	// The wiring, and the command line, which gets daemon.Run injected.
	"daemon":     {"daemon/apitype", "daemon/check", "daemon/config", "daemon/dps", "daemon/localapi", "daemon/provision", "daemon/sdnotify", "daemon/state", "daemon/version", "tpmdev"},
	"daemon/cli": {"daemon/apitype", "daemon/client", "daemon/config", "daemon/version"},
	// What enroll-info and check do with the TPM when the daemon is down,
	// injected into the command line by cmd/dpsd.
	"daemon/standalone": {"daemon/apitype", "daemon/check", "daemon/config", "daemon/enroll", "daemon/state", "daemon/version", "tpmdev", "tpmdev/tpmhandle"},
	"cmd/dpsd":          {"daemon", "daemon/cli", "daemon/standalone"},

	// Test helpers and the emulator: never imported by the shipped binary
	// (TestShippedBinaryDeps).
	"internal/testenv":             nil,
	"internal/harness":             {"internal/testenv", "tpmdev"},
	"tpmdev/tpmtest":               {"internal/harness", "internal/testenv", "tpmdev"},
	"tpmdev/authblob/softtpm":      nil,
	"daemon/x509cred/x509credtest": nil,
	"daemon/localapi/localapitest": {"daemon/apitype", "daemon/localapi"},
	"daemon/hub/hubemu":            {"daemon/sas"},
	"daemon/hub/hubemu/hubtest":    {"daemon/hub/hubemu", "daemon/sas"},
	"daemon/dps/dpsemu":            {"daemon/atomicfile", "daemon/dps", "daemon/hub/hubemu", "daemon/sas", "tpmdev/authblob"},
	"cmd/dpsemu":                   {"daemon/dps/dpsemu"},
	"scripts/bench":                {"daemon/apitype", "internal/harness", "internal/testenv"},
	"scripts/vmtest":               {"daemon/apitype"},
}

// TestImportDirection checks every project package's imports against
// allowedImports.
func TestImportDirection(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range goList(t, []string{"CGO_ENABLED=1"}, module+"/...") {
		name := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		seen[name] = true
		allowed, ok := allowedImports[name]
		if !ok {
			t.Errorf("%s is not in allowedImports: decide which project packages it may import", name)
			continue
		}
		for _, imp := range p.Imports {
			rel, ok := strings.CutPrefix(imp, module+"/")
			if !ok {
				continue
			}
			if !slices.Contains(allowed, rel) {
				t.Errorf("%s imports %s; it may import only %v (docs/architecture.md, Import rule)", name, rel, allowed)
			}
		}
	}
	for name := range allowedImports {
		if !seen[name] {
			t.Errorf("allowedImports lists %s, which go list does not know: remove it", name)
		}
	}
}
