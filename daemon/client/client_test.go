package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/client"
)

// serve answers every request on a new socket with h.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "status.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		code     int
		body     string
		wantIs   error
		wantText string
	}{
		{"refused", 403, `{"error":"permission denied: uid 1000 may not get hub tokens","fix":"add the user to [token] allow"}`,
			client.ErrPermission, "may not get hub tokens: add the user to [token] allow"},
		{"not provisioned", 409, `{"error":"the device is not provisioned yet","fix":"dpsd wait"}`, client.ErrNotProvisioned, "not provisioned yet: dpsd wait"},
		{"not JSON", 502, "bad gateway\n", nil, "502 Bad Gateway: bad gateway"},
		{"empty error", 500, `{}`, nil, "500 Internal Server Error"},
		{"bad success body", 200, `{"sas": 5}`, nil, "decoding the answer"},
		{"too large", 200, `{"sas":"` + strings.Repeat("a", 2<<20) + `"}`, nil, "over 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := serve(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Host != "local-dpsd" {
					t.Errorf("Host %q", r.Host)
				}
				w.WriteHeader(tt.code)
				_, _ = w.Write([]byte(tt.body))
			})
			_, err := client.New(path, "dpsd").Token(context.Background(), time.Hour)
			if err == nil || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("error %v, want it to contain %q", err, tt.wantText)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %v is not %v", err, tt.wantIs)
			}
			for _, other := range []error{client.ErrPermission, client.ErrNotProvisioned, client.ErrNotRunning} {
				if other != tt.wantIs && errors.Is(err, other) {
					t.Errorf("error %v also matches %v", err, other)
				}
			}
		})
	}
}

func TestTokenQuery(t *testing.T) {
	t.Parallel()
	var (
		mu  sync.Mutex
		got []string
	)
	path := serve(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Method+" "+r.URL.RequestURI())
		_, _ = w.Write([]byte(`{"sas":"SharedAccessSignature sr=x"}`))
	})
	c := client.New(path, "dpsd")
	for _, ttl := range []time.Duration{0, 90 * time.Minute} {
		if _, err := c.Token(context.Background(), ttl); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"POST /v1/token", "POST /v1/token?ttl=1h30m0s"}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("requests %v, want %v", got, want)
	}
}

func TestDaemonDown(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// No socket file at all.
	missing := filepath.Join(dir, "missing.sock")
	// A socket file left by a crash: connect is refused.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	for _, path := range []string{missing, stale} {
		_, err := client.New(path, "dpsd").Status(context.Background())
		if !errors.Is(err, client.ErrNotRunning) || !strings.Contains(err.Error(), "systemctl status dpsd") || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v, want ErrNotRunning naming the socket and systemctl", path, err)
		}
	}
}
