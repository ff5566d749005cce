package localapi

import (
	"log/slog"
	"testing"
)

func TestLimitListenerCaps(t *testing.T) {
	l := newLimitListener(nil, 3, 2, slog.New(slog.DiscardHandler))
	steps := []struct {
		uid     int
		release bool
		want    string
	}{
		{uid: 1000},
		{uid: 1000},
		{uid: 1000, want: "too many open connections from this uid"},
		{uid: 1001},
		{uid: 1002, want: "too many open connections"},
		{uid: 0}, // root is never capped
		{uid: 0},
		{uid: 1000, release: true},
		{uid: 1002},
		{uid: 1002, want: "too many open connections"},
	}
	for i, s := range steps {
		if s.release {
			l.release(s.uid)
			continue
		}
		if got := l.acquire(s.uid); got != s.want {
			t.Errorf("step %d: acquire(%d) = %q, want %q", i, s.uid, got, s.want)
		}
	}
}
