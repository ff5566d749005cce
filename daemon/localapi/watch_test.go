package localapi_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
)

// serveWatched serves b on a socket for this process and returns a client
// and a function that stops the server.
func serveWatched(t *testing.T, b *localapitest.Backend) (*client.Client, string, func()) {
	t.Helper()
	path := t.TempDir() + "/status.sock"
	ln, err := localapi.Listen(path, "", 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- localapi.New(b, localapi.Options{Log: localapitest.Logger(t)}).Serve(ctx, ln) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	return client.New(path, "dpsd"), path, stop
}

// TestWatch: the current status first, then one line per change (a moving
// TPM command count alone is no change), and the stream ends when the
// daemon stops.
func TestWatch(t *testing.T) {
	t.Parallel()
	b := localapitest.NewBackend(apitype.Status{State: apitype.PhaseRegistering})
	c, _, stop := serveWatched(t, b)

	steps := []struct {
		set  func()
		want apitype.Phase // the next line's state
	}{
		{func() {}, apitype.PhaseRegistering},
		{func() {
			b.SetStatus(apitype.Status{State: apitype.PhaseRegistering, TPM: apitype.TPMStatus{Commands: 7}})
			b.SetStatus(apitype.Status{State: apitype.PhaseAssigning})
		}, apitype.PhaseAssigning},
		{func() { b.SetStatus(provisionedStatus()) }, apitype.PhaseProvisioned},
	}
	seen := make(chan apitype.Status)
	ended := make(chan error, 1)
	go func() {
		ended <- c.Watch(context.Background(), func(st apitype.Status) error {
			seen <- st
			return nil
		})
	}()
	for i, s := range steps {
		s.set()
		if got := <-seen; got.State != s.want {
			t.Fatalf("step %d: watched state %s, want %s", i, got.State, s.want)
		}
	}
	stop()
	if err := <-ended; !errors.Is(err, client.ErrWatchEnded) {
		t.Errorf("watch after the daemon stopped: %v, want ErrWatchEnded", err)
	}
}

// TestSlowWatcherDoesNotBlock: a watcher that never reads does not hold up
// status changes or other watchers; it gets the latest status when it reads.
func TestSlowWatcherDoesNotBlock(t *testing.T) {
	t.Parallel()
	b := localapitest.NewBackend(apitype.Status{State: apitype.PhaseRegistering})
	c, path, _ := serveWatched(t, b)

	slow, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET /v1/watch HTTP/1.1\r\nHost: %s\r\n\r\n", apitype.SocketHost)

	// Enough changes, each big, to fill any socket buffer many times over.
	big := strings.Repeat("x", 64<<10)
	for i := range 200 {
		msg := fmt.Sprintf("attempt %d: %s", i, big)
		b.SetStatus(apitype.Status{State: apitype.PhaseFailed, LastError: &msg})
	}
	b.SetStatus(provisionedStatus())

	err = c.Watch(context.Background(), func(st apitype.Status) error {
		if st.State == apitype.PhaseProvisioned {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("a second watcher beside a stalled one: %v", err)
	}
	// The stalled watcher's first line is still readable: it was served,
	// not dropped, and its stream goes on from the latest status.
	line, err := bufio.NewReader(slow).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Errorf("stalled watcher: %q, %v", line, err)
	}
}

var errDone = errors.New("done")
