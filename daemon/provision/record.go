package provision

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
)

// loadRecord reads the provisioning record and finishes or undoes an
// identity switch that a crash interrupted.
func (e *Engine) loadRecord() state.State {
	rec, found, err := e.o.Store.Load()
	if err != nil {
		e.log.Error("state file unusable: treating the device as fresh", "dir", e.cfg.State.Dir, "err", err)
		rec, found = state.State{}, false
	}
	switch staged, err := e.o.Store.LoadStaged(); {
	case err != nil:
		e.log.Error("reading the staged identity key failed", "err", err)
	case staged == nil:
	case found && rec.IdentityDigest == digest(staged):
		// The record names the staged key: the crash came after the
		// record was saved, so the switch must be finished.
		err = e.o.Store.CommitIdentity()
		e.log.Info("finished an interrupted identity switch", "err", err)
	default:
		// No record names it: the registration that staged it never
		// completed, and the old identity stays.
		err = e.o.Store.DiscardStaged()
		e.log.Info("discarded an identity from an interrupted registration", "err", err)
	}
	if !found {
		return state.State{}
	}
	e.update(func(s *apitype.Status) {
		s.RegistrationID = rec.RegistrationID
		s.AssignedHub = rec.AssignedHub
		s.DeviceID = rec.DeviceID
		s.Reason = apitype.Reason(rec.Reason)
		if !rec.ProvisionedAt.IsZero() {
			t := rec.ProvisionedAt
			s.ProvisionedAt = &t
		}
	})
	return rec
}

func digest(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}
