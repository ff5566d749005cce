package provision

import (
	"context"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/version"
)

// clock is the time tokens are dated by: the system clock once it is
// sane (not before this build's date), else the DPS server's clock when
// one was seen.
type clock struct {
	system func() time.Time

	mu sync.Mutex
	// server stands in for a system clock that is certainly wrong: the
	// DPS server's Date, read at serverAt (whose monotonic reading
	// measures the time since).
	server, serverAt time.Time
}

// sane reports whether the system clock can date a token by itself.
func (c *clock) sane() bool { return !c.system().Before(version.BuildTime()) }

func (c *clock) now() time.Time {
	local := c.system()
	if c.sane() {
		return local
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.server.IsZero() {
		return local
	}
	return c.server.Add(time.Since(c.serverAt))
}

// trusted reports whether now can date a token.
func (c *clock) trusted() bool {
	if c.sane() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.server.IsZero()
}

func (c *clock) setServer(t time.Time) {
	c.mu.Lock()
	c.server, c.serverAt = t, time.Now()
	c.mu.Unlock()
}

// clockPoll is how often a daemon waiting for the system clock looks again.
const clockPoll = 5 * time.Second

func (e *Engine) now() time.Time { return e.clock.now() }

// checkClock makes sure tokens are not signed with a clock that is
// certainly wrong: before the binary was built. The DPS server's Date then
// stands in for it until the system clock is set.
func (e *Engine) checkClock(serverDate time.Time) error {
	if e.clock.sane() {
		return nil
	}
	if serverDate.IsZero() {
		return errClockUnset
	}
	e.useServerTime(serverDate)
	return nil
}

// askServerTime takes DPS's clock when the system clock is wrong and no
// registration brings a Date: a device without a battery-backed clock that
// restarts before time sync. It is the only network request a warm start
// can make, and only then.
func (e *Engine) askServerTime(ctx context.Context) {
	if e.clock.trusted() {
		return
	}
	t, err := e.o.DPS.ServerTime(ctx)
	if err != nil {
		e.log.Warn("the system clock is wrong and DPS's clock is out of reach", "err", err)
		return
	}
	e.useServerTime(t)
}

func (e *Engine) useServerTime(t time.Time) {
	e.clock.setServer(t)
	e.log.Warn("system clock is before this build's date: using the DPS server's time for tokens",
		"system", e.o.Now().UTC().Format(time.RFC3339), "server", t.UTC().Format(time.RFC3339))
}
