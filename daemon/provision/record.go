package provision

import (
	"crypto/sha256"
	"encoding/hex"
	"sync"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
)

// loadRecord reads the provisioning record, makes it the engine's, and
// finishes or undoes an identity switch that a crash interrupted.
func (e *Engine) loadRecord() state.Record {
	rec, found, err := e.o.Store.Load()
	if err != nil {
		e.log.Error("state file unusable: treating the device as fresh", "dir", e.cfg.State.Dir, "err", err)
		rec, found = state.Record{}, false
	}
	staged, err := e.o.Store.LoadStaged()
	if err != nil {
		e.log.Error("reading the staged identity key failed", "err", err)
	}
	switch interruptedSwitch(rec, found, staged) {
	case switchFinish:
		err = e.o.Store.CommitIdentity()
		e.log.Info("finished an interrupted identity switch", "err", err)
	case switchDiscard:
		err = e.o.Store.DiscardStaged()
		e.log.Info("discarded an identity from an interrupted registration", "err", err)
	}
	if certFiles, staged, err := e.o.Store.LoadStagedCertificate(); err != nil {
		e.log.Error("reading the staged certificate failed", "err", err)
	} else {
		switch interruptedCertSwitch(rec, found, certFiles, staged) {
		case switchFinish:
			err = e.o.Store.CommitCertificate()
			e.log.Info("finished an interrupted certificate switch", "err", err)
		case switchDiscard:
			err = e.o.Store.DiscardStagedCertificate()
			e.log.Info("discarded a certificate from an interrupted registration", "err", err)
		}
	}
	if !found {
		return state.Record{}
	}
	e.rec.init(rec)
	e.update(func(s *apitype.Status) {
		s.RegistrationID = rec.RegistrationID
		s.AssignedHub = rec.AssignedHub
		s.DeviceID = rec.DeviceID
		s.Reason = rec.Reason
		if !rec.ProvisionedAt.IsZero() {
			t := rec.ProvisionedAt
			s.ProvisionedAt = &t
		}
	})
	return rec
}

// ledger is the record: what state.json holds or, after a failed save,
// should hold. Its lock serializes every change and save of it: Run, a
// technician's request and the hub session all write it.
type ledger struct {
	store recordFiles

	mu  sync.Mutex
	rec state.Record
	// unsavedKey is the identity key rec names when it is not on disk yet
	// (the disk refused it after DPS had assigned it); unsavedCert its
	// certificate (x509), nil without one.
	unsavedKey  []byte
	unsavedCert *state.Certificate
}

// recordFiles is where the ledger writes: a *state.Store, or a disk that
// refuses in unit tests.
type recordFiles interface {
	Save(state.Record) (written bool, err error)
	StageIdentity(key []byte) error
	CommitIdentity() error
	DiscardStaged() error
	StageCertificate(state.Certificate) error
	CommitCertificate() error
	DiscardStagedCertificate() error
}

func (l *ledger) init(rec state.Record) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rec = rec
}

// get returns a copy of the record.
func (l *ledger) get() state.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rec
}

// change applies f to the record and saves it. The change stands in
// memory even when the save fails; the caller decides what that means.
func (l *ledger) change(f func(*state.Record)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.rec)
	return l.saveLocked()
}

// changeIf is change when f reports a change; nothing is saved otherwise.
func (l *ledger) changeIf(f func(*state.Record) bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !f(&l.rec) {
		return nil
	}
	return l.saveLocked()
}

// adopt makes next, which names the identity key raw (and cert, when
// not nil), the record, and switches the identity on disk. When that
// fails, the key stays in memory (unsaved) and every later save tries the
// whole switch again.
func (l *ledger) adopt(next state.Record, raw []byte, cert *state.Certificate) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rec, l.unsavedKey, l.unsavedCert = next, raw, cert
	return l.saveLocked()
}

// saveAgain saves the identity in use, when it is not on disk yet.
// unsaved reports whether it was not.
func (l *ledger) saveAgain() (unsaved bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.unsavedKey == nil {
		return false, nil
	}
	return true, l.saveLocked()
}

// saveLocked writes the record; with an identity key not on disk yet, the
// whole switch, so that a crash at any point leaves either the old
// identity with the old record or the new with the new: stage the key,
// save the record that names it, rename it in (loadRecord finishes or
// undoes a switch a crash interrupted).
func (l *ledger) saveLocked() error {
	if l.unsavedKey == nil {
		_, err := l.store.Save(l.rec)
		return err
	}
	if err := l.store.StageIdentity(l.unsavedKey); err != nil {
		return err // names what it was staging
	}
	if c := l.unsavedCert; c != nil {
		if err := l.store.StageCertificate(*c); err != nil {
			_ = l.store.DiscardStaged()
			return err
		}
	}
	if _, err := l.store.Save(l.rec); err != nil {
		_ = l.store.DiscardStaged()
		if l.unsavedCert != nil {
			_ = l.store.DiscardStagedCertificate()
		}
		return err
	}
	// The record names the staged files: should a commit fail, the next
	// start finishes it.
	if err := l.store.CommitIdentity(); err != nil {
		return err
	}
	if l.unsavedCert != nil {
		if err := l.store.CommitCertificate(); err != nil {
			return err
		}
	}
	l.unsavedKey, l.unsavedCert = nil, nil
	return nil
}

func digest(b []byte) string {
	d := sha256.Sum256(b)
	return hex.EncodeToString(d[:])
}
