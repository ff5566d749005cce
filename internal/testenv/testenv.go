// Package testenv is what every test package shares about its
// environment: the rule for a missing tool or privilege (skip, except under
// CI=true, where every tool is installed and the test fails instead) and
// waiting for a condition with a deadline that only bounds a broken run.
// Test code only; pure Go, so that tests of any package can use it.
package testenv

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// Buffer collects what goroutines or a process write (a log, a verb's
// output) for the test to read while they still write.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// CI reports whether the tests run under CI (CI=true), where a missing
// tool is a broken setup, not a reason to skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Missing fails the test under CI and skips it elsewhere; why says what is
// missing and how to get it.
func Missing(t testing.TB, why string) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true and %s", why)
	}
	t.Skip(why)
}

// LookPath finds the program name, or calls Missing:
// scripts/install-deps.sh test installs every program the tests run.
func LookPath(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name+" is not installed (scripts/install-deps.sh test installs it)")
	}
	return path
}

// RequireRoot calls Missing unless the process is root (CI runs as root);
// why says what needs root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "the test needs root to "+why)
	}
}

// Patience bounds every wait of the tests. It is no performance
// assertion: a loaded 2-core CI machine must never reach it, only a broken
// run does.
const Patience = 90 * time.Second

// Poll calls cond until it returns true, with a pause that grows from 1 ms
// to 100 ms between calls, and reports false when Patience ran out.
func Poll(cond func() bool) bool {
	deadline := time.Now().Add(Patience)
	pause := time.Millisecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 100*time.Millisecond)
	}
	return true
}

// WaitUntil polls cond (see Poll) and fails the test when it never holds;
// what names the condition.
func WaitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Poll(cond) {
		t.Fatalf("timed out after %v waiting for %s", Patience, what)
	}
}
