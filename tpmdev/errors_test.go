package tpmdev

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func TestCommandErrorKeepsTheCodeAndAddsTheSentinel(t *testing.T) {
	// Format-1 codes carry the handle, parameter or session number; errors.Is
	// matches them without it, as go-tpm does.
	const session1 = 0x100
	for _, tc := range []struct {
		rc       tpm2.TPMRC
		sentinel error
	}{
		{tpm2.TPMRCBadAuth + session1, ErrAuthFail},
		{tpm2.TPMRCAuthFail + session1, ErrAuthFail},
		{tpm2.TPMRCLockout, ErrLockout},
		{tpm2.TPMRCHandle + 0x100, nil}, // handle 1
		{tpm2.TPMRCIntegrity, nil},
		{tpm2.TPMRCObjectMemory, ErrTPMFull},
		{tpm2.TPMRCSessionMemory, ErrTPMFull},
		{tpm2.TPMRCObjectHandles, ErrTPMFull},
	} {
		err := commandError(tpm2.TPMCCCreatePrimary, tc.rc)
		if !strings.HasPrefix(err.Error(), "TPM2_CreatePrimary: ") {
			t.Errorf("%v: message %q does not name the command", tc.rc, err)
		}
		var rc tpm2.TPMRC
		if !errors.As(err, &rc) || rc != tc.rc {
			t.Errorf("%v: TPM_RC not kept in %v", tc.rc, err)
		}
		for _, s := range []error{ErrAuthFail, ErrLockout, ErrKeyInvalidated, ErrNotFound, ErrTPMFull} {
			if errors.Is(err, s) != (s == tc.sentinel) {
				t.Errorf("%v: errors.Is(%v) = %v", tc.rc, s, !(s == tc.sentinel))
			}
		}
	}
	if err := commandError(0x12345, tpm2.TPMRCFailure); !strings.HasPrefix(err.Error(), "TPM2_0x00012345: ") {
		t.Errorf("unknown command named %q", err)
	}
}

func TestLoadErrorMeansInvalidated(t *testing.T) {
	for rc, want := range map[tpm2.TPMRC]bool{
		tpm2.TPMRCIntegrity + 0x40 + 0x100: true, // TPM_RC_P + parameter 1
		tpm2.TPMRCBinding:                  true,
		tpm2.TPMRCHandle + 0x100:           true, // handle 1
		tpm2.TPMRCMemory:                   false,
		tpm2.TPMRCObjectMemory:             false,
	} {
		err := loadError(commandError(tpm2.TPMCCLoad, rc))
		if errors.Is(err, ErrKeyInvalidated) != want || !errors.Is(err, rc) {
			t.Errorf("Load failing with %v: %v", rc, err)
		}
	}
}
