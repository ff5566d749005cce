package provision

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/daemon/x509cred"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// HubOptions say how to reach the assigned hub.
type HubOptions struct {
	// Endpoint is HOST:PORT to dial instead of the hub ([hub]
	// endpoint_override); TLS still verifies the hub's name.
	Endpoint string
	RootCAs  *x509.CertPool
}

// hubClient is the part of the hub package the engine uses; unit tests
// fake it.
type hubClient interface {
	// Check connects once as cfg's device; an error wrapping
	// hub.ErrRejected means the hub refuses the device.
	Check(ctx context.Context, cfg hub.Config, reported map[string]any) (time.Duration, error)
	// Stay keeps a session until ctx ends or the hub ends it.
	Stay(ctx context.Context, cfg hub.Config, reported map[string]any, h hub.Handlers, onState func(connected bool, err error)) error
}

// mqttHub is the real hub.
type mqttHub struct{}

func (mqttHub) Check(ctx context.Context, cfg hub.Config, reported map[string]any) (time.Duration, error) {
	return hub.Check(ctx, cfg, reported)
}

func (mqttHub) Stay(ctx context.Context, cfg hub.Config, reported map[string]any, h hub.Handlers, onState func(bool, error)) error {
	return hub.Stay(ctx, cfg, reported, h, onState)
}

// hubLink is the engine's side of the hub: the session Run keeps
// (stay_connected), one check at a time, and whether the hub has accepted
// the device since Run last asked (policy.begin counts rejections between
// acceptances).
type hubLink struct {
	client  hubClient
	checkMu sync.Mutex // one hub check at a time: Run's, or a technician's through CheckIdentity
	session *session   // Run's goroutine only
	// accepted: the hub has accepted the device since Run last took it.
	accepted atomic.Bool
}

// checkHub proves the identity against the hub as hubPlan says, and
// reports whether the hub refused it (a re-registration should follow).
func (e *Engine) checkHub(ctx context.Context) (rejected bool) {
	id := e.currentIdentity()
	acc := e.rec.get().HubAccepted
	switch hubPlan(e.o.Hub != nil, e.cfg.Hub.StayConnected, e.cfg.Hub.Verify, acc, id) {
	case hubSession:
		e.startSession(ctx, id)
	case hubRecorded:
		e.showAccepted(acc)
	case hubConnect:
		return errors.Is(e.proveWithHub(ctx, id), hub.ErrRejected)
	}
	return false
}

// keyDigest names an identity key: hex SHA-256 of its public area.
func keyDigest(k *tpmdev.WrappedKey) string { return digest(k.Public) }

// showAccepted puts a recorded acceptance in the status, unless this
// process has checked since.
func (e *Engine) showAccepted(acc *state.HubAcceptance) {
	at := acc.At
	e.update(func(s *apitype.Status) {
		if s.Hub.Result == "" {
			s.Hub = apitype.HubStatus{CheckedAt: &at, Result: apitype.HubOK}
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
	e.hub.checkMu.Lock()
	defer e.hub.checkMu.Unlock()
	cfg, err := e.hubConfig(id)
	var took time.Duration
	if err == nil {
		took, err = e.hub.client.Check(ctx, cfg, e.reported(e.rec.get()))
	}
	now := e.now().UTC().Truncate(time.Second)
	switch {
	case err == nil:
		e.hub.accepted.Store(true)
		e.update(func(s *apitype.Status) { s.Hub = apitype.HubStatus{CheckedAt: &now, Result: apitype.HubOK} })
		e.log.Info("hub accepted the device", "hub", id.hub, "device_id", id.deviceID, "connect", took.Round(time.Millisecond).String())
		e.noteHubAccepted(id)
	case errors.Is(err, hub.ErrRejected):
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: apitype.HubRejected, Error: err.Error()}
		})
		e.log.Warn("hub rejected the device", "hub", id.hub, "device_id", id.deviceID, "err", err)
		e.noteHubRejected()
	default:
		e.update(func(s *apitype.Status) {
			s.Hub = apitype.HubStatus{CheckedAt: &now, Result: apitype.HubUnreachable, Error: err.Error()}
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
	err := e.rec.changeIf(func(r *state.Record) bool {
		if hubAccepted(r.HubAccepted, id) || r.AssignedHub != id.hub || r.DeviceID != id.deviceID {
			return false
		}
		r.HubAccepted = &state.HubAcceptance{KeyDigest: keyDigest(id.key), Hub: id.hub, DeviceID: id.deviceID, At: at}
		return true
	})
	if err != nil {
		e.log.Warn("recording the hub's acceptance failed: the next start checks with the hub again", "err", err)
	}
}

// noteHubRejected forgets a recorded acceptance: the next start checks
// with the hub again.
func (e *Engine) noteHubRejected() {
	err := e.rec.changeIf(func(r *state.Record) bool {
		had := r.HubAccepted != nil
		r.HubAccepted = nil
		return had
	})
	if err != nil {
		e.log.Error("recording the hub's refusal failed", "err", err)
	}
}

// startSession keeps one hub session per identity (stay_connected), and
// starts it again when it ended (the hub refused a token, say).
func (e *Engine) startSession(ctx context.Context, id *identity) {
	if s := e.hub.session; s != nil && s.id == id && !s.ended() {
		return
	}
	e.stopSession()
	sctx, cancel := context.WithCancel(ctx)
	s := &session{id: id, cancel: cancel, done: make(chan struct{})}
	e.hub.session = s
	reported := e.reported(e.rec.get())
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
			e.hub.accepted.Store(true)
			e.noteHubAccepted(id)
		}
		e.update(func(st *apitype.Status) {
			st.Hub.Connected = connected
			st.Hub.CheckedAt = &now
			if connected {
				st.Hub.Result, st.Hub.Error = apitype.HubOK, ""
			} else if err != nil {
				st.Hub.Result, st.Hub.Error = apitype.HubUnreachable, err.Error()
			}
		})
	}
	go func() {
		defer close(s.done)
		cfg, err := e.hubConfig(id)
		if err == nil {
			err = e.hub.client.Stay(sctx, cfg, reported, handlers, onState)
		}
		if sctx.Err() != nil || e.currentIdentity() != id {
			return
		}
		switch {
		case errors.Is(err, hub.ErrRejected):
			e.update(func(st *apitype.Status) {
				st.Hub.Result, st.Hub.Error, st.Hub.Connected = apitype.HubRejected, err.Error(), false
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
	if e.hub.session == nil {
		return
	}
	e.hub.session.cancel()
	<-e.hub.session.done
	e.hub.session = nil
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

func (e *Engine) hubConfig(id *identity) (hub.Config, error) {
	cfg := hub.Config{
		Hub:      id.hub,
		DeviceID: id.deviceID,
		Endpoint: e.o.Hub.Endpoint,
		RootCAs:  e.o.Hub.RootCAs,
		Now:      e.now,
		Log:      e.log,
	}
	if id.cert == nil {
		cfg.Sign = e.signer(e.device(), id.key)
		return cfg, nil
	}
	// X.509: the TLS handshake signs with the certificate's TPM key; no
	// SAS token, an empty password.
	signer, err := e.tlsCertificate(e.device(), id.cert)
	if err != nil {
		return cfg, fmt.Errorf("using the certificate's key: %w", err)
	}
	tc, err := x509cred.TLSCertificate(id.cert.chain, signer)
	if err != nil {
		return cfg, err
	}
	cfg.Certificate = &tc
	return cfg, nil
}

// reported is the twin's reported "dpsd" section: enough for an operator
// to see from the cloud how and why the device was provisioned.
func (e *Engine) reported(rec state.Record) map[string]any {
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
