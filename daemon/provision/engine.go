// Package provision is the daemon's phase machine: it brings the TPM into
// shape (EK, ownership, SRK), provisions the device with DPS, keeps the hub
// identity, and provisions again when the TPM is cleared, the provisioning
// config changes, the hub rejects the device or a technician asks.
//
// Run's goroutine drives the device: each round it asks the policy
// (policy.go: pure functions, tested without a TPM) what to do, carries it
// out and reports the outcome back. Everything others touch is an owned
// part with its own lock: the status (status.go), the record (record.go),
// the identity in use (identity.go), the requests that wake Run
// (requests.go), the hub link (hub.go), the clock (clock.go) and the TPM
// (tpm.go). The TPM, DPS and the hub are reached through narrow
// interfaces (tpmDevice, DPS, hubClient) that unit tests fake.
package provision

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// Options wire an Engine. Config, Store, OpenTPM, DPS and Log are required.
type Options struct {
	Config *config.Config
	Store  *state.Store
	// OpenTPM opens the configured TPM; the engine retries until it works
	// (the device may appear late).
	OpenTPM func() (*tpmdev.Device, error)
	DPS     DPS
	// DPSWithCSR is DPS sending csr (DER PKCS #10) with the registration,
	// for [hub] auth = "x509" (*dps.Client.WithCSR); required then.
	DPSWithCSR func(csr []byte) DPS
	// Hub says how to reach the assigned hub; nil never connects to it.
	Hub *HubOptions
	// OnPhase is called on every phase change with words for a technician
	// (systemd STATUS=); may be nil.
	OnPhase func(text string)
	// OnReady is called once, when the daemon is up (see Engine.ready);
	// may be nil.
	OnReady func()
	// OnChange is called after every update of the status, outside the
	// engine's locks, so that watchers of the status API see changes at
	// once; may be nil. It must not block.
	OnChange func()
	Log      *slog.Logger
	Retry    Retry
	// Now is the wall clock; tests may move it.
	Now func() time.Time
}

// Engine is the phase machine. Create it with New and start it with Run.
type Engine struct {
	o   Options
	cfg *config.Config
	log *slog.Logger
	// openTPM opens the TPM as the engine uses it (Options.OpenTPM).
	openTPM func() (tpmDevice, error)

	status    *board
	requests  *mailbox
	clock     *clock
	rec       *ledger
	ids       idSlot
	tpm       tpmSlot
	hub       hubLink
	readyOnce sync.Once
}

// New returns an Engine in state "starting".
func New(o Options) *Engine {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Retry == (Retry{}) {
		o.Retry = DefaultRetry
	}
	if o.Retry.Assign <= 0 {
		o.Retry.Assign = DefaultRetry.Assign
	}
	e := &Engine{
		o:        o,
		cfg:      o.Config,
		log:      o.Log,
		status:   &board{log: o.Log, onChange: o.OnChange, onPhase: o.OnPhase},
		requests: newMailbox(),
		clock:    &clock{system: o.Now},
		rec:      &ledger{store: o.Store},
		hub:      hubLink{client: mqttHub{}},
	}
	e.openTPM = func() (tpmDevice, error) {
		dev, err := o.OpenTPM()
		if err != nil {
			return nil, err
		}
		return device{dev}, nil
	}
	e.status.s = apitype.Status{State: apitype.PhaseStarting, Version: version.Version}
	if o.Config != nil {
		e.status.s.IDScope = o.Config.Provisioning.IDScope
		e.status.s.Credential = e.credentialStatus(nil)
	}
	return e
}

// errIncomplete: Options lack a part the engine cannot run without.
var errIncomplete = errors.New("provision: Options need Config, Store, OpenTPM, DPS (and DPSWithCSR for x509) and Log")

// Run drives the device to provisioned and keeps it there until ctx ends.
// It never gives up because DPS is down, and returns nil when ctx ends;
// any other return is an error: the engine could not run at all.
func (e *Engine) Run(ctx context.Context) error {
	if e.cfg == nil || e.o.Store == nil || e.o.OpenTPM == nil || e.o.DPS == nil || e.log == nil ||
		(e.x509Mode() && e.o.DPSWithCSR == nil) {
		return errIncomplete
	}
	rec := e.loadRecord()
	dev, err := e.waitForTPM(ctx)
	if err != nil {
		return nil // ctx ended
	}
	defer dev.Close()
	defer e.stopSession()

	p := newPolicy(rec, e.o.Retry, e.cfg.TPM.CheckInterval)
	if p.reason != "" {
		e.log.Info("resuming a registration that did not complete", "reason", string(p.reason))
	}
	for {
		var r round
		p, r = p.begin(e.hub.accepted.Swap(false))
		o := e.carryOut(ctx, dev, r)
		if ctx.Err() != nil {
			return nil
		}
		var n next
		p, n = p.after(o)
		e.report(o, p, n)
		if n.again {
			continue
		}
		req, _ := e.sleep(ctx, n.wait, n.backingOff)
		if ctx.Err() != nil {
			return nil
		}
		if p = p.woken(req); req != "" && p.reason == req {
			e.log.Info("registration requested", "reason", string(req))
		}
	}
}

// carryOut carries out one round: it converges the device, proves the
// identity with the hub and saves an identity the disk refused before.
func (e *Engine) carryOut(ctx context.Context, dev tpmDevice, r round) outcome {
	if r.refuse != nil {
		return outcome{err: r.refuse}
	}
	err := e.converge(ctx, dev, r.reason, r.first)
	switch {
	case err != nil:
		return outcome{err: err}
	case ctx.Err() != nil:
		return outcome{err: ctx.Err()}
	case e.checkHub(ctx):
		return outcome{hubRejected: true}
	}
	unsaved, err := e.rec.saveAgain()
	o := outcome{unsaved: unsaved, saveErr: err}
	if id := e.currentIdentity(); id != nil && id.cert != nil {
		o.renewIn = max(id.cert.renewAt.Sub(e.now()), time.Nanosecond)
	}
	return o
}

// converge brings the device to provisioned. reason, when set, forces a new
// registration; first says this is the daemon's first round.
func (e *Engine) converge(ctx context.Context, dev tpmDevice, reason apitype.Reason, first bool) error {
	rec := e.rec.get()
	keys, reason, err := e.settle(ctx, dev, rec, reason, first)
	if err != nil {
		return err
	}
	// The TPM is usable and the identity proven or about to be obtained:
	// the daemon is up (READY), provisioned or not.
	e.ready()
	if err := e.ensureOwnership(ctx, dev); err != nil {
		// The identity does not depend on it: a provisioned device stays
		// provisioned, and the next round tries again.
		e.log.Error("taking ownership of the TPM failed; trying again at the next check", "err", err)
	}
	if reason == "" {
		e.askServerTime(ctx)
		if !e.clock.trusted() {
			// The identity works, but every token it signed now would be
			// dated decades ago; the hub would refuse them.
			return errClockUnset
		}
		e.setPhase(apitype.PhaseProvisioned, fmt.Sprintf("provisioned: %s on %s", rec.DeviceID, rec.AssignedHub))
		return nil
	}
	e.update(func(s *apitype.Status) { s.Reason = reason; s.Attempts++ })
	e.log.Info("registration started", "reason", string(reason))
	start := e.o.Now()
	if err := e.register(ctx, dev, keys, reason); err != nil {
		return fmt.Errorf("registering with DPS (%s): %w", reason, err)
	}
	rec = e.rec.get()
	e.log.Info("registration finished", "reason", string(reason), "hub", rec.AssignedHub,
		"device_id", rec.DeviceID, "took", e.o.Now().Sub(start).Round(time.Millisecond).String())
	e.setPhase(apitype.PhaseProvisioned, fmt.Sprintf("provisioned: %s on %s", rec.DeviceID, rec.AssignedHub))
	return nil
}

// settle sets the TPM up and decides the round's registration reason:
// the forced one, or what comparing the device with the record finds.
func (e *Engine) settle(ctx context.Context, dev tpmDevice, rec state.Record, reason apitype.Reason, first bool) (tpmKeys, apitype.Reason, error) {
	// Unless a technician asks (having enrolled a new TPM), a TPM whose EK
	// is not the recorded one is left alone.
	keys, err := e.setupTPM(ctx, dev, expectedEK(rec, reason))
	if err != nil {
		if !errors.Is(err, tpmdev.ErrUnreachable) {
			// The status must not keep stale or unread facts of a TPM that
			// answers but cannot be used.
			_, _ = e.readOwnership(ctx, dev)
		}
		return keys, "", err
	}
	fp := keys.fingerprint()
	e.update(func(s *apitype.Status) { s.TPM.EKDigest, s.TPM.SRKName = fp.ekDigest, fp.srkName })
	if rec.SRKName != "" && rec.SRKName != fp.srkName {
		// The identity died with the old SRK, whatever the reason for this
		// round: no token may be tried with it any more.
		e.ids.drop("the SRK at " + tpmhandle.SRK.String() + " changed (a TPM clear or a replaced SRK), which invalidates the key wrapped under it")
	}
	switch {
	case reason == "":
		reason, err = e.needsRegistration(ctx, dev, rec, fp)
	case first:
		// A start that resumes a registration: until DPS assigns a new key
		// the recorded one may well work (DPS may have refused the
		// request), so apps keep getting tokens meanwhile.
		if _, err := e.needsRegistration(ctx, dev, rec, fp); err != nil {
			e.log.Warn("the recorded identity does not load; registering all the same", "err", err)
		}
	}
	return keys, reason, err
}
