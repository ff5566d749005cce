package authblob

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// maxPublic bounds a TPM2B_PUBLIC from the network: an RSA-4096 key with a
// SHA-512 policy is well under it.
const maxPublic = 1024

// ValidateEK checks that ekPub (a marshalled TPM2B_PUBLIC, with its size
// prefix) looks like an RSA-2048 endorsement key: a restricted decryption
// key with AES-128-CFB, the only kind TPM2_ActivateCredential takes and the
// kind DPS expects (§2.4, §8).
func ValidateEK(ekPub []byte) error {
	_, err := parseStorageKey("EK", ekPub)
	return err
}

// ValidateSRK checks that srkPub (a marshalled TPM2B_PUBLIC) is a restricted
// RSA-2048 decryption (storage) key with AES-128-CFB, as §2.5 describes and
// Build's outer wrapper assumes.
func ValidateSRK(srkPub []byte) error {
	_, err := parseStorageKey("SRK", srkPub)
	return err
}

// SameEK reports whether two marshalled EK publics hold the same key. It
// compares the RSA modulus only, so a difference elsewhere in the public
// area (attributes, policy) does not make the same key look foreign (§8).
func SameEK(a, b []byte) (bool, error) {
	pa, err := parseStorageKey("EK", a)
	if err != nil {
		return false, err
	}
	pb, err := parseStorageKey("EK", b)
	if err != nil {
		return false, err
	}
	ma, _ := pa.Unique.RSA() // parseStorageKey checked both are RSA
	mb, _ := pb.Unique.RSA()
	return bytes.Equal(ma.Buffer, mb.Buffer), nil
}

// parseStorageKey decodes a TPM2B_PUBLIC and checks it is a restricted
// RSA-2048 decryption key with AES-128-CFB and a SHA-256 name, which both
// the EK and the SRK must be for the §8 construction.
func parseStorageKey(what string, b []byte) (*tpm2.TPMTPublic, error) {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadKey, what, fmt.Sprintf(format, args...))
	}
	if len(b) < 2 || len(b) > maxPublic {
		return nil, fail("TPM2B_PUBLIC of %d bytes", len(b))
	}
	if n := int(binary.BigEndian.Uint16(b)); n != len(b)-2 {
		return nil, fail("TPM2B_PUBLIC size field %d, but %d bytes follow", n, len(b)-2)
	}
	pub, err := unmarshalPublic(b[2:])
	if err != nil {
		return nil, fail("decoding TPMT_PUBLIC: %v", err)
	}
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, fail("type 0x%04X, want RSA", uint16(pub.Type))
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fail("nameAlg 0x%04X, want SHA256", uint16(pub.NameAlg))
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return nil, fail("not a restricted decryption key (restricted=%t decrypt=%t sign=%t)", a.Restricted, a.Decrypt, a.SignEncrypt)
	}
	parms, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fail("RSA parameters: %v", err)
	}
	if parms.KeyBits != 2048 {
		return nil, fail("%d-bit RSA, want 2048", parms.KeyBits)
	}
	if parms.Symmetric.Algorithm != tpm2.TPMAlgAES {
		return nil, fail("symmetric 0x%04X, want AES", uint16(parms.Symmetric.Algorithm))
	}
	bits, err := parms.Symmetric.KeyBits.AES()
	if err != nil || *bits != 128 {
		return nil, fail("symmetric key bits, want 128")
	}
	mode, err := parms.Symmetric.Mode.AES()
	if err != nil || *mode != tpm2.TPMAlgCFB {
		return nil, fail("symmetric mode, want CFB")
	}
	modulus, err := pub.Unique.RSA()
	if err != nil || len(modulus.Buffer) != 256 {
		return nil, fail("RSA modulus missing or not 256 bytes")
	}
	if modulus.Buffer[0]&0x80 == 0 {
		return nil, fail("RSA modulus is not 2048 bits long")
	}
	return pub, nil
}

// unmarshalPublic decodes a TPMT_PUBLIC and insists on exact, canonical
// bytes: trailing data or a non-canonical encoding is an error. go-tpm's
// decoder is not written for hostile input, so a panic inside it becomes an
// error here.
func unmarshalPublic(b []byte) (pub *tpm2.TPMTPublic, err error) {
	defer func() {
		if r := recover(); r != nil {
			pub, err = nil, fmt.Errorf("undecodable structure: %v", r)
		}
	}()
	pub, err = tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(*pub), b) {
		return nil, errors.New("trailing or non-canonical bytes")
	}
	return pub, nil
}
