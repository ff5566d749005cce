package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// perm names the permission a route needs.
type perm int

const (
	permRead perm = iota
	permToken
	permAdmin
)

func (p perm) grantedBy(ps Perms) bool {
	switch p {
	case permRead:
		return ps.Read
	case permToken:
		return ps.Token
	case permAdmin:
		return ps.Admin
	}
	return false
}

// route is one entry of the routing table.
type route struct {
	method string
	perm   perm
	serve  func(s *Server, w http.ResponseWriter, r *http.Request)
}

// routes is the whole API.
var routes = map[string]route{
	"/v1/status":      {http.MethodGet, permRead, (*Server).serveStatus},
	"/v1/enroll-info": {http.MethodGet, permRead, (*Server).serveEnrollInfo},
	"/v1/check":       {http.MethodGet, permRead, (*Server).serveCheck},
	"/v1/reprovision": {http.MethodPost, permAdmin, (*Server).serveReprovision},
	"/v1/token":       {http.MethodPost, permToken, (*Server).serveToken},
	"/v1/watch":       {http.MethodGet, permRead, (*Server).serveWatch},
}

// ServeHTTP guards, routes and authorizes every request. The peer and its
// permissions come from the connection's context (see connContext).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ci := connInfoFrom(r.Context())
	if reason := browserLike(r); reason != "" {
		s.refuse(w, r, ci, http.StatusForbidden, reason, apitype.Error{
			Error: "request refused: " + reason,
			Fix:   "talk to the socket with the dpsd command or an HTTP client sending Host: " + apitype.SocketHost,
		})
		return
	}
	rt, ok := routes[r.URL.Path]
	if !ok {
		writeJSON(w, http.StatusNotFound, apitype.Error{Error: "no such endpoint: " + r.URL.Path})
		return
	}
	if r.Method != rt.method {
		w.Header().Set("Allow", rt.method)
		writeJSON(w, http.StatusMethodNotAllowed, apitype.Error{Error: r.URL.Path + " takes " + rt.method})
		return
	}
	if !rt.perm.grantedBy(ci.perms) {
		s.refuse(w, r, ci, http.StatusForbidden, "not permitted", s.permissionError(rt.perm, ci.peer))
		return
	}
	if r.ContentLength > maxBodyBytes {
		s.refuse(w, r, ci, http.StatusRequestEntityTooLarge, "body too large", apitype.Error{
			Error: fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, maxBodyBytes),
		})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBodyBytes)
	s.log.Debug("request", "method", r.Method, "path", r.URL.Path, "uid", ci.peer.UID, "pid", ci.peer.PID)
	rt.serve(s, w, r)
}

// browserLike says why a request looks relayed from a browser or a network
// forwarder, or "" when it looks like a local client's.
func browserLike(r *http.Request) string {
	switch {
	case r.Header.Get("Origin") != "":
		return "Origin header present"
	case r.Header.Get("Referer") != "":
		return "Referer header present"
	case r.Header.Get("Sec-Fetch-Site") != "" || r.Header.Get("Sec-Fetch-Mode") != "":
		return "Sec-Fetch header present"
	case r.Host != apitype.SocketHost:
		return fmt.Sprintf("foreign Host %q", r.Host)
	}
	return ""
}

// permissionError tells a refused caller what would let it in.
func (s *Server) permissionError(p perm, peer Peer) apitype.Error {
	who := "uid " + strconv.Itoa(peer.UID)
	if peer.Err != nil {
		return apitype.Error{Error: "permission denied: the caller's credentials could not be read"}
	}
	switch p {
	case permRead:
		fix := "run as root"
		if s.policy.SocketGroup != "" {
			fix += " or join group " + s.policy.SocketGroup + " (usermod -aG " + s.policy.SocketGroup + " USER, then log in again)"
		}
		return apitype.Error{Error: "permission denied: " + who + " may not read the dpsd status", Fix: fix}
	case permToken:
		return apitype.Error{
			Error: "permission denied: " + who + " may not get hub tokens",
			Fix:   "add the user or its @group to [token] allow in the dpsd config, then restart dpsd",
		}
	default:
		return apitype.Error{Error: "permission denied: only root may do this", Fix: "run it as root (sudo)"}
	}
}

// refuse answers a refused request and logs it with the caller and reason.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, ci connInfo, code int, reason string, body apitype.Error) {
	args := []any{"method", r.Method, "path", r.URL.Path, "uid", ci.peer.UID, "pid", ci.peer.PID, "reason", reason}
	if ci.peer.Err != nil {
		args = append(args, "err", ci.peer.Err)
	}
	s.refusals.warn(ci.peer.UID, "refused request", args...)
	if code == http.StatusRequestEntityTooLarge || ci.perms == (Perms{}) {
		// The unread body must not be drained into the connection's reuse;
		// a peer that may do nothing gets its slot back at once.
		w.Header().Set("Connection", "close")
	}
	writeJSON(w, code, body)
}

// serveStatus answers once the daemon has left "starting", so that the
// first call (the one that started a socket-activated daemon) gets the
// state the daemon found rather than "starting"; if that takes longer than
// startWait, "starting" is the truth and is answered.
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), startWait)
	defer cancel()
	for {
		changed := s.backend.Changed()
		st := s.backend.Status()
		if st.State != apitype.PhaseStarting {
			writeJSON(w, http.StatusOK, st)
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			writeJSON(w, http.StatusOK, st)
			return
		}
	}
}

// awaitStart waits until the backend has settled its start (see
// Backend.Started), for at most startWait. When that ends first it
// answers 503 and returns false.
func (s *Server) awaitStart(ctx context.Context, w http.ResponseWriter) bool {
	ctx, cancel := context.WithTimeout(ctx, startWait)
	defer cancel()
	select {
	case <-s.backend.Started():
		return true
	case <-ctx.Done():
	}
	writeJSON(w, http.StatusServiceUnavailable, apitype.Error{
		Error: fmt.Sprintf("dpsd is still starting (state %s)", s.backend.Status().State),
		Fix:   "retry in a moment; dpsd status says what it waits for",
	})
	return false
}

func (s *Server) serveEnrollInfo(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	if !s.awaitStart(ctx, w) {
		return
	}
	info, err := s.backend.EnrollInfo(ctx)
	if err != nil {
		s.log.Warn("enroll-info failed", "err", err)
		writeJSON(w, http.StatusInternalServerError, apitype.Error{
			Error: "reading the enrollment information: " + err.Error(),
			Fix:   "see dpsd check and the journal (journalctl -u dpsd)",
		})
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (s *Server) serveCheck(w http.ResponseWriter, r *http.Request) {
	// One check at a time, refused at once rather than queued: a queued
	// check would start with little of its time left and report network
	// probes as failed that only ran out of time.
	select {
	case s.checks <- struct{}{}:
		defer func() { <-s.checks }()
	default:
		writeJSON(w, http.StatusServiceUnavailable, apitype.Error{Error: "another check is running", Fix: "retry in a minute"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
	defer cancel()
	if !s.awaitStart(ctx, w) {
		return
	}
	writeJSON(w, http.StatusOK, s.backend.Check(ctx))
}

func (s *Server) serveReprovision(w http.ResponseWriter, r *http.Request) {
	ci := connInfoFrom(r.Context())
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	if err := s.backend.Reprovision(ctx); err != nil {
		s.log.Warn("reprovision request failed", "uid", ci.peer.UID, "err", err)
		writeJSON(w, http.StatusInternalServerError, apitype.Error{
			Error: "requesting a new registration: " + err.Error(),
			Fix:   "see dpsd status and the journal (journalctl -u dpsd)",
		})
		return
	}
	s.log.Info("reprovision requested", "uid", ci.peer.UID, "pid", ci.peer.PID)
	writeJSON(w, http.StatusAccepted, s.backend.Status())
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	ci := connInfoFrom(r.Context())
	ttl, apiErr := s.parseTTL(r.URL.Query().Get("ttl"))
	if apiErr != nil {
		writeJSON(w, http.StatusBadRequest, apiErr)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), backendTimeout)
	defer cancel()
	if !s.awaitStart(ctx, w) {
		return
	}
	tok, err := s.backend.Token(ctx, ttl)
	switch {
	case errors.Is(err, ErrCertificateAuth):
		writeJSON(w, http.StatusConflict, apitype.Error{
			Error: ErrCertificateAuth.Error() + ": there are no SAS tokens",
			Fix:   "apps connect with the device's certificate (identity.crt in the state directory) instead",
		})
		return
	case errors.Is(err, ErrNotProvisioned):
		writeJSON(w, http.StatusConflict, apitype.Error{
			Error: notProvisionedText(err, s.backend.Status().State),
			Fix:   "wait until the device is provisioned (dpsd wait), then ask again",
		})
		return
	case err != nil:
		s.log.Warn("token failed", "uid", ci.peer.UID, "err", err)
		writeJSON(w, http.StatusInternalServerError, apitype.Error{
			Error: "signing a hub token: " + err.Error(),
			Fix:   "see dpsd status and dpsd check",
		})
		return
	}
	// The token itself is a secret: the log says who got one, never what.
	s.log.Info("token issued", "uid", ci.peer.UID, "pid", ci.peer.PID, "ttl", ttl, "deviceId", tok.DeviceID)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, tok)
}

// parseTTL reads the ttl query parameter: a Go duration ("1h30m") or whole
// seconds; empty means the default, capped at the maximum.
func (s *Server) parseTTL(v string) (time.Duration, *apitype.Error) {
	if v == "" {
		return min(defaultTTL, s.maxTTL), nil
	}
	ttl, err := time.ParseDuration(v)
	if err != nil {
		secs, serr := strconv.ParseInt(v, 10, 64)
		if serr != nil || secs > int64(s.maxTTL/time.Second)+1 {
			return 0, &apitype.Error{Error: fmt.Sprintf("bad ttl %q", v), Fix: "give a duration such as 1h or 90m"}
		}
		ttl = time.Duration(secs) * time.Second
	}
	if ttl <= 0 {
		return 0, &apitype.Error{Error: fmt.Sprintf("ttl %s is not positive", ttl), Fix: "give a duration such as 1h or 90m"}
	}
	if ttl > s.maxTTL {
		return 0, &apitype.Error{
			Error: fmt.Sprintf("ttl %s is over the maximum of %s", ttl, s.maxTTL),
			Fix:   fmt.Sprintf("ask for at most %s, or raise [token] max_ttl", s.maxTTL),
		}
	}
	return ttl, nil
}

// writeJSON sends v as the whole answer.
func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		code = http.StatusInternalServerError
		b = []byte(`{"error":"encoding the answer failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// notProvisionedText is a token refusal in the backend's words; the bare
// sentinel gains the state, which says what the device is doing instead.
func notProvisionedText(err error, state apitype.Phase) string {
	if err.Error() == ErrNotProvisioned.Error() {
		return fmt.Sprintf("%s (state %s)", ErrNotProvisioned, state)
	}
	return err.Error()
}
