package provision

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// rig is a device made of fakes: a TPM, DPS and a hub in memory, and a
// state directory that outlives the engines started on it.
type rig struct {
	tpm *fakeTPM
	dps *fakeDPS
	hub *fakeHub
	cfg *config.Config
	// tweak, when set, changes an engine before it runs.
	tweak func(*Engine)
	// withCSR is Options.DPSWithCSR (x509 rigs).
	withCSR func(csr []byte) DPS
}

func newRig(t *testing.T) *rig {
	cfg := config.Default()
	cfg.Provisioning.IDScope = "0ne00FAKE"
	cfg.State.Dir = t.TempDir()
	return &rig{tpm: newFakeTPM(), dps: &fakeDPS{}, hub: &fakeHub{}, cfg: cfg}
}

// running is an engine started on a rig.
type running struct {
	*Engine
	changed chan struct{}
	stop    func() error // cancels Run and returns its result
}

func (r *rig) start(t *testing.T) *running {
	t.Helper()
	changed := make(chan struct{}, 1)
	e := New(Options{
		Config:     r.cfg,
		Store:      &state.Store{Dir: r.cfg.State.Dir},
		OpenTPM:    func() (*tpmdev.Device, error) { return nil, errors.New("the rig's TPM is a fake") },
		DPS:        r.dps,
		DPSWithCSR: r.withCSR,
		Hub:        &HubOptions{},
		OnChange: func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		},
		Log:   slog.New(slog.DiscardHandler),
		Retry: Retry{Base: time.Millisecond, Max: 10 * time.Millisecond, Permanent: time.Hour, Assign: time.Second},
	})
	e.openTPM = func() (tpmDevice, error) { return r.tpm, nil }
	e.hub.client = r.hub
	if r.tweak != nil {
		r.tweak(e)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var result error
	stopped := false
	stop := func() error {
		if !stopped {
			cancel()
			result, stopped = <-done, true
		}
		return result
	}
	t.Cleanup(func() { _ = stop() })
	return &running{Engine: e, changed: changed, stop: stop}
}

// until waits for cond on the engine's status, looking at each change.
func (e *running) until(t *testing.T, what string, cond func(apitype.Status) bool) apitype.Status {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if s := e.Status(); cond(s) {
			return s
		}
		select {
		case <-e.changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; status %+v", what, e.Status())
		}
	}
}

func isProvisioned(s apitype.Status) bool {
	return s.State == apitype.PhaseProvisioned && s.Hub.Result == apitype.HubOK
}

// TestEngineRestarts: a first boot registers and proves the identity with
// the hub once; a warm start uses the recorded identity and acceptance and
// asks neither DPS nor the hub; a clear while stopped registers again.
func TestEngineRestarts(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	e.until(t, "first boot provisioned", isProvisioned)
	if err := e.stop(); err != nil {
		t.Fatalf("Run after a cancel = %v, want nil", err)
	}
	if c, a := r.dps.counts(); c != 1 || a != 1 || r.hub.count() != 1 {
		t.Fatalf("first boot: %d challenges, %d assignments, %d hub checks; want 1 each", c, a, r.hub.count())
	}

	e = r.start(t)
	s := e.until(t, "warm start provisioned", isProvisioned)
	if _, err := e.Token(context.Background(), time.Hour); err != nil {
		t.Errorf("Token after a warm start: %v", err)
	}
	_ = e.stop()
	if c, _ := r.dps.counts(); c != 1 || r.hub.count() != 1 || s.Reason != apitype.ReasonFirstBoot {
		t.Fatalf("warm start: %d challenges, %d hub checks, reason %q; want 1, 1, first-boot", c, r.hub.count(), s.Reason)
	}

	r.tpm.clear()
	e = r.start(t)
	s = e.until(t, "provisioned after the clear", func(s apitype.Status) bool {
		return isProvisioned(s) && s.Reason == apitype.ReasonTPMCleared
	})
	if c, _ := r.dps.counts(); c != 2 || r.hub.count() != 2 {
		t.Errorf("after a clear: %d challenges, %d hub checks; want 2, 2", c, r.hub.count())
	}
}

// TestEngineHubRejectionGatedOnce: a hub that refuses every key earns one
// registration, then the engine fails slowly instead of hammering DPS.
func TestEngineHubRejectionGatedOnce(t *testing.T) {
	r := newRig(t)
	r.hub.err = hub.ErrRejected
	e := r.start(t)
	s := e.until(t, "the engine to give up slowly", func(s apitype.Status) bool {
		return s.State == apitype.PhaseFailed && s.LastError != nil
	})
	if !strings.Contains(*s.LastError, "still refuses") {
		t.Errorf("lastError %q, want it to say the hub still refuses", *s.LastError)
	}
	if c, a := r.dps.counts(); c != 2 || a != 2 {
		t.Errorf("%d challenges, %d assignments; want 2 (first boot, the rejection)", c, a)
	}
}

// TestEngineRequest: a technician's request registers again at once, and
// survives in the record until it is served.
func TestEngineRequest(t *testing.T) {
	r := newRig(t)
	e := r.start(t)
	e.until(t, "provisioned", isProvisioned)
	r.dps.mu.Lock()
	r.dps.err = errors.New("DPS is down")
	r.dps.mu.Unlock()
	e.Reprovision(apitype.ReasonRequested)
	e.until(t, "the request to fail", func(s apitype.Status) bool { return s.State == apitype.PhaseFailed })
	_ = e.stop()
	rec, _, err := (&state.Store{Dir: r.cfg.State.Dir}).Load()
	if err != nil || rec.PendingReason != apitype.ReasonRequested {
		t.Fatalf("pending reason %q (%v), want requested", rec.PendingReason, err)
	}

	r.dps.mu.Lock()
	r.dps.err = nil
	r.dps.mu.Unlock()
	e = r.start(t)
	e.until(t, "the request served after a restart", func(s apitype.Status) bool {
		return isProvisioned(s) && s.Reason == apitype.ReasonRequested
	})
}

func TestRunReportsHowItEnded(t *testing.T) {
	if err := New(Options{Config: config.Default()}).Run(context.Background()); !errors.Is(err, errIncomplete) {
		t.Errorf("Run without a Store or DPS = %v, want errIncomplete", err)
	}
	e := newRig(t).start(t)
	e.until(t, "provisioned", isProvisioned)
	if err := e.stop(); err != nil {
		t.Errorf("Run stopped by its context = %v, want nil", err)
	}
}

// fullDisk is a state directory that refuses to stage an identity key
// while full is set.
type fullDisk struct {
	recordFiles
	full atomic.Bool
}

func (d *fullDisk) StageIdentity(key []byte) error {
	if d.full.Load() {
		return errors.New("no space left on device")
	}
	return d.recordFiles.StageIdentity(key)
}

// TestEngineKeepsAnUnsavedIdentity: an assigned key the disk refuses is
// used from memory and saved as soon as the disk takes it, without asking
// DPS again; the status then stops saying it is in memory only.
func TestEngineKeepsAnUnsavedIdentity(t *testing.T) {
	r := newRig(t)
	disk := &fullDisk{}
	disk.full.Store(true)
	r.tweak = func(e *Engine) { disk.recordFiles = e.rec.store; e.rec.store = disk }
	e := r.start(t)
	e.until(t, "the identity in use from memory", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.LastError != nil && strings.Contains(*s.LastError, "memory only")
	})
	if _, err := e.Token(context.Background(), time.Hour); err != nil {
		t.Errorf("Token with the identity in memory: %v", err)
	}
	disk.full.Store(false)
	e.until(t, "the identity saved, the error gone", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.LastError == nil
	})
	if _, err := (&state.Store{Dir: r.cfg.State.Dir}).LoadIdentity(); err != nil {
		t.Errorf("the identity on disk: %v", err)
	}
	if c, _ := r.dps.counts(); c != 1 {
		t.Errorf("%d challenges, want 1: a refused save must not register again", c)
	}
}
