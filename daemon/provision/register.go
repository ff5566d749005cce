package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/sas"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// DPS is the part of the DPS client the engine uses.
type DPS interface {
	Challenge(ctx context.Context, regID string, ek, srk []byte, payload json.RawMessage) (*dps.Challenge, error)
	Register(ctx context.Context, regID string, ek, srk []byte, payload json.RawMessage, sasToken string) (*dps.Operation, error)
	Poll(ctx context.Context, regID, operationID, sasToken string) (*dps.Operation, error)
	ServerTime(ctx context.Context) (time.Time, error)
}

// registrationTokenTTL is the lifetime of the SAS used for the registration
// PUT and its polls; an hour covers the slowest assignment DPS performs.
const registrationTokenTTL = time.Hour

// defaultPoll is the wait between polls when DPS sends no Retry-After.
const defaultPoll = 2 * time.Second

// register performs one DPS registration and, on "assigned", switches the
// device to the new identity. The old identity stays in place (and keeps
// working) until DPS has assigned the device; from then on the hub knows
// only the new key, which is kept and used even when the disk refuses it.
func (e *Engine) register(ctx context.Context, dev tpmDevice, keys tpmKeys, reason apitype.Reason) error {
	regID := e.cfg.Provisioning.RegistrationID
	if regID == "" {
		regID = dps.RegistrationID(keys.ek.Public)
	}
	e.update(func(s *apitype.Status) { s.RegistrationID = regID })
	var payload json.RawMessage
	if e.cfg.Provisioning.Payload != "" {
		payload = json.RawMessage(e.cfg.Provisioning.Payload)
	}

	e.setPhase(apitype.PhaseRegistering, "registering with DPS as "+regID)
	d := e.o.DPS
	var req *certRequest
	if e.x509Mode() {
		// A fresh key for every certificate: a renewal never reuses the
		// key of the certificate it replaces.
		var err error
		if req, err = e.newCertRequest(ctx, dev, regID); err != nil {
			return err
		}
		d = e.o.DPSWithCSR(req.csr)
	}
	ch, err := d.Challenge(ctx, regID, keys.ek.Public, keys.srk.Public, payload)
	if err != nil {
		return fmt.Errorf("requesting the TPM challenge: %w", err)
	}
	if err := e.checkClock(ch.ServerDate); err != nil {
		return err
	}
	challengeKey, err := dev.Import(ctx, ch.AuthenticationKey, keys.endorsementAuth)
	if err != nil {
		return fmt.Errorf("activating the challenge: %w", err)
	}
	token, err := sas.New(ctx, sas.RegistrationResource(e.cfg.Provisioning.IDScope, regID),
		e.now().Add(registrationTokenTTL), ch.KeyName, e.signer(dev, challengeKey))
	if err != nil {
		return fmt.Errorf("signing the registration token in the TPM: %w", err)
	}
	if err := e.prepareSwitch(reason); err != nil {
		return err
	}
	op, err := d.Register(ctx, regID, keys.ek.Public, keys.srk.Public, payload, token)
	if err != nil {
		e.dropIfReplaced(err)
		return fmt.Errorf("sending the registration: %w", err)
	}
	if op, err = e.awaitAssignment(ctx, d, regID, op, token); err != nil {
		return err
	}
	rs, err := assigned(op)
	if err != nil {
		e.dropIfReplaced(err)
		return err
	}
	var cert *certificate
	if req != nil {
		// Checked before anything is replaced: the old certificate
		// stays valid at the hub, and in use.
		if cert, err = e.acceptChain(req, rs.IssuedCertificateChain, regID); err != nil {
			return err
		}
	}
	key, err := dev.Import(ctx, rs.TPM.AuthenticationKey, keys.endorsementAuth)
	if err != nil {
		e.dropReplacedIdentity(err)
		return fmt.Errorf("importing the hub identity: %w", err)
	}
	return e.commit(ctx, dev, keys, key, cert, regID, rs, reason)
}

// assigned is the registration state of DPS's final answer op, or why it
// has none. (The dps client has checked the answer: hub name, device ID,
// key.)
func assigned(op *dps.Operation) (*dps.RegistrationState, error) {
	switch op.Status {
	case dps.StatusAssigned:
	case dps.StatusDisabled:
		return nil, ErrDisabled
	case dps.StatusFailed:
		msg := "no reason given"
		if op.State != nil {
			msg = fmt.Sprintf("error %d: %s", op.State.ErrorCode, op.State.ErrorMessage)
		}
		return nil, permanent{fmt.Errorf("DPS failed the registration: %s", msg)}
	default:
		return nil, fmt.Errorf("DPS answered with the unknown status %q", op.Status)
	}
	if op.State == nil || len(op.State.TPM.AuthenticationKey) == 0 {
		return nil, dps.ErrBadAssignment
	}
	return op.State, nil
}

// awaitAssignment polls the operation until DPS has decided, within
// Retry.Assign. A technician's request cuts it short (errRestartRequested).
func (e *Engine) awaitAssignment(ctx context.Context, d DPS, regID string, op *dps.Operation, token string) (*dps.Operation, error) {
	e.setPhase(apitype.PhaseAssigning, "waiting for DPS to assign a hub")
	deadline := time.Now().Add(e.o.Retry.Assign)
	for op.Status == dps.StatusAssigning || op.Status == dps.StatusUnassigned {
		wait, ok := pollDelay(op.RetryAfter, e.o.Retry.Max, time.Until(deadline))
		if !ok {
			return nil, fmt.Errorf("%w: still %q after %s; starting over", errAssignTimeout, op.Status, e.o.Retry.Assign)
		}
		if err := e.pollWait(ctx, wait); err != nil {
			return nil, err
		}
		var err error
		if op, err = d.Poll(ctx, regID, op.ID, token); err != nil {
			e.dropIfReplaced(err)
			var de *dps.Error
			if errors.As(err, &de) && (de.HTTPStatus == http.StatusUnauthorized || de.HTTPStatus == http.StatusNotFound) {
				err = restart{err}
			}
			return nil, fmt.Errorf("polling the registration: %w", err)
		}
	}
	return op, nil
}

// prepareSwitch runs before the authenticated registration, after which
// DPS may replace the hub key at any moment: it makes sure the new key can
// be kept (the state directory takes an identity switch now), and records
// that a registration is under way, so that a restart resumes it rather
// than trust the old key, and no longer counts the old key as accepted by
// the hub.
func (e *Engine) prepareSwitch(reason apitype.Reason) error {
	if err := e.o.Store.CheckWritable(state.CommitSpace); err != nil {
		return fmt.Errorf("the state directory cannot keep a new identity, so dpsd does not ask DPS for one: %w", err)
	}
	err := e.rec.change(func(r *state.Record) {
		r.PendingReason = stronger(r.PendingReason, reason)
		r.HubAccepted = nil
	})
	if err != nil {
		return fmt.Errorf("recording the registration before sending it: %w", err)
	}
	return nil
}

// dropIfReplaced drops the old identity when DPS's answer says it assigned
// the device but cannot be used (dps.ErrBadAssignment).
func (e *Engine) dropIfReplaced(err error) {
	if errors.Is(err, dps.ErrBadAssignment) {
		e.dropReplacedIdentity(err)
	}
}

// dropReplacedIdentity forgets the identity DPS has just replaced, when the
// new one cannot be used: the hub refuses the old key from now on, so no
// token may be signed with it, and the status must not say the hub
// accepts it. The next attempt registers again.
func (e *Engine) dropReplacedIdentity(why error) {
	if e.currentIdentity() == nil || e.x509Mode() {
		// The hub accepts a certificate until it expires, whatever DPS
		// does with the SAS key: the old one stays in use.
		return
	}
	e.log.Error("DPS replaced the hub key but the new one cannot be used: the old identity is dropped", "err", why)
	e.ids.set(nil)
	e.stopSession()
	e.update(func(s *apitype.Status) { s.Hub = apitype.HubStatus{} })
}

// commit makes the assigned identity the device's: in use at once, and
// on disk as soon as the disk takes it (Run saves it again while it does
// not; DPS is not asked again).
func (e *Engine) commit(ctx context.Context, dev tpmDevice, keys tpmKeys, key *tpmdev.WrappedKey, cert *certificate, regID string, rs *dps.RegistrationState, reason apitype.Reason) error {
	raw, err := key.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding the identity key: %w", err)
	}
	var certFiles *state.Certificate
	if cert != nil {
		files, err := encodeCertificate(cert)
		if err != nil {
			return err
		}
		certFiles = &files
	}
	fp := keys.fingerprint()
	prev := e.rec.get()
	next := state.Record{
		RegistrationID:    regID,
		IDScope:           e.cfg.Provisioning.IDScope,
		AssignedHub:       rs.AssignedHub,
		DeviceID:          rs.DeviceID,
		EKDigest:          fp.ekDigest,
		SRKName:           fp.srkName,
		ProvisionedAt:     e.now().UTC().Truncate(time.Second),
		Reason:            reason,
		ConfigFingerprint: e.cfg.ProvisioningFingerprint(),
		IdentityDigest:    digest(raw),
		Version:           version.Version,
		OwnerAuthSealed:   e.ownerAuthSealed(&prev, fp.srkName),
		PendingReason:     e.pendingAfterCommit(),
	}
	if certFiles != nil {
		next.CertificateDigest = certDigest(*certFiles)
	}
	id := &identity{key: key, hub: rs.AssignedHub, deviceID: rs.DeviceID, cert: cert}
	e.ids.set(id)
	e.showCredential(id)
	e.update(func(s *apitype.Status) {
		s.AssignedHub = rs.AssignedHub
		s.DeviceID = rs.DeviceID
		t := next.ProvisionedAt
		s.ProvisionedAt = &t
		s.Reason = reason
		s.Hub = apitype.HubStatus{} // nobody has asked the hub about this key yet
	})
	if err := e.rec.adopt(next, raw, certFiles); err != nil {
		e.log.Error("the new hub identity is in use but not saved yet; saving it again later, without registering again", "err", err)
	}
	if certFiles != nil {
		e.publishChain(*certFiles)
	}
	if h := e.cfg.TPM.IdentityHandle; h != 0 {
		if err := e.persistKey(ctx, dev, keys, key, h); err != nil {
			// The key on disk works; other SDK apps just cannot find it.
			e.log.Error("persisting the identity key for other apps failed", "handle", h, "err", err)
		}
	}
	if h := e.cfg.Hub.CertKeyHandle; h != 0 && cert != nil {
		// Only now, with the new certificate in use, does its key replace
		// the old one at the handle (TPM2_EvictControl of the old first).
		if err := e.persistKey(ctx, dev, keys, (*tpmdev.WrappedKey)(cert.key), h); err != nil {
			e.log.Error("persisting the certificate's key for other apps failed", "handle", h, "err", err)
		}
	}
	return nil
}

// pendingAfterCommit takes the requests a completed registration answers
// (pendingAfterCommit) and returns the one still to be served.
func (e *Engine) pendingAfterCommit() apitype.Reason {
	e.requests.takeIf(func(r apitype.Reason) bool { return r == apitype.ReasonHubRejected })
	return pendingAfterCommit(e.requests.peek())
}

// persistKey makes key persistent at handle, for other apps.
func (e *Engine) persistKey(ctx context.Context, dev tpmDevice, keys tpmKeys, key *tpmdev.WrappedKey, handle tpmhandle.Handle) error {
	owner, err := keys.ownerAuth(ctx)
	if err != nil {
		return err
	}
	return dev.Persist(ctx, key, handle, owner)
}

// signer signs with key inside the TPM.
// A key that no longer loads wakes the engine to look for a cleared TPM.
func (e *Engine) signer(dev tpmDevice, key *tpmdev.WrappedKey) sas.Signer {
	return func(ctx context.Context, data []byte) ([]byte, error) {
		sig, err := dev.HMAC(ctx, key, data)
		if errors.Is(err, tpmdev.ErrKeyInvalidated) {
			e.recheck()
		}
		return sig, err
	}
}

// retryAfter extracts a server's requested delay from an error chain.
func retryAfter(err error) time.Duration {
	var de *dps.Error
	if errors.As(err, &de) {
		return de.RetryAfter
	}
	return 0
}
