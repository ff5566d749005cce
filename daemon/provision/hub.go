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
	"github.com/dpsd-project/dpsd/tpmdev"
)

// HubOptions say how to reach the assigned hub.
type HubOptions struct {
	// Endpoint is HOST:PORT to dial instead of the hub ([hub]
	// endpoint_override); TLS still verifies the hub's name.
	Endpoint string
	RootCAs  *x509.CertPool
}

// checkHub proves the identity against the hub once per identity: the
// record keeps the hub's acceptance, so a restart does not connect again
// (a connection would knock the device's app off the hub, which allows one
// per device ID). A stay_connected session is the app's intent and always
// connects. checkHub returns hub-rejected when the hub refuses the device
// and a re-registration should follow.
func (e *Engine) checkHub(ctx context.Context) apitype.Reason {
	id := e.currentIdentity()
	if e.o.Hub == nil || id == nil {
		return ""
	}
	if e.cfg.Hub.StayConnected {
		e.startSession(ctx, id)
		return ""
	}
	if !e.cfg.Hub.Verify {
		return ""
	}
	if acc := e.record().HubAccepted; hubAccepted(acc, id) {
		e.showAccepted(acc)
		return ""
	}
	if errors.Is(e.proveWithHub(ctx, id), hub.ErrRejected) {
		return apitype.ReasonHubRejected
	}
	return ""
}

// hubAccepted reports whether the recorded acceptance is id's: the same
// key, hub and device ID.
func hubAccepted(acc *state.HubAcceptance, id *identity) bool {
	return acc != nil && id != nil && acc.KeyDigest == keyDigest(id.key) &&
		acc.Hub == id.hub && acc.DeviceID == id.deviceID
}

// keyDigest names an identity key: hex SHA-256 of its public area.
func keyDigest(k *tpmdev.WrappedKey) string { return digest(k.Public) }

// showAccepted puts a recorded acceptance in the status, unless this
// process has checked since.
func (e *Engine) showAccepted(acc *state.HubAcceptance) {
	at := acc.At
	e.update(func(s *apitype.Status) {
		if s.Hub.Result == "" {
			s.Hub = apitype.HubStatus{CheckedAt: &at, Result: "ok"}
		}
	})
}

// hubCheckOnRequest says whether a technician's `dpsd check` connects to
// the hub: when the config wants the credential verified and no session
// is kept (a session proves it already, and a second connection would
// knock it off).
func (e *Engine) hubCheckOnRequest() bool {
	return e.o.Hub != nil && e.cfg.Hub.Verify && !e.cfg.Hub.StayConnected
}

// proveWithHub connects to the hub as id once, and records the outcome in
// the status and the record. It returns the hub's error: one wrapping
// hub.ErrRejected when the hub refuses the device, any other when it
// cannot be reached (the identity may be fine; never a reason to
// re-register).
func (e *Engine) proveWithHub(ctx context.Context, id *identity) error {
	e.hubMu.Lock()
	defer e.hubMu.Unlock()
	took, err := hub.Check(ctx, e.hubConfig(id), e.reported(e.record()))
	now := e.now().UTC().Truncate(time.Second)
	switch {
	case err == nil:
		e.resetHubRejections()
		e.update(func(s *apitype.Status) { s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "ok"} })
		e.log.Info("hub accepted the device", "hub", id.hub, "device_id", id.deviceID, "connect", took.Round(time.Millisecond).String())
		e.noteHubAccepted(id)
	case errors.Is(err, hub.ErrRejected):
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "rejected", Error: err.Error()}
		})
		e.log.Warn("hub rejected the device", "hub", id.hub, "device_id", id.deviceID, "err", err)
		e.noteHubRejected()
	default:
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: "unreachable", Error: err.Error()}
		})
		e.log.Warn("hub unreachable", "hub", id.hub, "err", err)
	}
	return err
}

// noteHubAccepted records that the hub accepted id, unless the record says
// so already or names another identity by now. A failed save only costs
// one more hub check at the next start.
func (e *Engine) noteHubAccepted(id *identity) {
	if e.currentIdentity() != id {
		return
	}
	at := e.now().UTC().Truncate(time.Second)
	e.recMu.Lock()
	defer e.recMu.Unlock()
	if hubAccepted(e.rec.HubAccepted, id) || e.rec.AssignedHub != id.hub || e.rec.DeviceID != id.deviceID {
		return
	}
	e.rec.HubAccepted = &state.HubAcceptance{KeyDigest: keyDigest(id.key), Hub: id.hub, DeviceID: id.deviceID, At: at}
	if err := e.saveLocked(); err != nil {
		e.log.Warn("recording the hub's acceptance failed: the next start checks with the hub again", "err", err)
	}
}

// noteHubRejected forgets a recorded acceptance: the next start checks
// with the hub again.
func (e *Engine) noteHubRejected() {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	if e.rec.HubAccepted == nil {
		return
	}
	e.rec.HubAccepted = nil
	if err := e.saveLocked(); err != nil {
		e.log.Error("recording the hub's refusal failed", "err", err)
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
func (e *Engine) startSession(ctx context.Context, id *identity) {
	if s := e.session; s != nil && s.id == id && !s.ended() {
		return
	}
	e.stopSession()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{id: id, cancel: cancel, done: make(chan struct{})}
	e.session = s
	reported := e.reported(e.record())
	handlers := hub.Handlers{
		Reprovision: func(context.Context) error { e.Reprovision(apitype.ReasonRequested); return nil },
		Status:      func() any { return e.Status() },
	}
	onState := func(connected bool, err error) {
		if e.currentIdentity() != id {
			return // a session of a replaced identity says nothing about the one in use
		}
		now := e.now().UTC().Truncate(time.Second)
		if connected {
			e.resetHubRejections()
			e.noteHubAccepted(id)
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
		if sctx.Err() != nil || e.currentIdentity() != id {
			return
		}
		switch {
		case errors.Is(err, hub.ErrRejected):
			e.update(func(st *apitype.Status) {
				st.Hub.Result, st.Hub.Error, st.Hub.Connected = "rejected", err.Error(), false
			})
			e.log.Warn("hub rejected the device", "hub", id.hub, "device_id", id.deviceID, "err", err)
			e.noteHubRejected()
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
func (e *Engine) reported(rec state.State) map[string]any {
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
