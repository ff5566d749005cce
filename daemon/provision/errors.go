package provision

import (
	"errors"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// Sentinels callers and the status API branch on.
var (
	// ErrNotProvisioned: the device has no working hub identity yet.
	ErrNotProvisioned = errors.New("the device is not provisioned yet")
	// ErrTPMReplaced: the EK differs from the one the device was provisioned
	// with. A new TPM needs a new enrollment; dpsd never re-enrolls silently.
	ErrTPMReplaced = errors.New("the TPM was replaced (its endorsement key changed): create a new DPS enrollment for this device's new EK (dpsd enroll-info), then run dpsd reprovision")
	// ErrOwnedByOther: the owner hierarchy has an auth dpsd does not know and
	// there is no SRK; dpsd never guesses an auth it was not given.
	ErrOwnedByOther = errors.New("the TPM is owned by someone else and has no SRK at " + tpmhandle.SRK.String() + ": clear the TPM (tpm2_clear) or set [tpm] ownership = \"shared\" with owner_auth_file")
	// ErrDisabled: DPS says the enrollment is disabled.
	ErrDisabled = errors.New("DPS reports the enrollment as disabled: enable it in the DPS enrollment")
)

// errHubStillRejects: the hub refused the device again right after a new
// registration; only an operator can fix that (a disabled or deleted
// device on the hub, a DPS allocation to the wrong hub).
var errHubStillRejects = errors.New("the hub still refuses the device after a new registration: check that the device exists and is enabled on its IoT Hub, and that DPS allocates it to that hub")

// errOwnerAuthMissing: the TPM's owner auth is set and dpsd has no sealed
// copy of it (owner.auth is missing).
var errOwnerAuthMissing = errors.New("the TPM's owner auth is set but dpsd has no sealed copy of it")

// errClockUnset: the system clock is before this build's date and no
// server's clock is known yet; tokens signed now would be rejected.
var errClockUnset = errors.New("the system clock is before this build's date: waiting for time sync (systemd-timesyncd or NTP)")

// errRestartRequested: a technician asked for a registration while DPS was
// still assigning the previous one; Run starts over at once.
var errRestartRequested = errors.New("a new registration was requested while DPS was assigning")

// errAssignTimeout: DPS (or a proxy) kept answering "assigning" for longer
// than one registration may poll; Run backs off and starts over.
var errAssignTimeout = errors.New("DPS did not assign the device in time")

// permanent marks an error that retrying soon will not fix: the state
// becomes failed (or disabled) and the next attempt is slow.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// restart marks an error after which the registration should simply start
// over soon: DPS refused a poll it had accepted the registration for (its
// operation may have been lost), so a new challenge is likely to work.
type restart struct{ err error }

func (r restart) Error() string { return r.err.Error() }
func (r restart) Unwrap() error { return r.err }

func isPermanent(err error) bool {
	var p permanent
	var r restart
	var de *dps.Error
	switch {
	case errors.As(err, &r):
		return false
	case errors.As(err, &p), errors.Is(err, ErrTPMReplaced), errors.Is(err, ErrOwnedByOther), errors.Is(err, ErrDisabled),
		errors.Is(err, errHubStillRejects), errors.Is(err, tpmdev.ErrNVFull), errors.Is(err, errOwnerAuthMissing):
		return true
	case errors.Is(err, tpmdev.ErrAuthFail), errors.Is(err, tpmdev.ErrLockout):
		// A wrong hierarchy auth stays wrong until someone fixes the
		// configured file, and must not be sent again and again.
		return true
	case errors.As(err, &de):
		// DPS refused the device itself (unknown enrollment, EK mismatch):
		// only an operator's fix helps.
		return de.Permanent()
	case errors.Is(err, dps.ErrProtocol):
		// Not DPS's protocol: a captive portal or a wrong endpoint.
		return true
	}
	return false
}

// fixedOnDevice reports whether a permanent error is one a technician
// fixes on the device itself (a foreign key at dpsd's handle, an owner
// dpsd does not know). Looking again costs a few TPM reads and no DPS
// request, so the engine looks every check_interval instead of waiting the
// permanent delay. (Not full NV: each try generates a key in the TPM.)
func fixedOnDevice(err error) bool {
	return errors.Is(err, tpmdev.ErrForeignObject) || errors.Is(err, ErrOwnedByOther) || errors.Is(err, errOwnerAuthMissing)
}

// advice is what the status adds to an error: what a technician can do.
func advice(err error) string {
	switch {
	case errors.Is(err, tpmdev.ErrUnreachable):
		return "start the TPM (for a software TPM: its swtpm process) or correct [tpm] device; dpsd retries by itself"
	case errors.Is(err, tpmdev.ErrNVFull):
		return "the TPM's NV memory is full, so dpsd cannot persist its key: list the persistent handles " +
			"(tpm2_getcap handles-persistent) and evict unused ones as the owner (tpm2_evictcontrol -C o -c HANDLE), " +
			"then run `sudo dpsd reprovision` to retry now"
	case errors.Is(err, ErrTPMReplaced):
		return "" // says what to do itself
	case fixedOnDevice(err):
		return "fixed it? dpsd notices within check_interval, or run `sudo dpsd reprovision` to retry now"
	case isPermanent(err):
		return "fixed it? run `sudo dpsd reprovision` to retry now"
	}
	return ""
}
