package backoff

import (
	"testing"
	"time"
)

func TestPolicy(t *testing.T) {
	p := Policy{Base: 2 * time.Second, Max: 10 * time.Minute}
	tests := []struct {
		n    int
		want time.Duration
	}{
		{0, 2 * time.Second}, // before any failure: Base
		{1, 2 * time.Second},
		{2, 4 * time.Second},
		{5, 32 * time.Second},
		{9, 512 * time.Second},
		{10, 10 * time.Minute},      // capped
		{1000, 10 * time.Minute},    // no overflow
		{1 << 40, 10 * time.Minute}, // nor a long loop: it stops at Max
	}
	for _, tt := range tests {
		if got := p.Ceiling(tt.n); got != tt.want {
			t.Errorf("Ceiling(%d) = %v, want %v", tt.n, got, tt.want)
		}
		for range 50 {
			if got := p.Jittered(tt.n); got < tt.want/2 || got > tt.want {
				t.Fatalf("Jittered(%d) = %v, want within [%v, %v]", tt.n, got, tt.want/2, tt.want)
			}
		}
	}
	if got := (Policy{Base: time.Hour, Max: time.Minute}).Ceiling(1); got != time.Minute {
		t.Errorf("Base above Max: Ceiling(1) = %v, want Max", got)
	}
}
