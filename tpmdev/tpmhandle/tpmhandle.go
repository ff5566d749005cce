// Package tpmhandle is the one home of the TPM persistent handles dpsd
// knows: the SRK's, the EK's, the owner's persistent range, and a handle as
// written in the config. It imports only the standard library, so that
// daemon/config can check a handle without the TPM stack while tpmdev,
// provision and check share the same type and values.
package tpmhandle

import (
	"fmt"
	"strconv"
	"strings"
)

// Handle is a TPM handle (TPM_HANDLE).
type Handle uint32

// The persistent handles every Azure SDK uses (TCG TPM v2.0 Provisioning
// Guidance, section 7.8; TCG "Registry of Reserved TPM 2.0 Handles and
// Localities", 2.3.1).
const (
	// SRK is the storage root key's handle.
	SRK Handle = 0x81000001
	// EK is the RSA endorsement key's handle.
	EK Handle = 0x81010001
)

// The persistent handles the owner may use (TPM 2.0 Part 3, EvictControl);
// the rest of 0x81 is the platform's.
const (
	ownerFirst Handle = 0x81000000
	ownerLast  Handle = 0x817FFFFF
)

// String is the handle as tpm2-tools and the config write it: "0x" and
// eight lowercase hex digits.
func (h Handle) String() string { return fmt.Sprintf("0x%08x", uint32(h)) }

// OwnerPersistent reports whether h is in the owner's persistent range.
func (h Handle) OwnerPersistent() bool { return h >= ownerFirst && h <= ownerLast }

// Parse reads a handle in the owner's persistent range written in hex with
// a 0x prefix, such as "0x81000100" (any case).
func Parse(s string) (Handle, error) {
	digits, ok := strings.CutPrefix(strings.ToLower(s), "0x")
	n, err := strconv.ParseUint(digits, 16, 32)
	if !ok || err != nil {
		return 0, fmt.Errorf("%q is not a hex handle such as \"0x81000100\"", s)
	}
	if h := Handle(n); !h.OwnerPersistent() {
		return 0, fmt.Errorf("%q is outside the owner's persistent range %v..%v", s, ownerFirst, ownerLast)
	}
	return Handle(n), nil
}
