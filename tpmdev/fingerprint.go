package tpmdev

import (
	"context"
	"crypto/sha256"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Fingerprint tells TPMs and their owners apart: the EK digest stays the
// same across a clear, the SRK Name does not.
type Fingerprint struct {
	// EKDigest is SHA-256 of the EK's marshalled TPM2B_PUBLIC (the bytes
	// the registration ID is derived from).
	EKDigest [32]byte
	// SRKName is the SRK's Name, nil when no SRK is persisted.
	SRKName []byte
}

// Fingerprint reads the persistent EK and SRK. A missing EK (a clear
// evicts it too) is an error matching ErrNotFound: EnsureEK first.
func (d *Device) Fingerprint(ctx context.Context) (Fingerprint, error) {
	var fp Fingerprint
	err := d.do(ctx, "reading fingerprint", func(t transport.TPM) error {
		ek, err := readPersistent(t, EKHandle)
		if err != nil {
			return err
		}
		fp.EKDigest = sha256.Sum256(tpm2.Marshal(ek.OutPublic))
		srk, err := readPersistent(t, SRKHandle)
		switch {
		case err == nil:
			fp.SRKName = srk.Name.Buffer
		case !isNotFound(err):
			return err
		}
		return nil
	})
	return fp, err
}
