package provision_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/daemon/provision"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// run starts an engine with retry on the fixture's TPM and stops it when
// the test ends.
func (f *fixture) run(t *testing.T, retry provision.Retry) *provision.Engine {
	t.Helper()
	e := provision.New(provision.Options{
		Config:  f.cfg,
		Store:   &state.Store{Dir: f.cfg.State.Dir},
		OpenTPM: func() (*tpmdev.Device, error) { return tpmdev.Open(f.info.Spec(), tpmtest.Logger(t)) },
		DPS:     f.client,
		Log:     tpmtest.Logger(t),
		Retry:   retry,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return e
}

func (f *fixture) faults(t *testing.T, d dpsemu.DPSFaults) {
	t.Helper()
	if err := f.emu.SetFaults(dpsemu.Faults{DPS: d}); err != nil {
		t.Fatal(err)
	}
}

// TestStuckAssignmentStartsOver: a DPS (or proxy) that answers "assigning"
// for ever fails the registration after Retry.Assign, and the next attempt
// starts over with a new challenge, instead of polling for ever.
func TestStuckAssignmentStartsOver(t *testing.T) {
	f := newFixture(t)
	forever := 1 << 30
	f.faults(t, dpsemu.DPSFaults{AssignAfterPolls: &forever})
	e := f.run(t, provision.Retry{Base: 100 * time.Millisecond, Max: time.Second, Permanent: time.Hour, Assign: 3 * time.Second})

	waitFor(t, "the registration to give up on DPS", func() bool {
		s := e.Status()
		return s.State == apitype.PhaseFailed && s.LastError != nil && strings.Contains(*s.LastError, "did not assign")
	})
	waitFor(t, "a new challenge", func() bool { return f.emu.Stats()["register_challenge"] >= 2 })

	// DPS recovers: the device provisions.
	f.faults(t, dpsemu.DPSFaults{})
	waitFor(t, "provisioned", func() bool { return e.Status().State == apitype.PhaseProvisioned })
}

// TestRequestInterruptsPolling: DPS parks the device with a Retry-After of
// years (clamped to ten minutes a poll); a technician's request must start
// a new registration at once rather than wait for the next poll.
func TestRequestInterruptsPolling(t *testing.T) {
	f := newFixture(t)
	e := f.run(t, provision.Retry{})
	waitFor(t, "provisioned", func() bool { return e.Status().State == apitype.PhaseProvisioned })

	forever := 1 << 30
	f.faults(t, dpsemu.DPSFaults{AssignAfterPolls: &forever, PollRetryAfter: 999999999})
	e.Reprovision(apitype.ReasonRequested)
	waitFor(t, "assigning", func() bool { return e.Status().State == apitype.PhaseAssigning })
	before := f.emu.Stats()["register_challenge"]

	f.faults(t, dpsemu.DPSFaults{})
	e.Reprovision(apitype.ReasonRequested)
	waitFor(t, "a new challenge", func() bool { return f.emu.Stats()["register_challenge"] > before })
	waitFor(t, "provisioned again", func() bool { return e.Status().State == apitype.PhaseProvisioned })
	if n := f.emu.Stats()["assigned"]; n != 2 {
		t.Errorf("%d assignments, want 2 (first boot, the request)", n)
	}
}
