package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/backoff"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/enroll"
	"github.com/dpsd-project/dpsd/daemon/filelimit"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// tpmKeys is what setupTPM establishes: the EK and SRK publics and the
// hierarchy auths dpsd may use.
type tpmKeys struct {
	ek  tpmdev.EK
	srk tpmdev.SRK
	// endorsementAuth is the configured endorsement auth (shared mode).
	endorsementAuth []byte
	// ownerAuth returns the owner auth when an operation needs it (it is
	// unsealed only then: most boots never need it).
	ownerAuth func(ctx context.Context) ([]byte, error)
}

// fingerprint identifies the TPM and its owner: a clear changes the SRK,
// a replacement changes the EK.
type fingerprint struct {
	ekDigest string
	srkName  string
}

func (k tpmKeys) fingerprint() fingerprint {
	d := sha256.Sum256(k.ek.Public)
	return fingerprint{ekDigest: hex.EncodeToString(d[:]), srkName: hex.EncodeToString(k.srk.Name)}
}

// tpmDevice is the part of the TPM the engine uses: a *tpmdev.Device
// (through device), or a fake in unit tests. Its methods are safe to call
// concurrently.
type tpmDevice interface {
	Path() string
	Stats() tpmdev.Stats
	Busy() time.Duration
	Close() error
	ReadEK(ctx context.Context) (tpmdev.EK, error)
	EnsureEK(ctx context.Context, t tpmdev.EKTemplate, endorsementAuth, ownerAuth []byte) (tpmdev.EK, error)
	EKCertificate(ctx context.Context) ([]byte, error)
	ReadSRK(ctx context.Context) (tpmdev.SRK, error)
	EnsureSRK(ctx context.Context, ownerAuth []byte) (tpmdev.SRK, error)
	Ownership(ctx context.Context) (tpmdev.Ownership, error)
	SetOwnerAuth(ctx context.Context, old, new []byte) error
	Seal(ctx context.Context, secret []byte) ([]byte, error)
	Unseal(ctx context.Context, sealed []byte) ([]byte, error)
	LoadCheck(ctx context.Context, k *tpmdev.WrappedKey) error
	HMAC(ctx context.Context, k *tpmdev.WrappedKey, data []byte) ([]byte, error)
	// Import activates the challenge of a DPS authenticationKey blob and
	// imports the key it wraps under the SRK.
	Import(ctx context.Context, blob, endorsementAuth []byte) (*tpmdev.WrappedKey, error)
	// Persist makes k persistent at a handle for other apps.
	Persist(ctx context.Context, k *tpmdev.WrappedKey, at tpmhandle.Handle, ownerAuth []byte) error
	// CreateSigningKey makes a signing key under the SRK for an X.509
	// certificate; KeySigner signs with it in the TPM.
	CreateSigningKey(ctx context.Context, alg tpmdev.KeyAlgorithm) (*tpmdev.SigningKey, error)
	KeySigner(k *tpmdev.SigningKey) (crypto.Signer, error)
}

// device is a *tpmdev.Device as the engine uses it.
type device struct{ *tpmdev.Device }

func (d device) Import(ctx context.Context, raw, endorsementAuth []byte) (*tpmdev.WrappedKey, error) {
	b, err := authblob.Parse(raw)
	if err != nil {
		return nil, permanent{fmt.Errorf("DPS sent a malformed authenticationKey: %w", err)}
	}
	return d.ActivateAndImport(ctx, b, endorsementAuth)
}

func (d device) KeySigner(k *tpmdev.SigningKey) (crypto.Signer, error) {
	s, err := d.Signer(k)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// tpmSlot is the open TPM and what the status API reads of it.
type tpmSlot struct {
	mu       sync.Mutex
	dev      tpmDevice
	ekPublic []byte // the EK's TPM2B_PUBLIC, once read
}

func (s *tpmSlot) get() (tpmDevice, []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dev, s.ekPublic
}

func (s *tpmSlot) set(dev tpmDevice) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dev = dev
}

func (s *tpmSlot) setEK(pub []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ekPublic = pub
}

func (e *Engine) device() tpmDevice {
	dev, _ := e.tpm.get()
	return dev
}

// tpmWait spaces the tries to open a TPM device that is not there yet; no
// jitter, as it is local.
var tpmWait = backoff.Policy{Base: time.Second, Max: 30 * time.Second}

// waitForTPM opens the TPM, waiting for a device that has not appeared yet
// (udev may be late, a module may load later).
func (e *Engine) waitForTPM(ctx context.Context) (tpmDevice, error) {
	var last string
	for n := 1; ; n++ {
		dev, err := e.openTPM()
		if err == nil {
			e.tpm.set(dev)
			e.update(func(s *apitype.Status) { s.TPM.Device = dev.Path() })
			return dev, nil
		}
		msg := err.Error()
		if errors.Is(err, fs.ErrPermission) {
			msg += ": the service user needs the group that owns the device (tss on Debian, from the tpm-udev package)"
		}
		e.update(func(s *apitype.Status) { s.LastError = &msg })
		e.setPhase(apitype.PhaseWaitingForTPM, "waiting for the TPM: "+msg)
		if msg != last { // once per cause, not every retry
			e.log.Error("opening the TPM failed", "device", e.cfg.TPM.Device, "err", msg)
			last = msg
		}
		e.ready()
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(tpmWait.Ceiling(n)):
		}
	}
}

// setupTPM makes sure of the EK, ownership and the SRK, following the
// configured ownership policy. When expectEK (a hex EK digest) is set and
// the TPM's EK differs, it stops before taking ownership, creating the SRK
// or touching owner.auth: a replaced TPM needs a new enrollment first. (An
// EK missing from a replacement is still created and persisted: it is the
// same key whoever creates it, and its public part is what the operator
// needs for that enrollment.)
func (e *Engine) setupTPM(ctx context.Context, dev tpmDevice, expectEK string) (tpmKeys, error) {
	k, err := e.auths(dev)
	if err != nil {
		return k, err
	}
	if k.ek, err = e.ensureEK(ctx, dev, k); err != nil {
		return k, err
	}
	e.tpm.setEK(k.ek.Public)
	if expectEK != "" && k.fingerprint().ekDigest != expectEK {
		return k, ErrTPMReplaced
	}
	k.srk, err = dev.ReadSRK(ctx)
	switch {
	case err == nil:
		return k, nil
	case errors.Is(err, tpmdev.ErrForeignObject):
		return k, permanent{fmt.Errorf("%v holds a key that is not the standard SRK; dpsd never evicts it: remove it (tpm2_evictcontrol -C o -c %[1]v) or clear the TPM: %w", tpmhandle.SRK, err)}
	case !errors.Is(err, tpmdev.ErrNotFound):
		return k, fmt.Errorf("reading the SRK: %w", err)
	}
	// No SRK: a first boot or a cleared TPM.
	return e.createSRK(ctx, dev, k)
}

// auths are the hierarchy auths of the configured ownership mode.
func (e *Engine) auths(dev tpmDevice) (tpmKeys, error) {
	var k tpmKeys
	if e.cfg.TPM.Ownership != config.OwnershipShared {
		k.ownerAuth = e.sealedOwnerAuth(dev)
		return k, nil
	}
	var err error
	if k.endorsementAuth, err = readAuthFile(e.cfg.TPM.EndorsementAuthFile); err != nil {
		return k, permanent{fmt.Errorf("reading the endorsement auth: %w", err)}
	}
	owner, err := readAuthFile(e.cfg.TPM.OwnerAuthFile)
	if err != nil {
		return k, permanent{fmt.Errorf("reading the owner auth: %w", err)}
	}
	k.ownerAuth = func(context.Context) ([]byte, error) { return owner, nil }
	return k, nil
}

// ensureEK reads the EK, creating it when it is missing. Reading is free;
// only creating it needs the owner auth, so it is asked for (and
// unsealed) only then.
func (e *Engine) ensureEK(ctx context.Context, dev tpmDevice, k tpmKeys) (tpmdev.EK, error) {
	ek, err := dev.ReadEK(ctx)
	if errors.Is(err, tpmdev.ErrNotFound) {
		owner, aerr := k.ownerAuth(ctx)
		if aerr != nil {
			return ek, aerr
		}
		ek, err = dev.EnsureEK(ctx, enroll.Template(e.cfg.TPM.EKTemplate), k.endorsementAuth, owner)
	}
	if errors.Is(err, tpmdev.ErrForeignObject) {
		return ek, permanent{fmt.Errorf("%v holds a key that is not an RSA-2048 EK; dpsd never evicts it: remove it (tpm2_evictcontrol -C o -c %[1]v) or clear the TPM: %w", tpmhandle.EK, err)}
	}
	if err != nil {
		return ek, fmt.Errorf("ensuring the EK: %w", err)
	}
	return ek, nil
}

// createSRK creates the missing SRK: with the configured owner auth in
// shared mode; else it takes ownership of an unowned TPM.
func (e *Engine) createSRK(ctx context.Context, dev tpmDevice, k tpmKeys) (tpmKeys, error) {
	var err error
	if e.cfg.TPM.Ownership == config.OwnershipShared {
		owner, _ := k.ownerAuth(ctx)
		if k.srk, err = dev.EnsureSRK(ctx, owner); err != nil {
			if errors.Is(err, tpmdev.ErrAuthFail) {
				err = fmt.Errorf("the owner auth in %s is not the TPM's (ownership = \"shared\"): %w", orNone(e.cfg.TPM.OwnerAuthFile), err)
			}
			return k, fmt.Errorf("creating the SRK: %w", err)
		}
		return k, nil
	}
	own, err := e.readOwnership(ctx, dev)
	if err != nil {
		return k, err
	}
	if own.OwnerAuthSet {
		return k, ErrOwnedByOther
	}
	e.setPhase(apitype.PhaseTakingOwnership, "taking ownership of the TPM and creating the SRK")
	if k.srk, err = dev.EnsureSRK(ctx, nil); err != nil {
		return k, fmt.Errorf("creating the SRK: %w", err)
	}
	if err := e.takeOwnership(ctx, dev); err != nil {
		return k, err
	}
	k.ownerAuth = e.sealedOwnerAuth(dev)
	return k, nil
}

// takeOwnership sets a fresh random owner auth. The sealed copy is written
// before the TPM's auth changes, so a crash in between leaves an unused
// file and an unowned TPM (done again at the next start), never an owned
// TPM whose auth is lost.
func (e *Engine) takeOwnership(ctx context.Context, dev tpmDevice) error {
	auth := make([]byte, 32)
	if _, err := rand.Read(auth); err != nil {
		return fmt.Errorf("generating the owner auth: %w", err)
	}
	sealed, err := dev.Seal(ctx, auth)
	if err != nil {
		return fmt.Errorf("sealing the owner auth: %w", err)
	}
	if err := e.o.Store.SaveOwnerAuth(sealed); err != nil {
		return err // names what it was saving
	}
	if err := dev.SetOwnerAuth(ctx, nil, auth); err != nil {
		return fmt.Errorf("setting the owner auth: %w", err)
	}
	e.update(func(s *apitype.Status) { s.TPM.OwnerAuthSet = true })
	e.log.Info("took ownership of the TPM", "owner_auth", "sealed under the SRK")
	return nil
}

// sealedOwnerAuth returns a function that unseals the owner auth dpsd set,
// or answers with the empty auth when the TPM has none.
func (e *Engine) sealedOwnerAuth(dev tpmDevice) func(context.Context) ([]byte, error) {
	return func(ctx context.Context) ([]byte, error) {
		own, err := dev.Ownership(ctx)
		if err != nil {
			return nil, fmt.Errorf("reading the TPM's ownership: %w", err)
		}
		if !own.OwnerAuthSet {
			return nil, nil
		}
		sealed, err := e.o.Store.LoadOwnerAuth()
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w (%s is missing): if dpsd set it, that file was deleted: restore it, or clear the TPM "+
				"(tpm2_clear or the firmware setup) so that dpsd takes ownership again; if someone else owns the TPM, "+
				"set [tpm] ownership = \"shared\" with owner_auth_file", errOwnerAuthMissing, e.ownerAuthPath())
		}
		if err != nil {
			return nil, err // names the file
		}
		auth, err := dev.Unseal(ctx, sealed)
		if errors.Is(err, tpmdev.ErrKeyInvalidated) {
			return nil, fmt.Errorf("%w (%s was sealed under another SRK: the TPM was cleared and owned again since): "+
				"clear the TPM so that dpsd takes ownership again, or set [tpm] ownership = \"shared\" with owner_auth_file: %v",
				errOwnerAuthMissing, e.ownerAuthPath(), err)
		}
		if err != nil {
			return nil, fmt.Errorf("unsealing the owner auth: %w", err)
		}
		return auth, nil
	}
}

// readAuthFile reads a hierarchy auth for shared mode; no file means the
// empty auth.
func readAuthFile(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	// An auth value is at most a digest (64 bytes); the limit only keeps a
	// wrong file from costing memory.
	b, err := filelimit.Read(path, 4<<10)
	if err != nil {
		return nil, err
	}
	// Files written with echo end in a newline that is not part of the auth.
	return bytes.TrimSuffix(b, []byte("\n")), nil
}

// ensureOwnership puts the owner and lockout facts in the status and, in
// take mode, takes ownership of a TPM whose owner auth is empty although
// its SRK exists: a first boot interrupted between creating the SRK and
// setting the auth, or an SRK made by a factory tool. It runs after READY,
// off the warm start's path; a failed read only leaves the facts stale.
func (e *Engine) ensureOwnership(ctx context.Context, dev tpmDevice) error {
	own, err := e.readOwnership(ctx, dev)
	if err != nil {
		e.log.Warn("reading the TPM's ownership failed", "err", err)
		return nil
	}
	if own.OwnerAuthSet || e.cfg.TPM.Ownership == config.OwnershipShared {
		return nil
	}
	e.setPhase(apitype.PhaseTakingOwnership, "taking ownership of the TPM (its owner auth is empty)")
	return e.takeOwnership(ctx, dev)
}

// readOwnership reads the hierarchy and lockout flags and puts them in the
// status.
func (e *Engine) readOwnership(ctx context.Context, dev tpmDevice) (tpmdev.Ownership, error) {
	own, err := dev.Ownership(ctx)
	if err != nil {
		return own, fmt.Errorf("reading the TPM's ownership: %w", err)
	}
	e.update(func(s *apitype.Status) { s.TPM.OwnerAuthSet = own.OwnerAuthSet; s.TPM.InLockout = own.InLockout })
	return own, nil
}

// ownerAuthSealed reports whether the TPM's owner auth (as last read:
// ensureOwnership runs before every registration) is one dpsd set: its
// sealed copy is in owner.auth, or the previous record prev said so and the
// SRK, which a clear changes, is still srkName (a deleted owner.auth stays
// on the record).
func (e *Engine) ownerAuthSealed(prev *state.Record, srkName string) bool {
	if e.cfg.TPM.Ownership == config.OwnershipShared || !e.Status().TPM.OwnerAuthSet {
		return false
	}
	if prev.OwnerAuthSealed && prev.SRKName == srkName {
		return true
	}
	_, err := os.Stat(e.ownerAuthPath())
	return err == nil
}

// ownerAuthPath is where dpsd keeps the sealed owner auth, for messages.
func (e *Engine) ownerAuthPath() string {
	return filepath.Join(e.cfg.State.Dir, state.OwnerAuthFile)
}

// orNone names an auth file for a message; "" means the empty auth.
func orNone(path string) string {
	if path == "" {
		return "(no owner_auth_file: the empty auth)"
	}
	return path
}
