package provision

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// board is the status the API reads: a copy under its own lock. Every
// change is announced (OnChange) outside the lock, every phase change
// logged and told to systemd (OnPhase).
type board struct {
	log      *slog.Logger
	onChange func()
	onPhase  func(text string)

	mu sync.Mutex
	s  apitype.Status
}

func (b *board) get() apitype.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.s
}

func (b *board) update(f func(s *apitype.Status)) {
	b.mu.Lock()
	f(&b.s)
	b.mu.Unlock()
	if b.onChange != nil {
		b.onChange()
	}
}

func (b *board) phase(st apitype.Phase, text string) {
	changed := false
	b.update(func(s *apitype.Status) { changed = s.State != st; s.State = st })
	if changed {
		b.log.Info("phase", "state", string(st), "detail", text)
	}
	if b.onPhase != nil {
		b.onPhase(text)
	}
}

// Status returns a snapshot of the daemon's status.
func (e *Engine) Status() apitype.Status {
	s := e.status.get()
	if dev := e.device(); dev != nil {
		s.TPM.Commands = dev.Stats().Total
	}
	return s
}

func (e *Engine) setPhase(s apitype.Phase, text string) { e.status.phase(s, text) }
func (e *Engine) update(f func(s *apitype.Status))      { e.status.update(f) }
func (e *Engine) showError(msg string, next *time.Time) {
	e.update(func(s *apitype.Status) { s.LastError, s.NextAttemptAt = &msg, next })
}
func (e *Engine) clearError() {
	e.update(func(s *apitype.Status) { s.LastError, s.NextAttemptAt = nil, nil })
}

// ready reports, once, that the daemon is up (READY): the TPM is usable
// and the identity proven or being obtained, or the engine waits for
// something it reports (a TPM that is absent or that a round found
// unusable). A daemon that says why it waits must not be killed by
// systemd's start timeout. The log line says what the start cost in TPM
// commands (the bench reads it).
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

// reportFailure shows the n-th consecutive failed round and when the next
// one comes.
func (e *Engine) reportFailure(err error, n int, d next) {
	nextAt := e.now().Add(d.wait).UTC().Truncate(time.Second)
	msg := err.Error()
	if a := advice(err); a != "" {
		msg += "; " + a
	}
	e.showError(msg, &nextAt)
	e.setPhase(d.state, fmt.Sprintf("%s: %s; next attempt %s", d.state, msg, nextAt.Format(time.RFC3339)))
	e.log.Error("provisioning failed", "attempt", n, "permanent", isPermanent(err), "retry_in", d.wait.Round(time.Second).String(), "err", err)
}

// reportSave shows the outcome of saving the identity in use again.
func (e *Engine) reportSave(err error, n int, d next) {
	if err == nil {
		e.log.Info("saved the hub identity in use")
		e.clearError()
		return
	}
	nextAt := e.now().Add(d.wait).UTC().Truncate(time.Second)
	e.showError("the hub identity in use is kept in memory only (a restart now would register again): "+err.Error(), &nextAt)
	e.log.Error("saving the hub identity failed", "attempt", n, "retry_in", d.wait.Round(time.Second).String(), "err", err)
}

// report shows the outcome of a round: its failure, or the identity in
// use that is not on disk, or that all is well.
func (e *Engine) report(o outcome, p policy, n next) {
	switch {
	case o.err != nil && !n.again:
		e.reportFailure(o.err, p.failures, n)
	case o.err != nil, o.hubRejected:
	case o.unsaved:
		e.reportSave(o.saveErr, p.saveFailures, n)
	default:
		e.clearError()
	}
	// A failure, even before the TPM was usable (owned by someone else,
	// say), must not keep systemd waiting for READY until its start
	// timeout kills the service: the daemon is up and reports why it
	// waits. (converge reports a working device up earlier.)
	e.ready()
}
