package provision

import (
	"context"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// Reprovision asks for a new registration with the given reason. It does not
// wait; the status shows the progress.
func (e *Engine) Reprovision(reason apitype.Reason) {
	if reason == "" {
		reason = apitype.ReasonRequested
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
	e.mu.Lock()
	defer e.mu.Unlock()
	r, ok := e.pending, e.hasPending
	e.pending, e.hasPending = "", false
	return r, ok
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

// sleep waits d, or less when a request arrives. A mere re-check does not
// cut short a backoff after a failure: an app asking for tokens with a dead
// key must not make the daemon hammer DPS.
func (e *Engine) sleep(ctx context.Context, d time.Duration, backingOff bool) (apitype.Reason, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return "", false
		case <-t.C:
			return "", false
		case <-e.wake:
			r, ok := e.takeRequest()
			if !ok || (r == "" && backingOff) {
				continue
			}
			return r, true
		}
	}
}
