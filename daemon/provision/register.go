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
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
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
// working) until DPS has assigned the device.
func (e *Engine) register(ctx context.Context, dev *tpmdev.Device, keys tpmKeys, rec *state.State, reason apitype.Reason) error {
	regID := e.cfg.Provisioning.RegistrationID
	if regID == "" {
		regID = dps.RegistrationID(keys.ek.Public)
	}
	e.update(func(s *apitype.Status) { s.RegistrationID = regID })
	var payload json.RawMessage
	if e.cfg.Provisioning.Payload != "" {
		payload = json.RawMessage(e.cfg.Provisioning.Payload)
	}

	e.setPhase(apitype.StateRegistering, "registering with DPS as "+regID)
	ch, err := e.o.DPS.Challenge(ctx, regID, keys.ek.Public, keys.srk.Public, payload)
	if err != nil {
		return fmt.Errorf("requesting the TPM challenge: %w", err)
	}
	if err := e.checkClock(ch.ServerDate); err != nil {
		return err
	}
	challengeKey, err := e.importBlob(ctx, dev, keys, ch.AuthenticationKey)
	if err != nil {
		return fmt.Errorf("activating the challenge: %w", err)
	}
	token, err := sas.New(ctx, e.cfg.Provisioning.IDScope+"/registrations/"+regID,
		e.now().Add(registrationTokenTTL), ch.KeyName, e.signer(dev, challengeKey))
	if err != nil {
		return fmt.Errorf("signing the registration token in the TPM: %w", err)
	}
	op, err := e.o.DPS.Register(ctx, regID, keys.ek.Public, keys.srk.Public, payload, token)
	if err != nil {
		return fmt.Errorf("sending the registration: %w", err)
	}

	e.setPhase(apitype.StateAssigning, "waiting for DPS to assign a hub")
	for op.Status == "assigning" || op.Status == "unassigned" {
		wait := min(op.RetryAfter, e.o.Retry.Max)
		if wait <= 0 {
			wait = defaultPoll
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if op, err = e.o.DPS.Poll(ctx, regID, op.ID, token); err != nil {
			var de *dps.Error
			if errors.As(err, &de) && (de.HTTPStatus == http.StatusUnauthorized || de.HTTPStatus == http.StatusNotFound) {
				err = restart{err}
			}
			return fmt.Errorf("polling the registration: %w", err)
		}
	}
	switch op.Status {
	case "assigned":
	case "disabled":
		return ErrDisabled
	case "failed":
		msg := "no reason given"
		if op.State != nil {
			msg = fmt.Sprintf("error %d: %s", op.State.ErrorCode, op.State.ErrorMessage)
		}
		return permanent{fmt.Errorf("DPS failed the registration: %s", msg)}
	default:
		return fmt.Errorf("DPS answered with the unknown status %q", op.Status)
	}
	rs := op.State
	if rs == nil || rs.AssignedHub == "" || rs.DeviceID == "" || len(rs.TPM.AuthenticationKey) == 0 {
		return errors.New("DPS answered assigned without assignedHub, deviceId or tpm.authenticationKey")
	}
	key, err := e.importBlob(ctx, dev, keys, rs.TPM.AuthenticationKey)
	if err != nil {
		return fmt.Errorf("importing the hub identity: %w", err)
	}
	return e.commit(ctx, dev, keys, rec, key, regID, rs, reason)
}

// commit switches to the new identity so that a crash at any point leaves
// either the old identity with the old record or the new with the new:
// stage the key, save the record that names it, then rename the key in.
// loadRecord finishes or undoes a switch a crash interrupted.
func (e *Engine) commit(ctx context.Context, dev *tpmdev.Device, keys tpmKeys, rec *state.State, key *tpmdev.WrappedKey, regID string, rs *dps.RegistrationState, reason apitype.Reason) error {
	raw, err := key.MarshalBinary()
	if err != nil {
		return fmt.Errorf("encoding the identity key: %w", err)
	}
	if err := e.o.Store.StageIdentity(raw); err != nil {
		return err // names what it was staging
	}
	fp := keys.fingerprint()
	next := state.State{
		RegistrationID:    regID,
		IDScope:           e.cfg.Provisioning.IDScope,
		AssignedHub:       rs.AssignedHub,
		DeviceID:          rs.DeviceID,
		EKDigest:          fp.ekDigest,
		SRKName:           fp.srkName,
		ProvisionedAt:     e.now().UTC().Truncate(time.Second),
		Reason:            string(reason),
		ConfigFingerprint: e.cfg.ProvisioningFingerprint(),
		IdentityDigest:    digest(raw),
		Version:           version.Version,
		OwnerAuthSealed:   e.ownerAuthSealed(rec, fp.srkName),
	}
	if _, err := e.o.Store.Save(next); err != nil {
		_ = e.o.Store.DiscardStaged()
		return fmt.Errorf("saving the provisioning record: %w", err)
	}
	if err := e.o.Store.CommitIdentity(); err != nil {
		// The record names the staged key: the next start finishes this.
		return err
	}
	*rec = next
	e.setIdentity(&identity{key: key, hub: rs.AssignedHub, deviceID: rs.DeviceID})
	e.update(func(s *apitype.Status) {
		s.AssignedHub = rs.AssignedHub
		s.DeviceID = rs.DeviceID
		t := next.ProvisionedAt
		s.ProvisionedAt = &t
		s.Reason = reason
	})
	if h := e.cfg.TPM.IdentityHandle; h != "" {
		if err := e.persistIdentity(ctx, dev, keys, key, h); err != nil {
			// The key on disk works; other SDK apps just cannot find it.
			e.log.Error("persisting the identity key for other apps failed", "handle", h, "err", err)
		}
	}
	return nil
}

func (e *Engine) persistIdentity(ctx context.Context, dev *tpmdev.Device, keys tpmKeys, key *tpmdev.WrappedKey, handle string) error {
	owner, err := keys.ownerAuth(ctx)
	if err != nil {
		return err
	}
	h, err := tpmdev.ParseHandle(handle)
	if err != nil {
		return err
	}
	return dev.Persist(ctx, key, h, owner)
}

// importBlob parses an authenticationKey blob and unwraps it in the TPM.
func (e *Engine) importBlob(ctx context.Context, dev *tpmdev.Device, keys tpmKeys, raw []byte) (*tpmdev.WrappedKey, error) {
	b, err := authblob.Parse(raw)
	if err != nil {
		return nil, permanent{fmt.Errorf("DPS sent a malformed authenticationKey: %w", err)}
	}
	return dev.ActivateAndImport(ctx, b, keys.endorsementAuth)
}

// signer signs with key inside the TPM.
// A key that no longer loads wakes the engine to look for a cleared TPM.
func (e *Engine) signer(dev *tpmdev.Device, key *tpmdev.WrappedKey) sas.Signer {
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
