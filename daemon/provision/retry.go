package provision

import (
	"math/rand/v2"
	"time"
)

// Retry is the policy between failed attempts. Transient failures back off
// exponentially with full jitter up to Max; a server's Retry-After wins;
// permanent failures wait Permanent.
type Retry struct {
	Base      time.Duration
	Max       time.Duration
	Permanent time.Duration
	// Assign bounds the polling of one registration: a DPS or proxy that
	// answers "assigning" for longer fails the attempt, which then starts
	// over after the usual backoff.
	Assign time.Duration
}

// DefaultRetry is what the daemon uses: quick first retries for a network
// that comes up late, ten minutes at most, and half an hour after a
// permanent answer (an operator has to act; polling faster helps nobody).
// DPS assigns in seconds; a quarter of an hour of "assigning" means the
// operation is lost.
var DefaultRetry = Retry{Base: 2 * time.Second, Max: 10 * time.Minute, Permanent: 30 * time.Minute, Assign: 15 * time.Minute}

// Delay is the wait before attempt n+1 after the n-th consecutive failure
// (n ≥ 1).
func (r Retry) Delay(n int, retryAfter time.Duration, perm bool) time.Duration {
	if perm {
		return r.Permanent
	}
	if retryAfter > 0 {
		return min(retryAfter, r.Max)
	}
	ceiling := r.Base
	for i := 1; i < n && ceiling < r.Max; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, r.Max)
	// Full jitter: a fleet that lost DPS at once must not come back at once.
	return ceiling/2 + rand.N(ceiling/2+1)
}
