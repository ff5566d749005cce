// Package backoff is the one rule for waiting between failed attempts:
// capped doubling, with jitter where many devices might otherwise retry in
// step. The DPS retries, the hub reconnections and the wait for a TPM
// device all use it.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy doubles from Base up to Max.
type Policy struct {
	Base time.Duration
	Max  time.Duration
}

// Ceiling is the wait after the n-th consecutive failure (n ≥ 1): Base
// doubled n-1 times, at most Max.
func (p Policy) Ceiling(n int) time.Duration {
	d := min(p.Base, p.Max)
	for i := 1; i < n && d < p.Max; i++ {
		d *= 2
	}
	return min(d, p.Max)
}

// Jittered is a random point in the upper half of Ceiling(n), so that a
// fleet that lost a service at once does not come back at once.
func (p Policy) Jittered(n int) time.Duration {
	c := p.Ceiling(n)
	return c/2 + rand.N(c/2+1)
}
