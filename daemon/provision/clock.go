package provision

import (
	"context"
	"time"

	"github.com/dpsd-project/dpsd/daemon/version"
)

// now is the time tokens are dated by: the system clock once it is sane,
// else the DPS server's clock when one was seen.
func (e *Engine) now() time.Time {
	local := e.o.Now()
	if !local.Before(version.BuildTime()) {
		return local
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.serverTime.IsZero() {
		return local
	}
	return e.serverTime.Add(time.Since(e.serverTimeAt))
}

// clockTrusted reports whether now can date a token.
func (e *Engine) clockTrusted() bool {
	if !e.o.Now().Before(version.BuildTime()) {
		return true
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return !e.serverTime.IsZero()
}

// clockPoll is how often a daemon waiting for the system clock looks again.
const clockPoll = 5 * time.Second

// checkClock makes sure tokens are not signed with a clock that is
// certainly wrong: before the binary was built. The DPS server's Date then
// stands in for it until the system clock is set.
func (e *Engine) checkClock(serverDate time.Time) error {
	if !e.o.Now().Before(version.BuildTime()) {
		return nil
	}
	if serverDate.IsZero() {
		return errClockUnset
	}
	e.setServerTime(serverDate)
	e.log.Warn("system clock is before this build's date: using the DPS server's time for tokens",
		"system", e.o.Now().UTC().Format(time.RFC3339), "server", serverDate.UTC().Format(time.RFC3339))
	return nil
}

func (e *Engine) setServerTime(t time.Time) {
	e.mu.Lock()
	e.serverTime, e.serverTimeAt = t, time.Now()
	e.mu.Unlock()
}

// askServerTime takes DPS's clock when the system clock is wrong and no
// registration brings a Date: a device without a battery-backed clock that
// restarts before time sync. It is the only network request a warm start
// can make, and only then.
func (e *Engine) askServerTime(ctx context.Context) {
	if e.clockTrusted() {
		return
	}
	t, err := e.o.DPS.ServerTime(ctx)
	if err != nil {
		e.log.Warn("the system clock is wrong and DPS's clock is out of reach", "err", err)
		return
	}
	e.setServerTime(t)
	e.log.Warn("system clock is before this build's date: using the DPS server's time for tokens",
		"system", e.o.Now().UTC().Format(time.RFC3339), "server", t.UTC().Format(time.RFC3339))
}
