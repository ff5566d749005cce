// Package authblob reads and writes the `authenticationKey` blob that DPS
// returns for TPM attestation (docs/dps-tpm-protocol.md §6): a credential for
// the EK that releases an inner wrapping key, and an HMAC identity key
// duplicated for import under the SRK.
//
// Parse is the device side: strict and bounded, because the bytes come from
// the network and go straight into TPM commands. Build is the service side
// (§8), used by the emulator and by tests that drive a real TPM.
//
// The package is pure Go; it uses go-tpm's tpm2 package only for structures
// and the credential and KDF primitives.
package authblob

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sentinels callers branch on with errors.Is.
var (
	// ErrMalformed is wrapped by every error Parse returns: the blob does
	// not have the §6 layout.
	ErrMalformed = errors.New("malformed authenticationKey blob")
	// ErrBadKey is wrapped by the errors of ValidateEK, ValidateSRK, SameEK
	// and Build when a public key sent by a device is unusable.
	ErrBadKey = errors.New("unusable TPM public key")
)

// MaxTrailer is the largest encUriData Parse accepts and Build writes.
// Clients ignore the trailer; the bound only keeps a hostile blob small.
const MaxTrailer = 4096

// Field sizes for RSA EK/SRK and SHA-256 names (§6). Ranges rather than the
// exact production sizes where the TPM, not the layout, is the judge.
const (
	digestSize = 32 // SHA-256: integrity HMACs, the identity key's unique

	// encIdentity encrypts a TPM2B_DIGEST: 2 size bytes and 1..32 bytes.
	minEncIdentity = 2 + 1
	maxEncIdentity = 2 + digestSize

	// An RSA-OAEP ciphertext is as long as the modulus; 512 allows RSA-4096.
	maxEncryptedSecret = 512

	// dupSensitive encrypts be16(32) ‖ innerIntegrity ‖ TPM2B_SENSITIVE of a
	// keyed-hash key: type 2, authValue 2+≤32, seedValue 2+32, key 2+≤64.
	maxDupSensitive = 2 + digestSize + 2 + 2 + 2 + digestSize + 2 + digestSize + 2 + 64

	identityPublicSize = 48 // the one public area shape §6 allows
)

// TPM algorithm identifiers and attribute bits used by the identity key.
const (
	algKeyedHash = 0x0008
	algSHA256    = 0x000B
	algHMAC      = 0x0005

	attrFixedTPM    = 0x00000002
	attrFixedParent = 0x00000010
	attrSign        = 0x00040000
)

// Blob is a parsed authenticationKey. Every field holds the contents of the
// TPM2B structure, without its size prefix, in the types TPM2_ActivateCredential
// and TPM2_Import take.
type Blob struct {
	// CredentialBlob is TPM2B_ID_OBJECT: ActivateCredential's credentialBlob.
	CredentialBlob []byte
	// Secret is TPM2B_ENCRYPTED_SECRET: ActivateCredential's secret (to the EK).
	Secret []byte
	// Duplicate is TPM2B_PRIVATE: Import's duplicate.
	Duplicate []byte
	// InSymSeed is TPM2B_ENCRYPTED_SECRET: Import's inSymSeed (to the SRK).
	InSymSeed []byte
	// Public is the identity key's TPMT_PUBLIC (the contents of TPM2B_PUBLIC).
	Public []byte
	// EncURIData is the encrypted trailer; nil when the blob has none.
	EncURIData []byte
}

// FormatError says which field of the blob is wrong and where it starts.
type FormatError struct {
	Field  string // name as in §6: credentialBlob, secret, duplicate, ...
	Offset int    // byte offset of the field's size prefix in the blob
	Reason string
}

// Error implements error.
func (e *FormatError) Error() string {
	return fmt.Sprintf("%s: %s at offset %d: %s", ErrMalformed, e.Field, e.Offset, e.Reason)
}

// Unwrap lets callers test for ErrMalformed.
func (e *FormatError) Unwrap() error { return ErrMalformed }

// Parse splits an authenticationKey blob (already base64-decoded) into its
// five TPM2B structures and the optional trailer. It checks every size
// against the §6 layout and never reads past the input; it does not check
// any cryptography (the TPM does).
func Parse(b []byte) (*Blob, error) {
	r := reader{b: b}
	var blob Blob
	var err error

	if blob.CredentialBlob, err = r.tpm2b("credentialBlob", 2+digestSize+minEncIdentity, 2+digestSize+maxEncIdentity); err != nil {
		return nil, err
	}
	if err := checkInnerDigest("credentialBlob", r.last, blob.CredentialBlob, "integrityHMAC"); err != nil {
		return nil, err
	}
	if blob.Secret, err = r.tpm2b("secret", 1, maxEncryptedSecret); err != nil {
		return nil, err
	}
	if blob.Duplicate, err = r.tpm2b("duplicate", 2+digestSize+1, 2+digestSize+maxDupSensitive); err != nil {
		return nil, err
	}
	if err := checkInnerDigest("duplicate", r.last, blob.Duplicate, "outerHMAC"); err != nil {
		return nil, err
	}
	if blob.InSymSeed, err = r.tpm2b("encryptedSeed", 1, maxEncryptedSecret); err != nil {
		return nil, err
	}
	if blob.Public, err = r.tpm2b("identityKeyPublic", identityPublicSize, identityPublicSize); err != nil {
		return nil, err
	}
	if err := checkIdentityPublic(r.last, blob.Public); err != nil {
		return nil, err
	}

	switch rest := len(b) - r.off; {
	case rest == 0:
		return &blob, nil
	case rest == 1:
		return nil, &FormatError{"encUriData", r.off, "1 byte left, too short for a size field"}
	}
	if blob.EncURIData, err = r.tpm2b("encUriData", 0, MaxTrailer); err != nil {
		return nil, err
	}
	if r.off != len(b) {
		return nil, &FormatError{"encUriData", r.last, fmt.Sprintf("%d bytes after the trailer", len(b)-r.off)}
	}
	return &blob, nil
}

// reader walks the blob; off is the next unread byte, last the offset of
// the most recent field.
type reader struct {
	b         []byte
	off, last int
}

// tpm2b reads one size-prefixed field whose contents must be min..max bytes.
func (r *reader) tpm2b(field string, min, max int) ([]byte, error) {
	r.last = r.off
	if len(r.b)-r.off < 2 {
		return nil, &FormatError{field, r.off, fmt.Sprintf("missing (%d bytes left, need a 2-byte size)", len(r.b)-r.off)}
	}
	n := int(binary.BigEndian.Uint16(r.b[r.off:]))
	if n < min || n > max {
		if min == max {
			return nil, &FormatError{field, r.off, fmt.Sprintf("size %d, want %d", n, min)}
		}
		return nil, &FormatError{field, r.off, fmt.Sprintf("size %d outside %d..%d", n, min, max)}
	}
	if left := len(r.b) - r.off - 2; n > left {
		return nil, &FormatError{field, r.off, fmt.Sprintf("size %d but only %d bytes left", n, left)}
	}
	start := r.off + 2
	r.off = start + n
	return r.b[start:r.off:r.off], nil
}

// checkInnerDigest checks that a credential or duplicate starts with a
// TPM2B_DIGEST holding a SHA-256 HMAC and that data follows it.
func checkInnerDigest(field string, off int, contents []byte, inner string) error {
	if n := binary.BigEndian.Uint16(contents); n != digestSize {
		return &FormatError{field, off, fmt.Sprintf("%s size %d, want %d (SHA-256)", inner, n, digestSize)}
	}
	return nil
}

// checkIdentityPublic checks the identity key's TPMT_PUBLIC against the one
// shape §6 allows: a SHA-256 keyed-hash HMAC key that Import accepts
// (fixedTPM and fixedParent clear) and HMAC can use (sign set).
func checkIdentityPublic(off int, p []byte) error {
	fail := func(format string, args ...any) error {
		return &FormatError{"identityKeyPublic", off, fmt.Sprintf(format, args...)}
	}
	be16 := func(i int) uint16 { return binary.BigEndian.Uint16(p[i:]) }
	if t := be16(0); t != algKeyedHash {
		return fail("type 0x%04X, want KEYEDHASH 0x%04X", t, algKeyedHash)
	}
	if a := be16(2); a != algSHA256 {
		return fail("nameAlg 0x%04X, want SHA256 0x%04X", a, algSHA256)
	}
	attrs := binary.BigEndian.Uint32(p[4:])
	if attrs&(attrFixedTPM|attrFixedParent) != 0 || attrs&attrSign == 0 {
		return fail("objectAttributes 0x%08X: need sign set, fixedTPM and fixedParent clear", attrs)
	}
	if n := be16(8); n != 0 {
		// A non-empty authPolicy would leave no room in 48 bytes for the rest.
		return fail("authPolicy size %d, want 0", n)
	}
	if s, h := be16(10), be16(12); s != algHMAC || h != algSHA256 {
		return fail("scheme 0x%04X/0x%04X, want HMAC/SHA256", s, h)
	}
	if n := be16(14); n != digestSize {
		return fail("unique size %d, want %d", n, digestSize)
	}
	return nil
}
