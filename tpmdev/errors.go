package tpmdev

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// Sentinels callers branch on with errors.Is. The TPM's own response code
// stays in the chain as well, so errors.Is(err, tpm2.TPMRCHandle) also works.
var (
	// ErrNotFound: no TPM device, or no object or NV index at the handle.
	ErrNotFound = errors.New("not found")
	// ErrForeignObject: the handle holds an object dpsd did not make and
	// will not touch (it is never evicted).
	ErrForeignObject = errors.New("foreign object at handle")
	// ErrAuthFail: the TPM refused an authorization value. Callers must not
	// retry with guesses: TPM_RC_AUTH_FAIL counts toward dictionary-attack
	// lockout (TPM_RC_BAD_AUTH, for hierarchies and noDA objects, does not).
	ErrAuthFail = errors.New("authorization failed")
	// ErrLockout: the TPM is in dictionary-attack lockout.
	ErrLockout = errors.New("TPM in dictionary-attack lockout")
	// ErrKeyInvalidated: a wrapped key or sealed blob no longer loads
	// because its parent (the SRK) is gone or changed: the TPM was cleared.
	ErrKeyInvalidated = errors.New("key no longer loads (TPM cleared?)")
	// ErrClosed: the Device was closed; it runs no more operations.
	ErrClosed = errors.New("TPM device closed")
	// ErrTPMFull: the TPM has no room for one more object or session,
	// and nothing this Device may flush was left (see Transients).
	ErrTPMFull = errors.New("no room in the TPM for another object or session")
	// ErrNVFull: the TPM has no room left in its NV memory for another
	// persistent object or index (TPM_RC_NV_SPACE).
	ErrNVFull = errors.New("TPM NV memory full")
	// ErrUnreachable: the TPM could not be reached at all (the socket of a
	// software TPM whose process is not running); no command was sent.
	ErrUnreachable = errors.New("TPM unreachable")
)

// unreachable is the error of a TPM that could not be connected to. The
// cause stays text: a missing socket's ENOENT must not read as a missing
// file or key to callers that check fs.ErrNotExist.
func unreachable(path string, cause error) error {
	return fmt.Errorf("connecting to TPM %s: %w: %v", path, ErrUnreachable, cause)
}

// commandError names the TPM command that failed and, for response codes
// callers branch on, adds the matching sentinel to the chain.
func commandError(cc tpm2.TPMCC, err error) error {
	name := "TPM2_" + commandName(cc)
	switch {
	case errors.Is(err, tpm2.TPMRCLockout):
		return fmt.Errorf("%s: %w: %w", name, ErrLockout, err)
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		return fmt.Errorf("%s: %w: %w", name, ErrAuthFail, err)
	case isOutOfRoom(err):
		return fmt.Errorf("%s: %w: %w", name, ErrTPMFull, err)
	case errors.Is(err, tpm2.TPMRCNVSpace):
		return fmt.Errorf("%s: %w: %w", name, ErrNVFull, err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// isNoObject reports whether err says that no object sits at a handle.
func isNoObject(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle)
}

// loadError maps the failure of loading a child of the SRK: a changed SRK
// (TPM_RC_INTEGRITY: the outer HMAC no longer verifies) or a public/private
// pair that does not match it any more means the key was invalidated.
func loadError(err error) error {
	if errors.Is(err, tpm2.TPMRCIntegrity) || errors.Is(err, tpm2.TPMRCBinding) || errors.Is(err, tpm2.TPMRCHandle) {
		return fmt.Errorf("%w: %w", ErrKeyInvalidated, err)
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
