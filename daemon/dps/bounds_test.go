package dps

import (
	"bufio"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
)

// junkHeaderBytes is what the hostile server sends: far over the client's
// limit, and far under net/http's default (10 MB), which took it whole.
const junkHeaderBytes = 4 << 20

// TestResponseHeaderBound: a server (or proxy) that answers a well-formed
// operation behind megabytes of headers is refused, and the client does
// not hold the headers in memory, over HTTP/1.1 and HTTP/2.
func TestResponseHeaderBound(t *testing.T) {
	t.Parallel()
	line := "X-Junk: " + strings.Repeat("j", 1000) + "\r\n"
	for _, tc := range []struct {
		name    string
		http2   bool
		handler http.HandlerFunc
	}{
		{"http/1.1", false, func(w http.ResponseWriter, _ *http.Request) {
			// Raw bytes from one small buffer: the server itself allocates
			// nothing that would blur the client's count.
			conn, rw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			writeJunkHeaders(rw.Writer, line)
		}},
		{"http/2", true, func(w http.ResponseWriter, _ *http.Request) {
			for i := range junkHeaderBytes / len(line) {
				w.Header().Set(fmt.Sprintf("X-Junk-%d", i), line[8:len(line)-2])
			}
			_, _ = io.WriteString(w, assigning)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewUnstartedServer(tc.handler)
			srv.EnableHTTP2 = tc.http2
			srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the client hangs up mid-answer
			srv.StartTLS()
			defer srv.Close()
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			c, err := NewClient(ClientConfig{Endpoint: srv.URL, IDScope: testScope, RootCAs: pool, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}

			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err = c.Poll(t.Context(), testRegID, testOpID, testSAS)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatalf("Poll accepted an answer with %d bytes of headers", junkHeaderBytes)
			}
			t.Logf("error: %v", err)
			if tc.http2 {
				// The server's own encoding of the headers is in the count,
				// and HTTP/2 reports only a PROTOCOL_ERROR.
				return
			}
			if !strings.Contains(err.Error(), "headers exceeded") {
				t.Errorf("error %q does not say that the headers were too large", err)
			}
			n := after.TotalAlloc - before.TotalAlloc
			t.Logf("the client allocated %d bytes", n)
			if n > junkHeaderBytes/4 {
				t.Errorf("the client allocated %d bytes for %d bytes of headers", n, junkHeaderBytes)
			}
		})
	}
}

// assigning is a well-formed answer to a poll.
const assigning = `{"operationId":"1","status":"assigning"}`

// writeJunkHeaders writes a 200 answer with junkHeaderBytes of header lines
// before a well-formed body, or as much as the client takes before it
// hangs up.
func writeJunkHeaders(w *bufio.Writer, line string) {
	if _, err := w.WriteString("HTTP/1.1 200 OK\r\n"); err != nil {
		return
	}
	for range junkHeaderBytes / len(line) {
		if _, err := w.WriteString(line); err != nil {
			return
		}
	}
	_, _ = fmt.Fprintf(w, "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(assigning), assigning)
	_ = w.Flush()
}
