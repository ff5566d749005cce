package provision

import (
	"context"
	"sync"
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
	err := e.rec.change(func(r *state.Record) {
		r.PendingReason = stronger(r.PendingReason, reason)
	})
	if err != nil {
		e.log.Error("saving the registration request failed: it is carried out, but a restart before it completes forgets it",
			"reason", string(reason), "err", err)
	}
	e.requests.put(reason)
}

// recheck wakes Run to compare the TPM with the record at once: a key that
// no longer loads means the TPM was probably cleared.
func (e *Engine) recheck() { e.requests.put("") }

// mailbox holds the strongest request since Run last looked: a
// technician's request outranks a hub rejection, which outranks a
// re-check (""); none is lost to a weaker one. Anyone may put; Run takes.
type mailbox struct {
	wake chan struct{} // a request is pending

	mu      sync.Mutex
	pending apitype.Reason
	has     bool
}

func newMailbox() *mailbox { return &mailbox{wake: make(chan struct{}, 1)} }

// put records r unless a stronger request is pending, and wakes Run.
func (m *mailbox) put(r apitype.Reason) {
	m.mu.Lock()
	if !m.has || rank(r) > rank(m.pending) {
		m.pending, m.has = r, true
	}
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default: // Run is already woken; it reads pending
	}
}

// takeIf returns and clears the pending request if want accepts it; any
// other request stays pending.
func (m *mailbox) takeIf(want func(apitype.Reason) bool) (apitype.Reason, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.has || !want(m.pending) {
		return "", false
	}
	r := m.pending
	m.pending, m.has = "", false
	return r, true
}

// peek returns the pending request, leaving it.
func (m *mailbox) peek() (apitype.Reason, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pending, m.has
}

// wait waits d, or less when take takes a request that ends the wait; it
// returns that request.
func (m *mailbox) wait(ctx context.Context, d time.Duration, take func() (apitype.Reason, bool)) (apitype.Reason, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		// A request may have come while Run was busy (its wake-up already
		// taken by another wait).
		if r, ok := take(); ok {
			return r, true
		}
		select {
		case <-ctx.Done():
			return "", false
		case <-t.C:
			return "", false
		case <-m.wake:
		}
	}
}

// anyRequest accepts every request.
func anyRequest(apitype.Reason) bool { return true }

// sleep is Run's wait between rounds: d, or less when a request comes. A
// re-check that does not cut the wait short (cutsWait) is dropped: the
// next round looks anyway.
func (e *Engine) sleep(ctx context.Context, d time.Duration, backingOff bool) (apitype.Reason, bool) {
	return e.requests.wait(ctx, d, func() (apitype.Reason, bool) {
		r, ok := e.requests.takeIf(anyRequest)
		return r, ok && cutsWait(r, backingOff)
	})
}

// pollWait waits d between two polls of DPS. A request that interrupts the
// poll ends it with errRestartRequested; others stay pending for Run.
func (e *Engine) pollWait(ctx context.Context, d time.Duration) error {
	if r, ok := e.requests.wait(ctx, d, func() (apitype.Reason, bool) { return e.requests.takeIf(interruptsPoll) }); ok {
		e.log.Info("registration requested while DPS was assigning: starting over", "reason", string(r))
		return errRestartRequested
	}
	return ctx.Err()
}
