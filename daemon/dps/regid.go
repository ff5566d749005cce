package dps

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
)

// regIDEncoding is RFC 4648 base32 with the lowercase alphabet the C SDK
// uses, without padding (§3).
var regIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// RegistrationID derives the registration ID the Microsoft SDKs use for a
// TPM device (§3): lowercase base32 of SHA-256 over the EK's marshalled
// TPM2B_PUBLIC (size prefix included), without padding; 52 characters.
func RegistrationID(ekPub []byte) string {
	d := sha256.Sum256(ekPub)
	return regIDEncoding.EncodeToString(d[:])
}

// maxRegistrationID is DPS's limit on a registration ID's length.
const maxRegistrationID = 128

// ValidRegistrationID checks id against DPS's rules (REST spec,
// DeviceRegistration.registrationId): 1 to 128 characters of ASCII letters,
// digits and ": . _ -", starting and ending with a letter or digit.
func ValidRegistrationID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrRegistrationID)
	}
	if len(id) > maxRegistrationID {
		return fmt.Errorf("%w: %d characters, at most %d", ErrRegistrationID, len(id), maxRegistrationID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && !strings.ContainsRune(":._-", rune(c)) {
			return fmt.Errorf("%w: character %q at %d (letters, digits and \": . _ -\" only)", ErrRegistrationID, c, i)
		}
	}
	if !isAlnum(id[0]) || !isAlnum(id[len(id)-1]) {
		return fmt.Errorf("%w: %q must start and end with a letter or digit", ErrRegistrationID, id)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
