package provision

import (
	"errors"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// This file is the re-registration policy: every rule that decides what the
// engine does next, as pure functions of what the engine has found. Run
// (engine.go) gathers the facts, asks, and carries the answer out;
// TestPolicy proves each rule without a TPM, a DPS or a hub.

// policy is Run's memory between rounds. Its methods take what happened
// and return the next policy with the decision; none has a side effect.
type policy struct {
	retry         Retry
	checkInterval time.Duration

	// reason forces a registration; it is kept until one succeeds, so a
	// technician's request survives a transient DPS failure (the record
	// keeps it across restarts).
	reason apitype.Reason
	// hubGate is whether the pending hub rejection has been allowed its
	// registration: decided once per rejection, not once per retry of it.
	hubGate bool
	// rejections counts the hub's rejections since it last accepted the
	// device.
	rejections   int
	failures     int  // consecutive failed rounds
	saveFailures int  // consecutive failed saves of the identity in use
	begun        bool // a round has begun
}

// newPolicy is the policy of a start: it carries on with a registration a
// technician asked for, or one sent to DPS, that had not completed when
// the daemon stopped.
func newPolicy(rec state.Record, retry Retry, checkInterval time.Duration) policy {
	return policy{retry: retry, checkInterval: checkInterval, reason: rec.PendingReason}
}

// round is what one round of Run does.
type round struct {
	// reason forces a registration; "" compares the TPM with the record
	// and registers only when they differ.
	reason apitype.Reason
	// first is the daemon's first round: one that resumes a registration
	// loads the recorded identity meanwhile (DPS may refuse the request,
	// and the old key may well still work).
	first bool
	// refuse, when set, skips the round: it fails with this error.
	refuse error
}

// begin decides the next round. acceptedSince says whether the hub has
// accepted the device since the last round began. A hub rejection earns a
// registration once; a second one since the hub last accepted the device
// means registering did not help, and the round fails slowly instead (a
// deleted device must not make the daemon hammer DPS).
func (p policy) begin(acceptedSince bool) (policy, round) {
	if acceptedSince {
		p.rejections = 0
	}
	r := round{reason: p.reason, first: !p.begun}
	p.begun = true
	if p.reason == apitype.ReasonHubRejected && !p.hubGate {
		p.rejections++
		if p.hubGate = p.rejections == 1; !p.hubGate {
			r.refuse = errHubStillRejects
		}
	}
	return p, r
}

// outcome is what a round found.
type outcome struct {
	err         error // the round failed
	hubRejected bool  // it succeeded, and the hub refused the identity
	// unsaved: the identity in use is not on disk (the disk refused it
	// after DPS had assigned it); saveErr is the error of saving it again.
	unsaved bool
	saveErr error
	// renewIn: the certificate in use is due for renewal in this long;
	// 0 without one.
	renewIn time.Duration
}

// next is what Run does after a round.
type next struct {
	again bool          // start the next round at once
	wait  time.Duration // else wait this long, or until a request
	// backingOff: the wait follows a failure; a mere re-check does not cut
	// it short (see cutsWait).
	backingOff bool
	state      apitype.Phase // the phase a failure shows
}

// after decides what follows a round.
func (p policy) after(o outcome) (policy, next) {
	switch {
	case errors.Is(o.err, errRestartRequested):
		p.reason, p.hubGate = apitype.ReasonRequested, false
		return p, next{again: true}
	case o.err != nil:
		p.failures++
		n := next{wait: p.failWait(o.err), backingOff: true, state: failState(o.err)}
		if errors.Is(o.err, errHubStillRejects) {
			// After the slow wait the next rejection earns one more
			// registration.
			p.reason, p.hubGate, p.rejections = "", false, 0
		}
		return p, n
	}
	p.reason, p.hubGate, p.failures = "", false, 0
	if o.hubRejected {
		p.reason = apitype.ReasonHubRejected
		return p, next{again: true}
	}
	if !o.unsaved || o.saveErr == nil {
		p.saveFailures = 0
		return p, next{wait: untilRenewal(p.checkInterval, o.renewIn)}
	}
	// The device stays provisioned; the save is tried again soon, DPS is
	// not asked again.
	p.saveFailures++
	return p, next{wait: min(p.retry.Delay(p.saveFailures, 0, false), p.checkInterval)}
}

// untilRenewal is the wait of a provisioned device: the check interval,
// or less when the certificate is due for renewal sooner (at least
// minRenewWait, so that a certificate due now costs no busy loop).
func untilRenewal(checkInterval, renewIn time.Duration) time.Duration {
	if renewIn == 0 {
		return checkInterval
	}
	return min(checkInterval, max(renewIn, minRenewWait))
}

// minRenewWait is the shortest wait before a renewal round.
const minRenewWait = time.Second

// failWait is the wait after the p.failures-th consecutive failure, err.
func (p policy) failWait(err error) time.Duration {
	perm := isPermanent(err)
	wait := p.retry.Delay(p.failures, retryAfter(err), perm)
	if errors.Is(err, errClockUnset) {
		// Time sync may come any moment; look often (it costs nothing).
		wait = clockPoll
	}
	if perm && fixedOnDevice(err) {
		wait = min(wait, p.checkInterval)
	}
	return wait
}

// failState is the phase a failure shows.
func failState(err error) apitype.Phase {
	switch {
	case errors.Is(err, ErrDisabled):
		return apitype.PhaseDisabled
	case errors.Is(err, errClockUnset):
		return apitype.PhaseWaitingForTime
	case errors.Is(err, tpmdev.ErrUnreachable):
		return apitype.PhaseWaitingForTPM
	}
	return apitype.PhaseFailed
}

// woken takes a request that came while Run waited: a reason at least as
// strong as the pending one replaces it (a new one earns its own hub
// gate); a mere re-check ("") only starts the round early.
func (p policy) woken(r apitype.Reason) policy {
	if r != "" && rank(r) >= rank(p.reason) {
		if r != p.reason {
			p.hubGate = false
		}
		p.reason = r
	}
	return p
}

// cutsWait says whether request r ends Run's wait. A mere re-check does
// not cut short a backoff after a failure: an app asking for tokens with a
// dead key must not make the daemon hammer DPS.
func cutsWait(r apitype.Reason, backingOff bool) bool { return r != "" || !backingOff }

// interruptsPoll says which request abandons a registration DPS is still
// assigning: only a technician's, who wants a registration now (a stuck
// DPS or proxy must not make `dpsd reprovision` wait). Others wait for Run.
func interruptsPoll(r apitype.Reason) bool { return r == apitype.ReasonRequested }

// rank orders forced reasons: a technician's request, then a hub
// rejection, then any other, then a mere re-check ("").
func rank(r apitype.Reason) int {
	switch r {
	case apitype.ReasonRequested:
		return 3
	case apitype.ReasonHubRejected:
		return 2
	case "":
		return 0
	}
	return 1
}

// stronger is the reason a registration asked for twice keeps.
func stronger(a, b apitype.Reason) apitype.Reason {
	if rank(b) >= rank(a) {
		return b
	}
	return a
}

// pendingAfterCommit is the record's pending reason once a registration
// has completed, given the request pending in this process: none, unless a
// technician asked again meanwhile (that request is still to be served,
// and must survive a restart). A hub rejection that came meanwhile was the
// old key's (DPS replaces it when it assigns): the new identity answers it.
func pendingAfterCommit(pending apitype.Reason, has bool) apitype.Reason {
	if has && pending == apitype.ReasonRequested {
		return pending
	}
	return ""
}

// expectedEK is the EK digest the TPM must have for this round: the
// recorded one, except when a technician asked for a registration (after
// enrolling a replaced TPM); "" accepts any.
func expectedEK(rec state.Record, reason apitype.Reason) string {
	if reason == apitype.ReasonRequested {
		return ""
	}
	return rec.EKDigest
}

// keyCheck is what trying the recorded identity key found.
type keyCheck int

const (
	keyUntried     keyCheck = iota
	keyProven               // in use in this process already
	keyLoads                // loaded in the TPM just now
	keyUnreadable           // the file is missing or unreadable
	keyNotRecorded          // the file is not the key the record names
	keyCorrupt              // the file does not decode
	keyInvalidated          // the TPM refuses it: the SRK it was wrapped under is gone
	keyLoadFailed           // the TPM could not try it (transient)
)

// tpmFacts is what a round compares: the record, the TPM as it is now and
// the config.
type tpmFacts struct {
	rec      state.Record
	srkName  string // hex name of the SRK at 0x81000001 now
	configFP string // the config's provisioning fingerprint now
	key      keyCheck
	// x509: the hub credential is a certificate; renewAt is when the one
	// in use is due for renewal (zero: none), now the time.
	x509    bool
	renewAt time.Time
	now     time.Time
}

// registrationNeeded is the reason the device must register for, "" when
// its identity works. tryKey asks for the recorded key to be tried first
// (f.key is keyUntried and nothing else decides).
func registrationNeeded(f tpmFacts) (reason apitype.Reason, tryKey bool) {
	switch {
	case f.rec.RegistrationID == "":
		return apitype.ReasonFirstBoot, false
	case f.rec.SRKName != f.srkName:
		return apitype.ReasonTPMCleared, false
	case f.rec.ConfigFingerprint != f.configFP:
		return apitype.ReasonConfigChanged, false
	}
	switch f.key {
	case keyUntried:
		return "", true
	case keyUnreadable, keyNotRecorded, keyCorrupt:
		return apitype.ReasonFirstBoot, false
	case keyInvalidated:
		return apitype.ReasonTPMCleared, false
	}
	if f.x509 && (f.key == keyProven || f.key == keyLoads) {
		if !f.renewAt.IsZero() && !f.now.Before(f.renewAt) {
			// Due, or expired while the daemon was stopped.
			return apitype.ReasonCertRenewal, false
		}
	}
	return "", false // proven, loads, or the round fails with the load error
}

// renewAt is when a certificate valid from notBefore to notAfter,
// received at issued, is renewed: at two thirds of its life, or
// renewBefore ahead of its expiry. Its life starts when it was received
// when notBefore is earlier (issuers backdate it for slow clocks), and a
// renewBefore longer than half of it renews halfway: a certificate is
// never due the moment it arrives, which would make the device register
// again and again.
func renewAt(notBefore, notAfter, issued time.Time, renewBefore time.Duration) time.Time {
	start := notBefore
	if issued.After(start) {
		start = issued
	}
	life := max(notAfter.Sub(start), 0)
	if renewBefore <= 0 {
		return notAfter.Add(-life / 3)
	}
	return notAfter.Add(-min(renewBefore, life/2))
}

// switchStep is what a start does with an identity key staged by a switch
// that a crash interrupted (identity.key.new).
type switchStep int

const (
	switchNone    switchStep = iota // nothing staged
	switchFinish                    // the record names the staged key: rename it in
	switchDiscard                   // no record names it: the old identity stays
)

// interruptedSwitch decides the fate of staged, the staged key (nil when
// none), given the record found at start.
func interruptedSwitch(rec state.Record, found bool, staged []byte) switchStep {
	if staged == nil {
		return switchNone
	}
	return stagedFate(found, rec.IdentityDigest, digest(staged))
}

// interruptedCertSwitch is interruptedSwitch for a staged certificate
// (staged false: nothing staged).
func interruptedCertSwitch(rec state.Record, found bool, files state.Certificate, staged bool) switchStep {
	if !staged {
		return switchNone
	}
	return stagedFate(found, rec.CertificateDigest, certDigest(files))
}

// stagedFate: a staged file the found record names is finished, any other
// discarded.
func stagedFate(found bool, recorded, staged string) switchStep {
	if found && recorded == staged {
		return switchFinish
	}
	return switchDiscard
}

// hubStep is how a round proves the identity against the hub.
type hubStep int

const (
	hubSkip     hubStep = iota // no hub, no identity, or verify = false
	hubSession                 // stay_connected: the kept session proves it
	hubRecorded                // the record says the hub accepted this identity: no connection
	hubConnect                 // connect once
)

// hubPlan decides hubStep. The record keeps the hub's acceptance, so a
// restart does not connect again (a connection would knock the device's
// app off the hub, which allows one per device ID). A stay_connected
// session is the app's intent and always connects.
func hubPlan(configured, stayConnected, verify bool, acc *state.HubAcceptance, id *identity) hubStep {
	switch {
	case !configured || id == nil:
		return hubSkip
	case stayConnected:
		return hubSession
	case !verify:
		return hubSkip
	case hubAccepted(acc, id):
		return hubRecorded
	}
	return hubConnect
}

// hubAccepted reports whether the recorded acceptance is id's: the same
// key, hub and device ID.
func hubAccepted(acc *state.HubAcceptance, id *identity) bool {
	return acc != nil && id != nil && acc.KeyDigest == keyDigest(id.key) &&
		acc.Hub == id.hub && acc.DeviceID == id.deviceID
}

// pollDelay is the wait before the next poll of an operation: DPS's
// Retry-After (defaultPoll without one), at most max, never beyond the
// registration's deadline, left from now. ok is false once the deadline
// has passed.
func pollDelay(retryAfter, max, left time.Duration) (wait time.Duration, ok bool) {
	if left <= 0 {
		return 0, false
	}
	wait = min(retryAfter, max)
	if wait <= 0 {
		wait = defaultPoll
	}
	return min(wait, left), true
}
