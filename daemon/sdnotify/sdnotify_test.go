package sdnotify

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen binds a datagram socket standing in for systemd's NOTIFY_SOCKET.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no message from the notifier: %v", err)
	}
	return string(buf[:n])
}

func TestMessages(t *testing.T) {
	c := listen(t)
	n := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	tests := []struct {
		name string
		send func()
		want string
	}{
		{"ready", n.Ready, "READY=1"},
		{"status", func() { n.Status("registering with DPS") }, "STATUS=registering with DPS"},
		{"status newline folded", func() { n.Status("a\nb") }, "STATUS=a b"},
		{"stopping", n.Stopping, "STOPPING=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.send()
			if got := read(t, c); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestWatchdogPings(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "20000")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		New(slog.New(slog.NewTextHandler(io.Discard, nil))).Watchdog(ctx, func() bool { return true })
		close(done)
	}()
	if got := read(t, c); !strings.Contains(got, "WATCHDOG=1") {
		t.Errorf("got %q, want WATCHDOG=1", got)
	}
	cancel()
	<-done
}

func TestNoSocketIsNoop(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "")
	n := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	n.Ready()
	n.Status("x")
	// Without a watchdog request Watchdog must return at once, not block.
	n.Watchdog(context.Background(), nil)
}

func TestWatchdogStarvedWhenStuck(t *testing.T) {
	c := listen(t)
	t.Setenv("WATCHDOG_USEC", "20000")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	checked := make(chan struct{}, 100)
	go func() {
		New(slog.New(slog.NewTextHandler(io.Discard, nil))).Watchdog(ctx, func() bool {
			checked <- struct{}{}
			return false
		})
		close(done)
	}()
	for range 5 { // several intervals, none of which may ping
		<-checked
	}
	cancel()
	<-done
	if err := c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := c.Read(buf); err == nil {
		t.Errorf("a stuck daemon fed the watchdog: %q", buf[:n])
	}
}
