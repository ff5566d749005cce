package localapi

import (
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestLimitListenerCaps(t *testing.T) {
	t.Parallel()
	l := newLimitListener(nil, Policy{}, 3, 2, 2, newRefusalLog(slog.New(slog.DiscardHandler)))
	steps := []struct {
		uid      int
		stranger bool // no permission at all
		release  bool
		want     string
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
		// Peers without permission have their own pool: full for them,
		// and they take nothing from the others.
		{uid: 1003, stranger: true},
		{uid: 1004, stranger: true},
		{uid: 1005, stranger: true, want: "too many open connections from users without permission"},
		{uid: 1002, release: true},
		{uid: 1002},
		{uid: 1004, stranger: true, release: true},
		{uid: 1005, stranger: true},
	}
	for i, s := range steps {
		if s.release {
			l.release(s.uid, !s.stranger)
			continue
		}
		if got := l.acquire(s.uid, !s.stranger); got != s.want {
			t.Errorf("step %d: acquire(%d, permitted %v) = %q, want %q", i, s.uid, !s.stranger, got, s.want)
		}
	}
}

func TestRefusalLogRateLimit(t *testing.T) {
	t.Parallel()
	var buf lineBuffer
	l := newRefusalLog(slog.New(slog.NewTextHandler(&buf, nil)))
	now := time.Unix(1_800_000_000, 0)
	l.now = func() time.Time { return now }
	steps := []struct {
		uid     int
		advance time.Duration
		logged  bool
		dropped string // the not_logged_since_last attribute, if any
	}{
		{uid: 1000, logged: true},
		{uid: 1000},
		{uid: 1000, advance: 30 * time.Second},
		{uid: 1001, logged: true}, // another uid has its own budget
		{uid: 1000, advance: 31 * time.Second, logged: true, dropped: "2"},
		{uid: 1000},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		before := buf.Lines()
		l.warn(s.uid, "refused request", "uid", s.uid)
		after := buf.Lines()
		if got := len(after) > len(before); got != s.logged {
			t.Fatalf("step %d: logged = %v, want %v (log %q)", i, got, s.logged, after)
		}
		if s.dropped != "" {
			if last := after[len(after)-1]; !strings.Contains(last, "not_logged_since_last="+s.dropped) {
				t.Errorf("step %d: %q does not say %s lines were left out", i, last, s.dropped)
			}
		}
	}
}

// lineBuffer is a log's output split into lines.
type lineBuffer struct{ strings.Builder }

func (b *lineBuffer) Lines() []string {
	return strings.FieldsFunc(b.String(), func(r rune) bool { return r == '\n' })
}

func TestWatchSlots(t *testing.T) {
	t.Parallel()
	w := watchSlots{max: 3, maxPerUID: 2}
	var releases []func()
	steps := []struct {
		uid  int
		want string
	}{
		{uid: 1000},
		{uid: 1000},
		{uid: 1000, want: "too many open watches from this uid"},
		{uid: 0}, // root is never capped
		{uid: 1001},
		{uid: 1002, want: "too many open watches"},
	}
	for i, s := range steps {
		release, got := w.acquire(s.uid)
		if got != s.want {
			t.Errorf("step %d: acquire(%d) = %q, want %q", i, s.uid, got, s.want)
		}
		if release != nil {
			releases = append(releases, release)
		}
	}
	releases[0]()
	if _, got := w.acquire(1002); got != "" {
		t.Errorf("after a release: %q", got)
	}
}
