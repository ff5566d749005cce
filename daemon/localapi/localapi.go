// Package localapi is the daemon's status socket: HTTP/1.1 over a Unix
// socket, JSON bodies, one routing table under /v1/. Each connection is
// authorized once from the peer's kernel credentials (SO_PEERCRED): root may
// do everything, members of the socket's group may read, the users and
// groups of [token] allow may get hub tokens. Requests that look like they
// come from a browser are refused, bodies are bounded, connections are
// capped and timed out, so that a slow or hostile local client cannot stall
// the daemon.
package localapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// ErrNotProvisioned is what Backend.Token wraps while the device has no
// hub identity yet; the API answers it with 409 and a hint to wait.
var ErrNotProvisioned = errors.New("the device is not provisioned yet")

// ErrCertificateAuth is what Backend.Token returns when the device
// authenticates to its hub with an X.509 certificate ([hub] auth =
// "x509"): there are no tokens; the API answers 409.
var ErrCertificateAuth = errors.New("this device authenticates with a certificate")

// Backend is what the socket serves; the daemon implements it.
type Backend interface {
	// Status is the daemon's current state; it must not block.
	Status() apitype.Status
	// Changed returns a channel that is closed at the next change of
	// Status (see Signal).
	Changed() <-chan struct{}
	// Started is closed once the daemon has settled its start: the TPM
	// opened (or found unusable) and the hub identity loaded (or found
	// missing). Until then EnrollInfo, Check and Token would answer for a
	// daemon that has not looked yet, so their handlers wait for it.
	Started() <-chan struct{}
	// EnrollInfo reads the EK and the registration ID for an enrollment.
	EnrollInfo(ctx context.Context) (apitype.EnrollInfo, error)
	// Check runs the diagnostics of `dpsd check`.
	Check(ctx context.Context) apitype.CheckReport
	// Reprovision forces a new registration with reason "requested".
	Reprovision(ctx context.Context) error
	// Token signs a hub SAS token valid for ttl in the TPM. Its error wraps
	// ErrNotProvisioned until the device is provisioned.
	Token(ctx context.Context, ttl time.Duration) (apitype.Token, error)
}

// Options configure a Server.
type Options struct {
	// SocketGroup is the group whose members may read ([status] group).
	SocketGroup string
	// TokenAllow lists users and "@group"s that may get tokens ([token] allow).
	TokenAllow []string
	// MaxTTL caps the lifetime of a token ([token] max_ttl); zero means
	// apitype.DefaultMaxTokenTTL.
	MaxTTL time.Duration
	// Log receives refusals (always, with uid and reason) and request traces
	// (at debug level).
	Log *slog.Logger
}

// Limits on what one client may cost the daemon. Every answer is small and
// every handler but check is quick, so these are generous for honest
// clients and short for a hostile one.
const (
	maxConns       = 64
	maxConnsPerUID = 8
	// maxStrangerConns is the pool of peers without any permission: they
	// only ever get a 403, and must not take the slots of those who may.
	maxStrangerConns  = 8
	maxHeaderBytes    = 8 << 10
	maxBodyBytes      = 4 << 10
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	// writeTimeout must outlast a check, which dials DPS and the hub.
	writeTimeout   = 150 * time.Second
	idleTimeout    = 30 * time.Second
	checkTimeout   = 120 * time.Second
	backendTimeout = 30 * time.Second
	// startWait bounds how long a request waits for the daemon to finish
	// starting. It is well inside the CLI's 30 s per call, so that the
	// caller gets the answer that says what the daemon waits for rather
	// than a deadline of its own.
	startWait     = 20 * time.Second
	shutdownGrace = 5 * time.Second
	// defaultTTL is the token lifetime when the caller names none.
	defaultTTL = time.Hour
)

// Server serves the status API for one Backend.
type Server struct {
	backend  Backend
	policy   Policy
	maxTTL   time.Duration
	log      *slog.Logger
	refusals *refusalLog
	watches  watchSlots

	// Tests shorten these.
	maxConns, maxConnsPerUID int
	readHeaderTimeout        time.Duration

	// checks admits one check at a time: each dials the network, and a
	// client looping on /v1/check must not multiply that.
	checks chan struct{}
}

// New returns a Server for b.
func New(b Backend, o Options) *Server {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	maxTTL := o.MaxTTL
	if maxTTL <= 0 {
		maxTTL = apitype.DefaultMaxTokenTTL
	}
	return &Server{
		backend:           b,
		policy:            Policy{SocketGroup: o.SocketGroup, TokenAllow: o.TokenAllow},
		maxTTL:            maxTTL,
		log:               log,
		refusals:          newRefusalLog(log),
		watches:           watchSlots{max: maxWatches, maxPerUID: maxWatchesPerUID},
		maxConns:          maxConns,
		maxConnsPerUID:    maxConnsPerUID,
		readHeaderTimeout: readHeaderTimeout,
		checks:            make(chan struct{}, 1),
	}
}

// Serve answers requests on ln until ctx is cancelled, then shuts down
// gracefully and returns nil. Any other end is an error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: s.readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ConnContext:       s.connContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() {
		errc <- srv.Serve(newLimitListener(ln, s.policy, s.maxConns, s.maxConnsPerUID, maxStrangerConns, s.refusals))
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serving the status socket: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}

// connInfo is what ConnContext decided about a connection.
type connInfo struct {
	peer  Peer
	perms Perms
}

type connInfoKey struct{}

// connContext authorizes a connection once, from the credentials read when
// it was accepted.
func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	ci := connInfo{}
	if pc, ok := c.(*peerConn); ok {
		ci.peer, ci.perms = pc.peer, pc.perms
	} else {
		ci.peer = ReadPeer(c)
		ci.perms = s.policy.Authorize(ci.peer)
	}
	return context.WithValue(ctx, connInfoKey{}, ci)
}

func connInfoFrom(ctx context.Context) connInfo {
	ci, ok := ctx.Value(connInfoKey{}).(connInfo)
	if !ok {
		return connInfo{peer: Peer{UID: -1, GID: -1, Err: errors.New("no peer credentials")}}
	}
	return ci
}
