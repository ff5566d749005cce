// Package localapitest serves the status API from a scripted Backend on a
// temporary socket, for tests of the server, the client and the CLI.
package localapitest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/localapi"
)

// Backend is a localapi.Backend whose answers the test sets and whose calls
// it counts. It is safe for concurrent use.
type Backend struct {
	mu          sync.Mutex
	status      apitype.Status
	enroll      apitype.EnrollInfo
	enrollErr   error
	report      apitype.CheckReport
	token       apitype.Token
	tokenErr    error
	reprovision int
	lastTTL     time.Duration
	started     chan struct{}
	changes     localapi.Signal
}

var _ localapi.Backend = (*Backend)(nil)

// NewBackend returns a backend that reports st, has started, and answers
// every other call with plausible values.
func NewBackend(st apitype.Status) *Backend {
	started := make(chan struct{})
	close(started)
	return &Backend{
		started: started,
		status:  st,
		enroll:  apitype.EnrollInfo{RegistrationID: "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq", EndorsementKey: "ZmFrZSBFSw=="},
		report:  apitype.CheckReport{Checks: []apitype.Check{{Name: "config", Status: apitype.CheckPass, Detail: "valid"}}},
		token: apitype.Token{
			SAS:       "SharedAccessSignature sr=hub.example%2Fdevices%2Fdev-1&sig=c2ln&se=1893456000",
			Hub:       "hub.example",
			DeviceID:  "dev-1",
			ExpiresAt: time.Unix(1893456000, 0).UTC(),
		},
	}
}

// SetStatus changes what Status returns and tells watchers.
func (b *Backend) SetStatus(st apitype.Status) {
	b.mu.Lock()
	b.status = st
	b.mu.Unlock()
	b.changes.Notify()
}

// HoldStart makes the backend one that has not settled its start yet, as
// a daemon just started by socket activation; calling the returned
// function settles it.
func (b *Backend) HoldStart() (settle func()) {
	ch := make(chan struct{})
	b.mu.Lock()
	b.started = ch
	b.mu.Unlock()
	return sync.OnceFunc(func() { close(ch) })
}

// Started implements localapi.Backend.
func (b *Backend) Started() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.started
}

// Changed implements localapi.Backend.
func (b *Backend) Changed() <-chan struct{} { return b.changes.C() }

// SetTokenErr makes Token fail with err (nil: succeed again).
func (b *Backend) SetTokenErr(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokenErr = err
}

// SetEnrollErr makes EnrollInfo fail with err (nil: succeed again).
func (b *Backend) SetEnrollErr(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.enrollErr = err
}

// SetReport changes what Check returns.
func (b *Backend) SetReport(rep apitype.CheckReport) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.report = rep
}

// Reprovisions is how often Reprovision was called.
func (b *Backend) Reprovisions() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reprovision
}

// LastTTL is the ttl of the last Token call.
func (b *Backend) LastTTL() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastTTL
}

// Status implements localapi.Backend.
func (b *Backend) Status() apitype.Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.status
}

// EnrollInfo implements localapi.Backend.
func (b *Backend) EnrollInfo(context.Context) (apitype.EnrollInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.enroll, b.enrollErr
}

// Check implements localapi.Backend.
func (b *Backend) Check(context.Context) apitype.CheckReport {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.report
}

// Reprovision implements localapi.Backend.
func (b *Backend) Reprovision(context.Context) error {
	b.mu.Lock()
	b.reprovision++
	b.status.State = apitype.PhaseRegistering
	b.status.Reason = apitype.ReasonRequested
	b.mu.Unlock()
	b.changes.Notify()
	return nil
}

// Token implements localapi.Backend.
func (b *Backend) Token(_ context.Context, ttl time.Duration) (apitype.Token, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastTTL = ttl
	if b.tokenErr != nil {
		return apitype.Token{}, b.tokenErr
	}
	return b.token, nil
}

// Serve runs srv on a new socket in a fresh directory that every user may
// traverse, with the given mode and group, and stops it when the test ends.
// It returns the socket's path.
func Serve(t testing.TB, srv *localapi.Server, mode os.FileMode, group string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "dpsd-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	// Other uids of the test must reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "status.sock")
	ln, err := localapi.Listen(path, group, mode)
	if err != nil {
		t.Fatalf("listening: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve after cancel: %v", err)
		}
	})
	return path
}

// ExecutableForAll copies the running test binary to a directory every
// user may enter, so that the test can run it under other uids (the go
// build cache is private to root). It returns the copy's path.
func ExecutableForAll(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dpsd-exe-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, filepath.Base(exe))
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// Logger sends a server's log to the test's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter sends the server's log to the test's log.
type testWriter struct{ t testing.TB }

// Write logs p as one line.
func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
