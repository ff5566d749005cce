// Package provision is the daemon's phase machine: it brings the TPM into
// shape (EK, ownership, SRK), provisions the device with DPS, keeps the hub
// identity, and provisions again when the TPM is cleared, the provisioning
// config changes, the hub rejects the device or a technician asks.
//
// One goroutine (Run) owns every transition; the status API reads a copy of
// the status under a mutex and asks for work with Reprovision, which wakes
// Run (requests.go).
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
)

// Options wire an Engine. Config, Store, OpenTPM, DPS and Log are required.
type Options struct {
	Config *config.Config
	Store  *state.Store
	// OpenTPM opens the configured TPM; the engine retries until it works
	// (the device may appear late).
	OpenTPM func() (*tpmdev.Device, error)
	DPS     DPS
	// Hub says how to reach the assigned hub; nil never connects to it.
	Hub *HubOptions
	// OnPhase is called on every phase change with words for a technician
	// (systemd STATUS=); may be nil.
	OnPhase func(text string)
	// OnReady is called once, when the TPM is usable and the device's
	// identity is known to work or is being obtained; may be nil.
	OnReady func()
	// OnChange is called after every update of the status, outside the
	// engine's lock, so that watchers of the status API see changes at
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

	// wake tells Run that a request is pending (see request).
	wake chan struct{}

	mu       sync.Mutex
	status   apitype.Status
	dev      *tpmdev.Device
	identity *identity // the committed, working hub identity; nil when none
	// lostBecause says why a provisioned device has no identity (its key
	// was invalidated); "" when it never had one in this process.
	lostBecause string
	// serverTime stands in for a system clock that is certainly wrong (before
	// this build's date): the DPS server's Date, read at serverTimeAt (whose
	// monotonic reading measures the time since).
	serverTime, serverTimeAt time.Time
	ekPublic                 []byte // the EK's TPM2B_PUBLIC, once read
	readyOnce                sync.Once

	// Hub bookkeeping. session belongs to Run's goroutine; hubRejections
	// (rejections since the hub last accepted the device) is shared with
	// the session goroutine and guarded by mu; hubMu lets one hub check
	// run at a time (Run's, or a technician's through CheckIdentity).
	session       *session
	hubRejections int
	hubMu         sync.Mutex

	// recMu guards the record (record.go): rec is what state.json holds
	// or should hold, and unsavedKey the identity key it names when that
	// is not on disk yet (the disk refused it after DPS had assigned it).
	recMu      sync.Mutex
	rec        state.State
	unsavedKey []byte

	// pending is the strongest request since Run last looked (guarded by
	// mu): a technician's request outranks a hub rejection, which
	// outranks a re-check; none is lost to a weaker one.
	pending    apitype.Reason
	hasPending bool
}

// identity is what signs hub tokens: the SRK-wrapped HMAC key and where it
// is valid.
type identity struct {
	key      *tpmdev.WrappedKey
	hub      string
	deviceID string
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
		o:    o,
		cfg:  o.Config,
		log:  o.Log,
		wake: make(chan struct{}, 1),
	}
	e.status = apitype.Status{
		State:   apitype.StateStarting,
		IDScope: o.Config.Provisioning.IDScope,
		Version: version.Version,
	}
	return e
}

// Status returns a snapshot of the daemon's status.
func (e *Engine) Status() apitype.Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.status
	if e.dev != nil {
		s.TPM.Commands = e.dev.Stats().Total
	}
	return s
}

func (e *Engine) setPhase(s apitype.State, text string) {
	e.mu.Lock()
	changed := e.status.State != s
	e.status.State = s
	e.mu.Unlock()
	e.changed()
	if changed {
		e.log.Info("phase", "state", string(s), "detail", text)
	}
	if e.o.OnPhase != nil {
		e.o.OnPhase(text)
	}
}

func (e *Engine) update(f func(s *apitype.Status)) {
	e.mu.Lock()
	f(&e.status)
	e.mu.Unlock()
	e.changed()
}

func (e *Engine) changed() {
	if e.o.OnChange != nil {
		e.o.OnChange()
	}
}

// ready reports, once, that the daemon is up; the log line says what the
// start cost in TPM commands (the bench reads it).
func (e *Engine) ready() {
	e.readyOnce.Do(func() {
		n := 0
		if dev := e.device(); dev != nil {
			n = dev.Stats().Total
		}
		e.log.Info("dpsd is up", "state", string(e.Status().State), "tpm_commands", n)
		if e.o.OnReady != nil {
			e.o.OnReady()
		}
	})
}

// Run drives the device to provisioned and keeps it there until ctx ends.
// It returns nil on cancellation; it never gives up because DPS is down.
func (e *Engine) Run(ctx context.Context) error {
	rec := e.loadRecord()
	dev, err := e.waitForTPM(ctx)
	if err != nil {
		return nil // cancelled
	}
	defer dev.Close()
	defer e.stopSession()

	// reason forces a registration; it is kept until one succeeds, so a
	// technician's request survives a transient DPS failure, and the
	// record keeps it across restarts. hubGate is whether a hub rejection
	// has been allowed its registration: decided once per rejection, not
	// once per retry of it.
	reason := resumedReason(rec)
	if reason != "" {
		e.log.Info("resuming a registration that did not complete", "reason", string(reason))
	}
	hubGate := false
	failures, saveFailures := 0, 0
	for round := 0; ; round++ {
		var err error
		if reason == apitype.ReasonHubRejected && !hubGate {
			if hubGate = e.hubRetryDue(); !hubGate {
				err = errHubStillRejects
			}
		}
		if err == nil {
			err = e.converge(ctx, dev, reason, round == 0)
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errRestartRequested) {
			reason, hubGate = apitype.ReasonRequested, false
			continue
		}
		var wait time.Duration
		if err != nil {
			failures++
			wait = e.fail(err, failures)
			if errors.Is(err, errHubStillRejects) {
				// After the slow wait the next rejection earns one more
				// registration.
				reason, hubGate = "", false
				e.resetHubRejections()
			}
		} else {
			reason, hubGate, failures = "", false, 0
			if r := e.checkHub(ctx); r != "" {
				reason = r
				continue
			}
			wait = e.cfg.TPM.CheckInterval
			if e.identityUnsaved() {
				wait, saveFailures = e.saveIdentityAgain(saveFailures)
			} else {
				e.update(func(s *apitype.Status) { s.LastError = nil; s.NextAttemptAt = nil })
			}
		}
		// A failure before the TPM was usable (owned by someone else, say)
		// must not keep systemd waiting for READY until its start timeout
		// kills the service: the daemon is up and reports why it waits.
		e.ready()
		r, woken := e.sleep(ctx, wait, failures > 0)
		if ctx.Err() != nil {
			return nil
		}
		if woken && r != "" && rank(r) >= rank(reason) {
			if r != reason {
				hubGate = false
			}
			reason = r
			e.log.Info("registration requested", "reason", string(r))
		}
	}
}

// resumedReason is the registration a start must carry on with: one a
// technician asked for, or one sent to DPS, that had not completed when
// the daemon stopped.
func resumedReason(rec state.State) apitype.Reason {
	return apitype.Reason(rec.PendingReason)
}

// expectedEK is the EK digest the TPM must have for this round: the
// recorded one, except when a technician asked for a registration (after
// enrolling a replaced TPM); "" accepts any.
func expectedEK(rec state.State, reason apitype.Reason) string {
	if reason == apitype.ReasonRequested {
		return ""
	}
	return rec.EKDigest
}

// saveIdentityAgain tries again to write an identity that is in use but
// not on disk, and returns the wait before the next round with the count
// of consecutive failed saves. The device stays provisioned meanwhile.
func (e *Engine) saveIdentityAgain(failures int) (time.Duration, int) {
	err := e.saveRecord()
	if err == nil {
		e.log.Info("saved the hub identity in use")
		return e.cfg.TPM.CheckInterval, 0
	}
	failures++
	wait := min(e.o.Retry.Delay(failures, 0, false), e.cfg.TPM.CheckInterval)
	next := e.now().Add(wait).UTC().Truncate(time.Second)
	msg := "the hub identity in use is kept in memory only (a restart now would register again): " + err.Error()
	e.update(func(s *apitype.Status) { s.LastError, s.NextAttemptAt = &msg, &next })
	e.log.Error("saving the hub identity failed", "attempt", failures, "retry_in", wait.Round(time.Second).String(), "err", err)
	return wait, failures
}

// fail records a failed attempt and returns how long to wait before the
// next one.
func (e *Engine) fail(err error, n int) time.Duration {
	perm := isPermanent(err)
	wait := e.o.Retry.Delay(n, retryAfter(err), perm)
	if errors.Is(err, errClockUnset) {
		// Time sync may come any moment; look often (it costs nothing).
		wait = clockPoll
	}
	if perm && fixedOnDevice(err) {
		wait = min(wait, e.cfg.TPM.CheckInterval)
	}
	next := e.now().Add(wait).UTC().Truncate(time.Second)
	msg := err.Error()
	if a := advice(err); a != "" {
		msg += "; " + a
	}
	st := apitype.StateFailed
	switch {
	case errors.Is(err, ErrDisabled):
		st = apitype.StateDisabled
	case errors.Is(err, errClockUnset):
		st = apitype.StateWaitingForTime
	case errors.Is(err, tpmdev.ErrUnreachable):
		st = apitype.StateWaitingForTPM
	}
	e.update(func(s *apitype.Status) {
		s.LastError = &msg
		s.NextAttemptAt = &next
	})
	e.setPhase(st, fmt.Sprintf("%s: %s; next attempt %s", st, msg, next.Format(time.RFC3339)))
	e.log.Error("provisioning failed", "attempt", n, "permanent", perm, "retry_in", wait.Round(time.Second).String(), "err", err)
	return wait
}

// converge brings the device to provisioned. reason, when set, forces a new
// registration; first says this is the daemon's first round.
func (e *Engine) converge(ctx context.Context, dev *tpmdev.Device, reason apitype.Reason, first bool) error {
	rec := e.record()
	// Unless a technician asks (having enrolled a new TPM), a TPM whose EK
	// is not the recorded one is left alone.
	keys, err := e.setupTPM(ctx, dev, expectedEK(rec, reason))
	if err != nil {
		if !errors.Is(err, tpmdev.ErrUnreachable) {
			// The status must not keep stale or unread facts of a TPM that
			// answers but cannot be used.
			_, _ = e.readOwnership(ctx, dev)
		}
		return err
	}
	fp := keys.fingerprint()
	e.update(func(s *apitype.Status) {
		s.TPM.EKDigest = fp.ekDigest
		s.TPM.SRKName = fp.srkName
	})
	if rec.SRKName != "" && rec.SRKName != fp.srkName {
		// The identity died with the old SRK, whatever the reason for this
		// round: no token may be tried with it any more.
		e.dropIdentity("the SRK at 0x81000001 changed (a TPM clear or a replaced SRK), which invalidates the key wrapped under it")
	}

	switch {
	case reason == "":
		reason, err = e.needsRegistration(ctx, dev, rec, fp)
		if err != nil {
			return err
		}
	case first:
		// A start that resumes a registration: until DPS assigns a new key
		// the recorded one may well work (DPS may have refused the
		// request), so apps keep getting tokens meanwhile.
		if _, err := e.needsRegistration(ctx, dev, rec, fp); err != nil {
			e.log.Warn("the recorded identity does not load; registering all the same", "err", err)
		}
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
		if !e.clockTrusted() {
			// The identity works, but every token it signed now would be
			// dated decades ago; the hub would refuse them.
			return errClockUnset
		}
		e.setPhase(apitype.StateProvisioned, fmt.Sprintf("provisioned: %s on %s", rec.DeviceID, rec.AssignedHub))
		return nil
	}
	e.update(func(s *apitype.Status) { s.Reason = reason; s.Attempts++ })
	e.log.Info("registration started", "reason", string(reason))
	start := e.o.Now()
	if err := e.register(ctx, dev, keys, reason); err != nil {
		return fmt.Errorf("registering with DPS (%s): %w", reason, err)
	}
	rec = e.record()
	e.log.Info("registration finished", "reason", string(reason), "hub", rec.AssignedHub,
		"device_id", rec.DeviceID, "took", e.o.Now().Sub(start).Round(time.Millisecond).String())
	e.setPhase(apitype.StateProvisioned, fmt.Sprintf("provisioned: %s on %s", rec.DeviceID, rec.AssignedHub))
	return nil
}

// needsRegistration compares what the device is with what it was
// provisioned as, and proves the stored identity still loads. An empty
// reason means the device is provisioned and nothing needs doing.
func (e *Engine) needsRegistration(ctx context.Context, dev *tpmdev.Device, rec state.State, fp fingerprint) (apitype.Reason, error) {
	switch {
	case rec.RegistrationID == "":
		return apitype.ReasonFirstBoot, nil
	case rec.SRKName != fp.srkName:
		e.log.Warn("TPM cleared: the SRK changed", "recorded", rec.SRKName, "now", fp.srkName)
		return apitype.ReasonTPMCleared, nil
	case rec.ConfigFingerprint != e.cfg.ProvisioningFingerprint():
		return apitype.ReasonConfigChanged, nil
	}
	if cur := e.currentIdentity(); cur != nil {
		return "", nil // proven already in this process
	}
	raw, err := e.o.Store.LoadIdentity()
	if err != nil {
		e.log.Error("identity key unusable: registering again", "err", err)
		return apitype.ReasonFirstBoot, nil
	}
	if rec.IdentityDigest != "" && digest(raw) != rec.IdentityDigest {
		e.log.Error("the identity key on disk is not the one the record names: registering again", "file", state.IdentityFile)
		return apitype.ReasonFirstBoot, nil
	}
	key := new(tpmdev.WrappedKey)
	if err := key.UnmarshalBinary(raw); err != nil {
		e.log.Error("identity key corrupt: registering again", "err", err)
		return apitype.ReasonFirstBoot, nil
	}
	if err := dev.LoadCheck(ctx, key); err != nil {
		if errors.Is(err, tpmdev.ErrKeyInvalidated) {
			e.log.Warn("TPM cleared: the identity key no longer loads")
			e.dropIdentity(keyNoLongerLoads)
			return apitype.ReasonTPMCleared, nil
		}
		return "", fmt.Errorf("loading the identity key: %w", err)
	}
	e.setIdentity(&identity{key: key, hub: rec.AssignedHub, deviceID: rec.DeviceID})
	return "", nil
}

func (e *Engine) device() *tpmdev.Device {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.dev
}

func (e *Engine) currentIdentity() *identity {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.identity
}

func (e *Engine) setIdentity(id *identity) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.identity = id
	if id != nil {
		e.lostBecause = ""
	}
}

// dropIdentity forgets an identity whose key no longer works; Token then
// says why instead of "not provisioned yet".
func (e *Engine) dropIdentity(why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.identity = nil
	e.lostBecause = why
}
