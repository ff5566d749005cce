package provision

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
)

// loadRecord reads the provisioning record, makes it the engine's, and
// finishes or undoes an identity switch that a crash interrupted.
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
	e.recMu.Lock()
	e.rec = rec
	e.recMu.Unlock()
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

// The engine's record is what state.json holds or, after a failed save,
// should hold. recMu serializes every change and save of it: Run, a
// technician's request and the hub session all write it.

// record returns a copy of the record.
func (e *Engine) record() state.State {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	return e.rec
}

// changeRecord applies f to the record and saves it. The change stands in
// memory even when the save fails; the caller decides what that means.
func (e *Engine) changeRecord(f func(*state.State)) error {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	f(&e.rec)
	return e.saveLocked()
}

// adoptRecord makes next, which names the identity key raw, the record,
// and switches the identity on disk. When that fails, the key stays in
// memory (unsaved) and every later save tries the whole switch again.
func (e *Engine) adoptRecord(next state.State, raw []byte) error {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	e.rec, e.unsavedKey = next, raw
	return e.saveLocked()
}

// saveRecord saves the record again (after a failed save).
func (e *Engine) saveRecord() error {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	return e.saveLocked()
}

// identityUnsaved reports whether the identity in use is not on disk yet.
func (e *Engine) identityUnsaved() bool {
	e.recMu.Lock()
	defer e.recMu.Unlock()
	return e.unsavedKey != nil
}

// saveLocked writes the record; with an identity key not on disk yet, the
// whole switch, so that a crash at any point leaves either the old
// identity with the old record or the new with the new: stage the key,
// save the record that names it, rename it in (loadRecord finishes or
// undoes a switch a crash interrupted).
func (e *Engine) saveLocked() error {
	if e.unsavedKey == nil {
		_, err := e.o.Store.Save(e.rec)
		return err
	}
	if err := e.o.Store.StageIdentity(e.unsavedKey); err != nil {
		return err // names what it was staging
	}
	if _, err := e.o.Store.Save(e.rec); err != nil {
		_ = e.o.Store.DiscardStaged()
		return err
	}
	if err := e.o.Store.CommitIdentity(); err != nil {
		// The record names the staged key: the next start finishes this.
		return err
	}
	e.unsavedKey = nil
	return nil
}

func digest(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}
