package check_test

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// TestUnreachableTPM: the software TPM's socket is gone (swtpm stopped).
// tpm-device fails naming the socket and the fix; the checks that need the
// TPM say they could not run, and identity-key does not take the missing
// socket for a missing credential ("no hub credential yet").
func TestUnreachableTPM(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "swtpm.sock")
	dev, err := tpmdev.Open("swtpm:"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cfg := offline(t)
	cfg.TPM.Device = "swtpm:" + sock
	env := check.Env{Config: cfg, TPM: dev, ServiceUser: "root", AssignedHub: "hub.example",
		IdentityKey: func(ctx context.Context) error { return dev.LoadCheck(ctx, &tpmdev.WrappedKey{}) }}
	rep := check.Run(context.Background(), env)

	c := find(t, rep, check.NameTPMDevice)
	if c.Status != apitype.CheckFail || !strings.Contains(c.Detail, sock) || !strings.Contains(c.Detail, "does not answer") ||
		!strings.Contains(c.Fix, "swtpm") {
		t.Errorf("tpm-device: %+v, want a failure naming %s and how to start swtpm", c, sock)
	}
	for _, name := range []string{check.NameEK, check.NameSRK, check.NameOwnership, check.NameLockout, check.NameIdentityKey} {
		expect(t, rep, name, apitype.CheckWarn, "not checked: the TPM does not answer")
	}
}

// TestDPSHeadersBounded: the DPS probe, like the DPS client, refuses an
// answer with megabytes of headers instead of holding them.
func TestDPSHeadersBounded(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		junk := strings.Repeat("j", 1000)
		for i := range 1000 {
			w.Header().Set(fmt.Sprintf("X-Junk-%d", i), junk)
		}
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the client hangs up mid-answer
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := offline(t)
	cfg.Provisioning.GlobalEndpoint = srv.URL
	cfg.Network.CAFile = caFile
	rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: errors.New("x"), ServiceUser: "root"})
	expect(t, rep, check.NameDPSTLS, apitype.CheckFail, "headers exceeded")
}
