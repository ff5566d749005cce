package hubemu

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener adapts a caller's net.Listener (wrapped in TLS) to the broker's
// listener interface, so that the caller owns the socket and its address.
type listener struct {
	id  string
	ln  net.Listener
	log *slog.Logger
	// closeClients stops the connections accepted here. The broker's own
	// (Clients.GetByListener) takes a read lock twice, which deadlocks
	// against a client disconnecting at the same moment.
	closeClients func(listenerID string)
	stopped      chan struct{} // closed when Serve returns
	err          error         // why Serve returned; nil after Close

	mu      sync.Mutex
	closing bool
}

var _ listeners.Listener = (*listener)(nil)

func (l *listener) ID() string              { return l.id }
func (l *listener) Address() string         { return l.ln.Addr().String() }
func (l *listener) Protocol() string        { return "mqtts" }
func (l *listener) Init(*slog.Logger) error { return nil }

// Serve accepts until the listener fails or is closed.
func (l *listener) Serve(establish listeners.EstablishFn) {
	defer close(l.stopped)
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			if !l.closing {
				l.err = err
			}
			l.mu.Unlock()
			return
		}
		go func() {
			// The broker sets no deadline before CONNECT; bound the TLS
			// handshake and CONNECT so that a silent peer cannot hold a
			// connection. The broker replaces it with the keep-alive.
			_ = conn.SetDeadline(time.Now().Add(handshakeTimeout))
			if tc, ok := conn.(*tls.Conn); ok {
				ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
				err := tc.HandshakeContext(ctx)
				cancel()
				if err != nil {
					l.log.Debug("TLS handshake failed", "remote", conn.RemoteAddr().String(), "err", err)
					_ = conn.Close()
					return
				}
			}
			if err := establish(l.id, conn); err != nil && !errors.Is(err, net.ErrClosed) {
				l.log.Debug("connection ended", "remote", conn.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// Close stops accepting and closes this listener's clients; the broker's
// callback is not used (see closeClients).
func (l *listener) Close(listeners.CloseFn) {
	l.mu.Lock()
	already := l.closing
	l.closing = true
	l.mu.Unlock()
	if !already {
		_ = l.ln.Close()
		l.closeClients(l.id)
	}
}

// minLevel is a slog handler that drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{h.Handler.WithAttrs(as), h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.Handler.WithGroup(name), h.min}
}
