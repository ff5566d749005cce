package provision

import (
	"context"
	"crypto/x509"
	"errors"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
)

// HubOptions say how to reach the assigned hub.
type HubOptions struct {
	// Endpoint is HOST:PORT to dial instead of the hub ([hub]
	// endpoint_override); TLS still verifies the hub's name.
	Endpoint string
	RootCAs  *x509.CertPool
}

// checkHub proves the identity against the hub once per provisioning (a
// periodic check would knock the device's app off the hub, which allows one
// connection per device). It returns hub-rejected when the hub refuses the
// device and a re-registration should follow.
func (e *Engine) checkHub(ctx context.Context, rec *state.State) apitype.Reason {
	id := e.currentIdentity()
	if e.o.Hub == nil || id == nil {
		return ""
	}
	if e.cfg.Hub.StayConnected {
		e.startSession(ctx, rec, id)
		return ""
	}
	if !e.cfg.Hub.Verify || e.hubVerified == id {
		return ""
	}
	took, err := hub.Check(ctx, e.hubConfig(id), e.reported(rec))
	now := e.now().UTC().Truncate(time.Second)
	switch {
	case err == nil:
		e.hubVerified = id
		e.resetHubRejections()
		e.update(func(s *apitype.Status) { s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "ok"} })
		e.log.Info("hub accepted the device", "hub", id.hub, "device_id", id.deviceID, "connect", took.Round(time.Millisecond).String())
		return ""
	case errors.Is(err, hub.ErrRejected):
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "rejected", Error: err.Error()}
		})
		e.log.Warn("hub rejected the device", "hub", id.hub, "device_id", id.deviceID, "err", err)
		return apitype.ReasonHubRejected
	default:
		// Unreachable: the identity may be fine; try again at the next
		// round, never re-register for a network problem.
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "unreachable", Error: err.Error()}
		})
		e.log.Warn("hub unreachable", "hub", id.hub, "err", err)
		return ""
	}
}

// hubRetryDue decides whether a hub rejection earns a registration: the
// first one since the hub last accepted the device does; a second means
// registering did not help, and Run backs off slowly instead (a deleted
// device must not make the daemon hammer DPS).
func (e *Engine) hubRetryDue() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hubRejections++
	return e.hubRejections == 1
}

func (e *Engine) resetHubRejections() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hubRejections = 0
}

// startSession keeps one hub session per identity (stay_connected), and
// starts it again when it ended (the hub refused a token, say).
func (e *Engine) startSession(ctx context.Context, rec *state.State, id *identity) {
	if s := e.session; s != nil && s.id == id && !s.ended() {
		return
	}
	e.stopSession()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{id: id, cancel: cancel, done: make(chan struct{})}
	e.session = s
	reported := e.reported(rec)
	handlers := hub.Handlers{
		Reprovision: func(context.Context) error { e.Reprovision(apitype.ReasonRequested); return nil },
		Status:      func() any { return e.Status() },
	}
	onState := func(connected bool, err error) {
		now := e.now().UTC().Truncate(time.Second)
		if connected {
			e.resetHubRejections()
		}
		e.update(func(st *apitype.Status) {
			st.Hub.Connected = connected
			st.Hub.CheckedAt = &now
			if connected {
				st.Hub.Result, st.Hub.Error = "ok", ""
			} else if err != nil {
				st.Hub.Result, st.Hub.Error = "unreachable", err.Error()
			}
		})
	}
	go func() {
		defer close(s.done)
		err := hub.Stay(sctx, e.hubConfig(id), reported, handlers, onState)
		if sctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, hub.ErrRejected):
			e.update(func(st *apitype.Status) {
				st.Hub.Result, st.Hub.Error, st.Hub.Connected = "rejected", err.Error(), false
			})
			e.log.Warn("hub rejected the device", "hub", id.hub, "device_id", id.deviceID, "err", err)
			e.Reprovision(apitype.ReasonHubRejected)
		case err != nil: // the signer has asked for a re-check if the key died
			e.log.Error("hub session ended", "err", err)
		}
	}()
}

func (e *Engine) stopSession() {
	if e.session == nil {
		return
	}
	e.session.cancel()
	<-e.session.done
	e.session = nil
}

type session struct {
	id     *identity
	cancel context.CancelFunc
	done   chan struct{}
}

func (s *session) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (e *Engine) hubConfig(id *identity) hub.Config {
	return hub.Config{
		Hub:      id.hub,
		DeviceID: id.deviceID,
		Endpoint: e.o.Hub.Endpoint,
		RootCAs:  e.o.Hub.RootCAs,
		Sign:     e.signer(e.device(), id.key),
		Now:      e.now,
		Log:      e.log,
	}
}

// reported is the twin's reported "dpsd" section: enough for an operator
// to see from the cloud how and why the device was provisioned.
func (e *Engine) reported(rec *state.State) map[string]any {
	if !e.cfg.Hub.ReportTwin {
		return nil
	}
	return map[string]any{"dpsd": map[string]any{
		"version":        version.Version,
		"provisionedAt":  rec.ProvisionedAt.Format(time.RFC3339),
		"reason":         rec.Reason,
		"registrationId": rec.RegistrationID,
		"ekDigest":       rec.EKDigest,
	}}
}
