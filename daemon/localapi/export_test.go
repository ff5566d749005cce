package localapi

import (
	"context"
	"net/http"
	"time"
)

// RequestAs returns r as if it came on a connection from peer: the
// permissions are decided by the server's policy, as ConnContext does.
func (s *Server) RequestAs(r *http.Request, peer Peer) *http.Request {
	ci := connInfo{peer: peer, perms: s.policy.Authorize(peer)}
	return r.WithContext(context.WithValue(r.Context(), connInfoKey{}, ci))
}

// SetLimits shortens the server's limits for a test.
func (s *Server) SetLimits(maxConns, perUID int, headerTimeout time.Duration) {
	s.maxConns, s.maxConnsPerUID, s.readHeaderTimeout = maxConns, perUID, headerTimeout
}

// MaxBodyBytes is the request body limit.
const MaxBodyBytes = maxBodyBytes

// SetAfterBind runs f between bind and the socket's chown/chmod in Listen
// until the test ends.
func SetAfterBind(t interface{ Cleanup(func()) }, f func(path string)) {
	afterBind = f
	t.Cleanup(func() { afterBind = nil })
}
