package tpmdev

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// WrappedKey is a key wrapped by the SRK: it is useless outside the TPM
// that imported it and stops loading when that TPM is cleared.
type WrappedKey struct {
	// Public is the marshalled TPM2B_PUBLIC (size prefix included).
	Public []byte
	// Private is the marshalled TPM2B_PRIVATE (size prefix included).
	Private []byte
}

// MarshalBinary returns Public followed by Private, the layout of
// identity.key: two TPM2B structures, each with its size prefix.
func (k *WrappedKey) MarshalBinary() ([]byte, error) {
	if err := checkTPM2B("public", k.Public); err != nil {
		return nil, fmt.Errorf("marshalling wrapped key: %w", err)
	}
	if err := checkTPM2B("private", k.Private); err != nil {
		return nil, fmt.Errorf("marshalling wrapped key: %w", err)
	}
	out := make([]byte, 0, len(k.Public)+len(k.Private))
	return append(append(out, k.Public...), k.Private...), nil
}

// UnmarshalBinary parses what MarshalBinary wrote; it checks the sizes and
// that the public area decodes as a keyed-hash object, not the cryptography
// (Load does).
func (k *WrappedKey) UnmarshalBinary(b []byte) error {
	pub, priv, err := splitWrapped(b)
	if err != nil {
		return fmt.Errorf("unmarshalling wrapped key: %w", err)
	}
	area, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub[2:])
	if err != nil {
		return fmt.Errorf("unmarshalling wrapped key: public area: %w", err)
	}
	// Identity keys and sealed data are both keyed-hash objects.
	if area.Type != tpm2.TPMAlgKeyedHash {
		return fmt.Errorf("unmarshalling wrapped key: object type 0x%04x, want keyed hash", uint16(area.Type))
	}
	k.Public, k.Private = pub, priv
	return nil
}

// splitWrapped cuts MarshalBinary's output into its two TPM2Bs.
func splitWrapped(b []byte) (pub, priv []byte, err error) {
	pub, rest, err := splitTPM2B("public", b)
	if err != nil {
		return nil, nil, err
	}
	priv, rest, err = splitTPM2B("private", rest)
	if err != nil {
		return nil, nil, err
	}
	if len(rest) != 0 {
		return nil, nil, fmt.Errorf("%d bytes after the private part", len(rest))
	}
	return pub, priv, nil
}

// splitTPM2B cuts one TPM2B (size prefix and contents) off the front of b.
func splitTPM2B(what string, b []byte) (tpm2b, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("%s: truncated size", what)
	}
	n := int(binary.BigEndian.Uint16(b))
	if n == 0 {
		return nil, nil, fmt.Errorf("%s: empty", what)
	}
	if len(b) < 2+n {
		return nil, nil, fmt.Errorf("%s: %d bytes announced, %d present", what, n, len(b)-2)
	}
	return b[: 2+n : 2+n], b[2+n:], nil
}

// checkTPM2B checks that b is exactly one non-empty TPM2B.
func checkTPM2B(what string, b []byte) error {
	_, rest, err := splitTPM2B(what, b)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%s: %d bytes past its size", what, len(rest))
	}
	return nil
}

// loadable is a wrapped object ready for TPM2_Load.
type loadable struct {
	public  tpm2.TPM2BPublic
	private tpm2.TPM2BPrivate
}

func (k *WrappedKey) loadable() (loadable, error) {
	if k == nil {
		return loadable{}, errors.New("nil wrapped key")
	}
	if err := checkTPM2B("public", k.Public); err != nil {
		return loadable{}, err
	}
	if err := checkTPM2B("private", k.Private); err != nil {
		return loadable{}, err
	}
	return loadable{
		public:  tpm2.BytesAs2B[tpm2.TPMTPublic](k.Public[2:]),
		private: tpm2.TPM2BPrivate{Buffer: k.Private[2:]},
	}, nil
}
