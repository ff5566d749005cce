package provision

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// identity is what signs hub tokens: the SRK-wrapped HMAC key and where it
// is valid.
type identity struct {
	key      *tpmdev.WrappedKey
	hub      string
	deviceID string
	// cert is the X.509 credential ([hub] auth = "x509"), nil with SAS.
	cert *certificate
}

// idSlot holds the committed, working hub identity, which Token and the
// hub session read while Run replaces it.
type idSlot struct {
	mu sync.Mutex
	id *identity // nil when none
	// lost says why a provisioned device has no identity (its key was
	// invalidated); "" when it never had one in this process.
	lost string
}

func (s *idSlot) get() *identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id
}

func (s *idSlot) set(id *identity) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.id = id
	if id != nil {
		s.lost = ""
	}
}

// drop forgets an identity whose key no longer works; Token then says why
// instead of "not provisioned yet".
func (s *idSlot) drop(why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.id, s.lost = nil, why
}

func (s *idSlot) lostBecause() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

func (e *Engine) currentIdentity() *identity { return e.ids.get() }

// keyNoLongerLoads is why a key that fails to load is lost.
const keyNoLongerLoads = "it no longer loads in the TPM (a TPM clear or a replaced SRK invalidates the keys wrapped under the SRK)"

// tryKey tries the recorded identity key in the TPM and, when it loads,
// makes it the identity in use. The error is the TPM's, when it could not
// try (keyLoadFailed).
func (e *Engine) tryKey(ctx context.Context, dev tpmDevice, rec state.Record) (keyCheck, error) {
	if e.currentIdentity() != nil {
		return keyProven, nil
	}
	raw, err := e.o.Store.LoadIdentity()
	if err != nil {
		e.log.Error("identity key unusable: registering again", "err", err)
		return keyUnreadable, nil
	}
	if rec.IdentityDigest != "" && digest(raw) != rec.IdentityDigest {
		e.log.Error("the identity key on disk is not the one the record names: registering again", "file", state.IdentityFile)
		return keyNotRecorded, nil
	}
	key := new(tpmdev.WrappedKey)
	if err := key.UnmarshalBinary(raw); err != nil {
		e.log.Error("identity key corrupt: registering again", "err", err)
		return keyCorrupt, nil
	}
	if err := dev.LoadCheck(ctx, key); err != nil {
		if errors.Is(err, tpmdev.ErrKeyInvalidated) {
			e.log.Warn("TPM cleared: the identity key no longer loads")
			e.ids.drop(keyNoLongerLoads)
			return keyInvalidated, nil
		}
		return keyLoadFailed, fmt.Errorf("loading the identity key: %w", err)
	}
	id := &identity{key: key, hub: rec.AssignedHub, deviceID: rec.DeviceID}
	if e.x509Mode() {
		cert, check, err := e.tryCertificate(ctx, dev, rec)
		if cert == nil {
			if check == keyInvalidated {
				e.ids.drop(keyNoLongerLoads)
			}
			return check, err
		}
		id.cert = cert
	}
	e.ids.set(id)
	e.showCredential(id)
	return keyLoads, nil
}

// needsRegistration compares what the device is with what it was
// provisioned as (registrationNeeded), and proves the stored identity
// still loads. An empty reason means the device is provisioned and nothing
// needs doing.
func (e *Engine) needsRegistration(ctx context.Context, dev tpmDevice, rec state.Record, fp fingerprint) (apitype.Reason, error) {
	f := tpmFacts{rec: rec, srkName: fp.srkName, configFP: e.cfg.ProvisioningFingerprint(), x509: e.x509Mode()}
	reason, try := registrationNeeded(f)
	if reason == apitype.ReasonTPMCleared {
		e.log.Warn("TPM cleared: the SRK changed", "recorded", rec.SRKName, "now", fp.srkName)
	}
	if !try {
		return reason, nil
	}
	var err error
	if f.key, err = e.tryKey(ctx, dev, rec); err != nil {
		return "", err
	}
	if id := e.currentIdentity(); id != nil && id.cert != nil {
		f.renewAt, f.now = id.cert.renewAt, e.now()
	}
	reason, _ = registrationNeeded(f)
	return reason, nil
}
