package provision

import (
	"time"

	"github.com/dpsd-project/dpsd/daemon/backoff"
)

// Retry is the policy between failed attempts. Transient failures back off
// exponentially with jitter up to Max (backoff.Policy); a server's Retry-After wins;
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
	return backoff.Policy{Base: r.Base, Max: r.Max}.Jittered(n)
}
