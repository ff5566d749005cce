package provision_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/daemon/provision"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

const discreteScope = "0ne00D15C7"

// TestDiscreteTPMCost runs the engine on a TPM as slow as a discrete one
// (tpmtest's latency model over swtpm, docs/discrete-tpm.md) against the
// emulator: a first boot, a restart and a requested re-registration. It
// asserts what costs seconds on such a TPM, RSA key generation: the EK and
// the SRK once each at first boot, none after. Times are logged, never
// asserted.
func TestDiscreteTPMCost(t *testing.T) {
	emu, err := dpsemu.Start(dpsemu.Options{
		Dir: t.TempDir(), IDScope: discreteScope, Hubs: []string{"hub-discrete.azure-devices.example"},
		RetryAfter: 1, AssignAfterPolls: new(int), // one poll, one second: the wait DPS imposes
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emu.Close() })
	info := freshEnrolledTPM(t, emu)

	cfg := config.Default()
	cfg.Provisioning.GlobalEndpoint = "https://" + emu.Addrs().DPS
	cfg.Provisioning.IDScope = discreteScope
	cfg.TPM.Device = info.Spec()
	cfg.State.Dir = t.TempDir()
	client, err := dps.NewClient(dps.ClientConfig{
		Endpoint: cfg.Provisioning.GlobalEndpoint, IDScope: discreteScope,
		RootCAs: emu.RootCAs(), Timeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}

	cold := boot(t, cfg, client, info, 1, "")
	cold.report(t, "first boot")
	if n := cold.lat.RSAKeyGenerations(); n == 0 || n > 2 {
		t.Errorf("first boot generated %d RSA keys, want the EK and the SRK (2) at most", n)
	}
	if n := cold.dev.Stats().ByCommand["CreatePrimary"].Count; n > 2 {
		t.Errorf("first boot sent %d CreatePrimary, want 2 at most (EK, SRK)", n)
	}

	warm := boot(t, cfg, client, info, 2, "")
	warm.report(t, "restart")
	again := boot(t, cfg, client, info, 3, apitype.ReasonRequested)
	again.report(t, "restart and requested re-registration")
	for _, b := range []struct {
		name string
		r    bootResult
	}{{"restart", warm}, {"re-registration", again}} {
		if n := b.r.lat.RSAKeyGenerations(); n != 0 {
			t.Errorf("%s generated %d RSA keys, want 0", b.name, n)
		}
		if n := b.r.dev.Stats().ByCommand["CreatePrimary"].Count; n != 0 {
			t.Errorf("%s sent %d CreatePrimary, want 0", b.name, n)
		}
	}
	if st := emu.Stats(); st["assigned"] != 2 {
		t.Errorf("emulator assigned %d times, want 2 (first boot, requested)", st["assigned"])
	}
}

// bootResult is what one run of the engine cost.
type bootResult struct {
	dev         *tpmdev.Device
	lat         *tpmtest.LatencyTPM
	ready, prov time.Duration // from Run to READY / to provisioned
}

// boot runs an engine until it is provisioned (after a re-registration for
// reason, when set) and stops it.
func boot(t *testing.T, cfg *config.Config, client *dps.Client, info tpmtest.SwtpmInfo, seed uint64, reason apitype.Reason) bootResult {
	t.Helper()
	var (
		r        bootResult
		mu       sync.Mutex
		phases   = make(chan string, 64)
		readyAt  time.Time
		readyCh  = make(chan struct{})
		openOnce sync.Once
	)
	e := provision.New(provision.Options{
		Config: cfg,
		Store:  &state.Store{Dir: cfg.State.Dir},
		OpenTPM: func() (*tpmdev.Device, error) {
			var err error
			openOnce.Do(func() { r.dev, r.lat, err = tpmtest.OpenWithLatency(info, seed, tpmtest.Logger(t)) })
			return r.dev, err
		},
		DPS: client,
		OnPhase: func(text string) {
			select {
			case phases <- text:
			default: // nobody waits for phases any more
			}
		},
		OnReady: func() {
			mu.Lock()
			readyAt = time.Now()
			mu.Unlock()
			close(readyCh)
		},
		Log: tpmtest.Logger(t),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	deadline := time.After(2 * time.Minute) // bounds a broken run, measures nothing
	waitProvisioned := func() {
		for {
			select {
			case text := <-phases:
				if strings.HasPrefix(text, "provisioned") {
					r.prov = time.Since(start)
					return
				}
				if strings.HasPrefix(text, "failed") || strings.HasPrefix(text, "disabled") {
					t.Fatalf("engine: %s", text)
				}
			case <-deadline:
				t.Fatalf("not provisioned; status %+v", e.Status())
			}
		}
	}
	waitProvisioned()
	select {
	case <-readyCh:
	case <-deadline:
		t.Fatalf("no READY; status %+v", e.Status())
	}
	mu.Lock()
	r.ready = readyAt.Sub(start)
	mu.Unlock()
	if reason != "" {
		e.Reprovision(reason)
		waitProvisioned() // the phases of the re-registration end in provisioned again
		if s := e.Status(); s.Reason != reason {
			t.Fatalf("after Reprovision(%s): status %+v", reason, s)
		}
	}
	return r
}

// report logs the times and the per-command cost of one boot.
func (r bootResult) report(t *testing.T, name string) {
	t.Helper()
	st := r.dev.Stats()
	names := make([]string, 0, len(st.ByCommand))
	for n := range st.ByCommand {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		c := st.ByCommand[n]
		fmt.Fprintf(&b, " %s×%d=%v", n, c.Count, c.Total.Round(time.Millisecond))
	}
	t.Logf("%s on the discrete-TPM model: provisioned after %v, READY after %v; %d TPM commands, modelled TPM time %v, %d RSA key generations;%s",
		name, r.prov.Round(time.Millisecond), r.ready.Round(time.Millisecond), st.Total,
		r.lat.Modelled().Round(time.Millisecond), r.lat.RSAKeyGenerations(), b.String())
}

// freshEnrolledTPM starts an swtpm, enrolls its EK with the emulator and
// puts the TPM back as it was before the EK was made, so that the first
// boot creates the EK as on a new device (same endorsement seed: same EK).
func freshEnrolledTPM(t *testing.T, emu *dpsemu.Emulator) tpmtest.SwtpmInfo {
	t.Helper()
	dir := t.TempDir()
	info := tpmtest.StartSwtpm(t, dir)
	perm := filepath.Join(info.StateDir, "tpm2-00.permall")
	fresh, err := os.ReadFile(perm)
	if err != nil {
		t.Fatalf("reading the fresh TPM's state: %v", err)
	}
	dev, err := tpmdev.Open(info.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := dev.EnsureEK(context.Background(), tpmdev.EKTemplateTCG, nil, nil)
	dev.Close()
	if err != nil {
		t.Fatal(err)
	}
	regID := dps.RegistrationID(ek.Public)
	body, _ := json.Marshal(map[string]any{
		"registrationId": regID,
		"attestation":    map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": base64.StdEncoding.EncodeToString(ek.Public)}},
	})
	req, err := http.NewRequest("PUT", "http://"+emu.Addrs().Admin+"/enrollments/"+regID, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		t.Fatalf("PUT enrollment: %s", resp.Status)
	}
	info.Stop()
	if err := os.WriteFile(perm, fresh, 0o600); err != nil {
		t.Fatal(err)
	}
	return tpmtest.StartSwtpm(t, dir)
}
