package testenv_test

import (
	"fmt"
	"testing"

	"github.com/dpsd-project/dpsd/internal/testenv"
)

// recorder is a testing.TB that records how a helper first ended the test
// instead of ending it.
type recorder struct {
	testing.TB
	ended string
}

func (r *recorder) Helper() {}

func (r *recorder) end(how string) {
	if r.ended == "" {
		r.ended = how
	}
}

func (r *recorder) Fatalf(format string, args ...any) { r.end("fail: " + fmt.Sprintf(format, args...)) }

func (r *recorder) Skip(args ...any) { r.end("skip: " + fmt.Sprint(args...)) }

func TestMissing(t *testing.T) {
	for _, tc := range []struct{ ci, want string }{
		{"true", "fail: CI=true and swtpm is gone"},
		{"", "skip: swtpm is gone"},
		{"false", "skip: swtpm is gone"},
	} {
		t.Run("CI="+tc.ci, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			testenv.Missing(r, "swtpm is gone")
			if r.ended != tc.want {
				t.Errorf("ended %q, want %q", r.ended, tc.want)
			}
		})
	}
}

func TestPoll(t *testing.T) {
	t.Parallel()
	calls := 0
	if !testenv.Poll(func() bool { calls++; return calls == 3 }) || calls != 3 {
		t.Errorf("Poll returned after %d calls, want true after 3", calls)
	}
}
