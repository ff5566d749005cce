package provision

import (
	"context"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
)

// Reprovision asks for a new registration with the given reason. The
// request is saved in the record before Reprovision returns, so that a
// power cut before the registration completes does not lose it (a restart
// resumes it); it does not wait for the registration, the status shows
// the progress. A request that cannot be saved (a full disk) is still
// carried out by this process.
func (e *Engine) Reprovision(reason apitype.Reason) {
	if reason == "" {
		reason = apitype.ReasonRequested
	}
	err := e.changeRecord(func(r *state.State) {
		r.PendingReason = string(stronger(apitype.Reason(r.PendingReason), reason))
	})
	if err != nil {
		e.log.Error("saving the registration request failed: it is carried out, but a restart before it completes forgets it",
			"reason", string(reason), "err", err)
	}
	e.request(reason)
}

// recheck wakes Run to compare the TPM with the record at once: a key that
// no longer loads means the TPM was probably cleared.
func (e *Engine) recheck() { e.request("") }

// request records r unless a stronger request is pending, and wakes Run.
func (e *Engine) request(r apitype.Reason) {
	e.mu.Lock()
	if !e.hasPending || rank(r) > rank(e.pending) {
		e.pending, e.hasPending = r, true
	}
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default: // Run is already woken; it reads pending
	}
}

// takeRequest returns and clears the pending request.
func (e *Engine) takeRequest() (apitype.Reason, bool) {
	return e.takeRequestIf(func(apitype.Reason) bool { return true })
}

// takeRequestIf returns and clears the pending request if want accepts
// it; any other request stays pending.
func (e *Engine) takeRequestIf(want func(apitype.Reason) bool) (apitype.Reason, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.hasPending || !want(e.pending) {
		return "", false
	}
	r := e.pending
	e.pending, e.hasPending = "", false
	return r, true
}

// requestPending reports whether r is the pending request, leaving it.
func (e *Engine) requestPending(r apitype.Reason) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.hasPending && e.pending == r
}

// rank orders forced reasons: a technician's request, then a hub
// rejection, then a mere re-check ("").
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

// interruptsPoll says which request abandons a registration DPS is still
// assigning: only a technician's, who wants a registration now (a stuck
// DPS or proxy must not make `dpsd reprovision` wait). Others wait for Run.
func interruptsPoll(r apitype.Reason) bool { return r == apitype.ReasonRequested }

// sleep waits d, or less when a request arrives. A mere re-check does not
// cut short a backoff after a failure: an app asking for tokens with a dead
// key must not make the daemon hammer DPS.
func (e *Engine) sleep(ctx context.Context, d time.Duration, backingOff bool) (apitype.Reason, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		// A request may have come while Run was busy (its wake-up already
		// taken by pollWait).
		if r, ok := e.takeRequest(); ok && (r != "" || !backingOff) {
			return r, true
		}
		select {
		case <-ctx.Done():
			return "", false
		case <-t.C:
			return "", false
		case <-e.wake:
		}
	}
}

// pollWait waits d between two polls of DPS. A request that interrupts the
// poll ends it with errRestartRequested; others stay pending for Run.
func (e *Engine) pollWait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		if r, ok := e.takeRequestIf(interruptsPoll); ok {
			e.log.Info("registration requested while DPS was assigning: starting over", "reason", string(r))
			return errRestartRequested
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-e.wake:
		}
	}
}
