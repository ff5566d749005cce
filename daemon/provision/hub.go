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
	now := e.o.Now().UTC().Truncate(time.Second)
	switch {
	case err == nil:
		e.hubVerified = id
		e.mu.Lock()
		e.hubRejections = 0
		e.mu.Unlock()
		e.update(func(s *apitype.Status) { s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "ok"} })
		e.log.Info("hub accepted the device", "hub", id.hub, "device_id", id.deviceID, "connect", took.Round(time.Millisecond).String())
		return ""
	case errors.Is(err, hub.ErrRejected):
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "rejected", Error: err.Error()}
		})
		return e.hubRejected(err)
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

// hubRejected decides whether a rejection earns a re-registration: the
// first one does; while re-registering does not help, later ones wait for
// the backoff so that a deleted device cannot make the daemon hammer DPS.
func (e *Engine) hubRejected(err error) apitype.Reason {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.hubRejections++
	if e.hubRejections == 1 || !e.o.Now().Before(e.nextHubRetry) {
		e.nextHubRetry = e.o.Now().Add(e.o.Retry.Delay(e.hubRejections, 0, false))
		e.log.Warn("hub rejected the device: registering again", "rejections", e.hubRejections, "err", err)
		return apitype.ReasonHubRejected
	}
	e.log.Warn("hub still rejects the device", "rejections", e.hubRejections, "next_registration", e.nextHubRetry.Format(time.RFC3339), "err", err)
	return ""
}

// startSession keeps one hub session per identity (stay_connected).
func (e *Engine) startSession(ctx context.Context, rec *state.State, id *identity) {
	if e.session != nil && e.session.id == id {
		return
	}
	e.stopSession()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{id: id, cancel: cancel, done: make(chan struct{})}
	e.session = s
	reported := e.reported(rec)
	go func() {
		defer close(s.done)
		handlers := hub.Handlers{
			Reprovision: func(context.Context) error { e.Reprovision(apitype.ReasonRequested); return nil },
			Status:      func() any { return e.Status() },
		}
		err := hub.Stay(sctx, e.hubConfig(id), reported, handlers, func(connected bool, err error) {
			now := e.o.Now().UTC().Truncate(time.Second)
			e.update(func(st *apitype.Status) {
				st.Hub.Connected = connected
				st.Hub.CheckedAt = &now
				if connected {
					st.Hub.Result, st.Hub.Error = "ok", ""
				} else if err != nil {
					st.Hub.Result, st.Hub.Error = "unreachable", err.Error()
				}
			})
		})
		if errors.Is(err, hub.ErrRejected) && sctx.Err() == nil {
			e.update(func(st *apitype.Status) {
				st.Hub.Result, st.Hub.Error, st.Hub.Connected = "rejected", err.Error(), false
			})
			if r := e.hubRejected(err); r != "" {
				e.Reprovision(r)
			}
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
