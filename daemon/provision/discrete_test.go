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
	"github.com/google/go-tpm/tpm2"
)

const discreteScope = "0ne00D15C7"

// TestDiscreteTPMCost runs the engine on a TPM as slow as a discrete one
// (tpmtest's latency model over swtpm, docs/discrete-tpm.md) against the
// emulator: a first boot, a restart and a requested re-registration. It
// asserts what costs seconds on such a TPM, RSA key generation: the EK and
// the SRK once each at first boot, none after; and what bus protection may
// cost: at most 5 commands before READY on a restart, and tokens after the
// first within 1.5 times the modelled time of the three commands a token
// took before (Load, HMAC, FlushContext): the salted session is made once.
// Wall-clock times are logged, never asserted.
func TestDiscreteTPMCost(t *testing.T) {
	f := newFixture(t)
	modelled := func(seed uint64) func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
		return func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
			return tpmtest.OpenWithLatency(f.info, seed, tpmtest.Logger(t))
		}
	}

	cold, stop := f.boot(t, modelled(1), "")
	stop()
	cold.report(t, "first boot")
	if n := cold.lat.RSAKeyGenerations(); n == 0 || n > 2 {
		t.Errorf("first boot generated %d RSA keys, want the EK and the SRK (2) at most", n)
	}
	if n := cold.dev.Stats().ByCommand["CreatePrimary"].Count; n > 2 {
		t.Errorf("first boot sent %d CreatePrimary, want 2 at most (EK, SRK)", n)
	}

	warm, stop := f.boot(t, modelled(2), "")
	if warm.readyCommands > 5 {
		t.Errorf("restart sent %d TPM commands before READY, want 5 at most", warm.readyCommands)
	}
	tokenCost(t, warm)
	stop()
	warm.report(t, "restart")
	again, stop := f.boot(t, modelled(3), apitype.ReasonRequested)
	stop()
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
	if st := f.emu.Stats(); st["assigned"] != 2 {
		t.Errorf("emulator assigned %d times, want 2 (first boot, requested)", st["assigned"])
	}
}

// tokenCost gets three tokens and checks the modelled TPM time of each
// after the first, which also starts the kept salted session.
func tokenCost(t *testing.T, r bootResult) {
	t.Helper()
	unprotected := tpmtest.DiscreteLatencies[tpm2.TPMCCLoad].Max + tpmtest.DiscreteLatencies[tpm2.TPMCCHMAC].Max +
		tpmtest.DiscreteLatencies[tpm2.TPMCCFlushContext].Max
	for i := range 3 {
		before, n := r.lat.Modelled(), r.dev.Stats().Total
		if _, err := r.engine.Token(context.Background(), time.Hour); err != nil {
			t.Fatal(err)
		}
		cost := r.lat.Modelled() - before
		t.Logf("token %d on the discrete-TPM model: %d TPM commands, modelled %v (%v without bus protection)",
			i+1, r.dev.Stats().Total-n, cost, unprotected)
		if i > 0 && 2*cost > 3*unprotected {
			t.Errorf("token %d: modelled %v, want at most 1.5 × %v", i+1, cost, unprotected)
		}
	}
}

// BenchmarkToken is a hub SAS token signed through the TPM, the way apps
// on the device get one (Engine.Token: sas.New with the TPM's HMAC), on
// swtpm and on the discrete-TPM model.
func BenchmarkToken(b *testing.B) {
	f := newFixture(b)
	for _, tc := range []struct {
		name string
		open func() (*tpmdev.Device, *tpmtest.LatencyTPM, error)
	}{
		{"swtpm", func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
			dev, err := tpmdev.Open(f.info.Spec(), nil)
			return dev, nil, err
		}},
		{"discrete-model", func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
			return tpmtest.OpenWithLatency(f.info, 1, nil)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r, stop := f.boot(b, tc.open, "")
			defer stop()
			ctx := context.Background()
			before := r.dev.Stats().Total
			for b.Loop() {
				if _, err := r.engine.Token(ctx, time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(r.dev.Stats().Total-before)/float64(b.N), "TPM-commands/op")
		})
	}
}

// fixture is an emulator, an enrolled fresh swtpm and the engine's config
// and DPS client for them.
type fixture struct {
	emu    *dpsemu.Emulator
	info   tpmtest.SwtpmInfo
	cfg    *config.Config
	client *dps.Client
}

func newFixture(tb testing.TB) *fixture { tb.Helper(); return newFixtureFor(tb, "") }

// newFixtureFor is newFixture for a device that asks for certificates
// under the credential policy named policy (a 30-day lifetime); "": SAS.
func newFixtureFor(tb testing.TB, policy string) *fixture {
	tb.Helper()
	emu, err := dpsemu.Start(dpsemu.Options{
		Dir: tb.TempDir(), IDScope: discreteScope, Hubs: []string{"hub-discrete.azure-devices.example"},
		RetryAfter: 1, AssignAfterPolls: new(int), // one poll, one second: the wait DPS imposes
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { emu.Close() })
	var enrollment map[string]any
	if policy != "" {
		adminPut(tb, emu, "/credentialPolicies/"+policy, map[string]any{"certificateLifetime": "720h"})
		enrollment = map[string]any{"credentialPolicyName": policy}
	}
	f := &fixture{emu: emu, info: freshEnrolledTPM(tb, emu, enrollment), cfg: config.Default()}
	if policy != "" {
		f.cfg.Hub.Auth = config.AuthX509
		f.cfg.Provisioning.APIVersion = dps.APIVersionCertificates
	}
	f.cfg.Provisioning.GlobalEndpoint = "https://" + emu.Addrs().DPS
	f.cfg.Provisioning.IDScope = discreteScope
	f.cfg.TPM.Device = f.info.Spec()
	f.cfg.State.Dir = tb.TempDir()
	f.client, err = dps.NewClient(dps.ClientConfig{
		Endpoint: f.cfg.Provisioning.GlobalEndpoint, IDScope: discreteScope, APIVersion: f.cfg.Provisioning.APIVersion,
		RootCAs: emu.RootCAs(), Timeout: 10 * time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return f
}

// bootResult is what one run of the engine cost.
type bootResult struct {
	engine        *provision.Engine
	dev           *tpmdev.Device
	lat           *tpmtest.LatencyTPM // nil without the latency model
	ready, prov   time.Duration       // from Run to READY / to provisioned
	readyCommands int                 // TPM commands sent before READY
}

// boot runs an engine on the TPM that open gives until it is provisioned
// (after a re-registration for reason, when set). stop ends the engine.
func (f *fixture) boot(tb testing.TB, open func() (*tpmdev.Device, *tpmtest.LatencyTPM, error), reason apitype.Reason) (r bootResult, stop func()) {
	tb.Helper()
	var (
		mu       sync.Mutex
		phases   = make(chan string, 64)
		readyAt  time.Time
		readyCh  = make(chan struct{})
		openOnce sync.Once
	)
	r.engine = provision.New(provision.Options{
		Config: f.cfg,
		Store:  &state.Store{Dir: f.cfg.State.Dir},
		OpenTPM: func() (*tpmdev.Device, error) {
			var err error
			openOnce.Do(func() { r.dev, r.lat, err = open() })
			return r.dev, err
		},
		DPS:        f.client,
		DPSWithCSR: func(csr []byte) provision.DPS { return f.client.WithCSR(csr) },
		OnPhase: func(text string) {
			select {
			case phases <- text:
			default: // nobody waits for phases any more
			}
		},
		OnReady: func() {
			mu.Lock()
			readyAt = time.Now()
			r.readyCommands = r.dev.Stats().Total
			mu.Unlock()
			close(readyCh)
		},
		Log: tpmtest.Logger(tb),
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- r.engine.Run(ctx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	}

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
					stop()
					tb.Fatalf("engine: %s", text)
				}
			case <-deadline:
				stop()
				tb.Fatalf("not provisioned; status %+v", r.engine.Status())
			}
		}
	}
	waitProvisioned()
	select {
	case <-readyCh:
	case <-deadline:
		stop()
		tb.Fatalf("no READY; status %+v", r.engine.Status())
	}
	mu.Lock()
	r.ready = readyAt.Sub(start)
	mu.Unlock()
	if reason != "" {
		r.engine.Reprovision(reason)
		waitProvisioned() // the phases of the re-registration end in provisioned again
		if s := r.engine.Status(); s.Reason != reason {
			stop()
			tb.Fatalf("after Reprovision(%s): status %+v", reason, s)
		}
	}
	return r, stop
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
	t.Logf("%s on the discrete-TPM model: provisioned after %v, READY after %v (%d TPM commands); %d TPM commands, modelled TPM time %v, %d RSA key generations;%s",
		name, r.prov.Round(time.Millisecond), r.ready.Round(time.Millisecond), r.readyCommands, st.Total,
		r.lat.Modelled().Round(time.Millisecond), r.lat.RSAKeyGenerations(), b.String())
}

// freshEnrolledTPM starts an swtpm, enrolls its EK with the emulator and
// puts the TPM back as it was before the EK was made, so that the first
// boot creates the EK as on a new device (same endorsement seed: same EK).
func freshEnrolledTPM(t testing.TB, emu *dpsemu.Emulator, extra map[string]any) tpmtest.SwtpmInfo {
	t.Helper()
	dir := t.TempDir()
	info := tpmtest.StartSwtpm(t, dir)
	dev, err := tpmdev.Open(info.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// StartSwtpm returns once swtpm has answered a command, so its state
	// file is written.
	perm := filepath.Join(info.StateDir, "tpm2-00.permall")
	fresh, err := os.ReadFile(perm)
	if err != nil {
		t.Fatalf("reading the fresh TPM's state: %v", err)
	}
	ek, err := dev.EnsureEK(context.Background(), tpmdev.EKTemplateTCG, nil, nil)
	dev.Close()
	if err != nil {
		t.Fatal(err)
	}
	regID := dps.RegistrationID(ek.Public)
	enr := map[string]any{
		"registrationId": regID,
		"attestation":    map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": base64.StdEncoding.EncodeToString(ek.Public)}},
	}
	for k, v := range extra {
		enr[k] = v
	}
	adminPut(t, emu, "/enrollments/"+regID, enr)
	info.Stop()
	if err := os.WriteFile(perm, fresh, 0o600); err != nil {
		t.Fatal(err)
	}
	return tpmtest.StartSwtpm(t, dir)
}

// adminPut sends one PUT to the emulator's admin API.
func adminPut(t testing.TB, emu *dpsemu.Emulator, path string, v any) {
	t.Helper()
	body, _ := json.Marshal(v)
	req, err := http.NewRequest("PUT", "http://"+emu.Addrs().Admin+path, bytes.NewReader(body))
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
		t.Fatalf("PUT %s: %s", path, resp.Status)
	}
}

// TestDiscreteTPMCostX509 is TestDiscreteTPMCost in x509 mode: a first
// boot and a re-registration (what a renewal does: a new key, a CSR). On
// a TPM with P-256 the certificate's key is an ECC key: no RSA key
// generation beyond the EK and SRK at first boot, none at a renewal.
// Wall-clock and modelled times are logged, never asserted.
func TestDiscreteTPMCostX509(t *testing.T) {
	f := newFixtureFor(t, "discrete")
	open := func(seed uint64) func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
		return func() (*tpmdev.Device, *tpmtest.LatencyTPM, error) {
			return tpmtest.OpenWithLatency(f.info, seed, tpmtest.Logger(t))
		}
	}
	cold, stop := f.boot(t, open(1), "")
	stop()
	cold.report(t, "x509 first boot")
	if n := cold.lat.RSAKeyGenerations(); n == 0 || n > 2 {
		t.Errorf("x509 first boot generated %d RSA keys, want the EK and the SRK (2) at most", n)
	}
	again, stop := f.boot(t, open(2), apitype.ReasonRequested)
	stop()
	again.report(t, "x509 restart and re-registration (a renewal's work)")
	if n := again.lat.RSAKeyGenerations(); n != 0 {
		t.Errorf("x509 re-registration generated %d RSA keys, want 0 (a P-256 key)", n)
	}
	if n := again.dev.Stats().ByCommand["Create"].Count; n != 1 {
		t.Errorf("x509 re-registration sent %d TPM2_Create, want 1 (the new certificate key)", n)
	}
	if st := f.emu.Stats(); st["certificates_issued"] != 2 {
		t.Errorf("emulator issued %d certificates, want 2", st["certificates_issued"])
	}
}
