package dps

import (
	"math/rand/v2"
	"time"
)

// Backoff is capped exponential backoff with full jitter, for transient
// DPS failures (§5.3): attempt n waits a random time in [0, min(Max,
// Base·2ⁿ)], so that a fleet that lost DPS at once does not return at once.
type Backoff struct {
	Base time.Duration // the cap of the first retry's wait
	Max  time.Duration // the cap of every wait
}

// Delay is the wait before retry number attempt (0 for the first retry).
// A server's Retry-After (from Error or Operation) is honoured as a floor:
// the wait is never shorter than it, even when it exceeds Max.
func (b Backoff) Delay(attempt int, retryAfter time.Duration) time.Duration {
	attempt = max(attempt, 0)
	ceiling := b.Max
	if attempt < 62 && b.Base > 0 && b.Base <= b.Max>>attempt {
		ceiling = b.Base << attempt
	}
	var d time.Duration
	if ceiling > 0 {
		d = rand.N(ceiling + 1)
	}
	return max(d, retryAfter)
}
