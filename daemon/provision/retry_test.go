package provision

import (
	"testing"
	"time"
)

func TestRetryDelay(t *testing.T) {
	r := Retry{Base: 2 * time.Second, Max: 10 * time.Minute, Permanent: 30 * time.Minute}
	tests := []struct {
		name       string
		n          int
		retryAfter time.Duration
		perm       bool
		min, max   time.Duration
	}{
		{"first failure", 1, 0, false, time.Second, 2 * time.Second},
		{"doubles", 3, 0, false, 4 * time.Second, 8 * time.Second},
		{"capped", 12, 0, false, 5 * time.Minute, 10 * time.Minute},
		{"far beyond the cap", 10000, 0, false, 5 * time.Minute, 10 * time.Minute},
		{"Retry-After wins", 7, 3 * time.Second, false, 3 * time.Second, 3 * time.Second},
		{"Retry-After capped", 1, time.Hour, false, 10 * time.Minute, 10 * time.Minute},
		{"permanent", 1, 3 * time.Second, true, 30 * time.Minute, 30 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Jitter: many draws must all fall in the range.
			for range 500 {
				if d := r.Delay(tt.n, tt.retryAfter, tt.perm); d < tt.min || d > tt.max {
					t.Fatalf("Delay(%d, %v, %v) = %v, want %v..%v", tt.n, tt.retryAfter, tt.perm, d, tt.min, tt.max)
				}
			}
		})
	}
}
