package cli_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The command line is a client of the daemon: the TPM work of its
// standalone paths is injected (cli.Standalone), so neither the TPM layer
// nor the daemon's engine is linked through daemon/cli.
func TestCLIImportsNoTPMCode(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/dpsd-project/dpsd/daemon/cli").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/dpsd-project/dpsd/tpmdev",
		"github.com/dpsd-project/dpsd/daemon/check",
		"github.com/dpsd-project/dpsd/daemon/provision",
		"github.com/google/go-tpm",
	}
	// Handle values (a uint32 and its syntax, stdlib only) come with the
	// config; they talk to no TPM.
	allowed := "github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	for _, dep := range strings.Fields(string(out)) {
		if dep == allowed {
			continue
		}
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("daemon/cli depends on %s", dep)
			}
		}
	}
}
