package tpmdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// sealMagic starts every sealed blob, so that a file of another kind is
// refused before the TPM sees it.
const sealMagic = "dpsd-sealed-v1\n"

// maxSealed is MAX_SYM_DATA, the largest sealed data object a TPM accepts.
const maxSealed = 128

// Seal seals secret (1 to 128 bytes) under the SRK in a keyed-hash data
// object with empty auth: any process that can use the TPM can unseal it,
// but only on this TPM and only until it is cleared. The returned blob is
// self-describing (a magic line, then TPM2B_PUBLIC and TPM2B_PRIVATE).
func (d *Device) Seal(ctx context.Context, secret []byte) ([]byte, error) {
	if len(secret) == 0 || len(secret) > maxSealed {
		return nil, fmt.Errorf("sealing: secret of %d bytes, want 1..%d", len(secret), maxSealed)
	}
	var out []byte
	err := d.do(ctx, "sealing", func(t transport.TPM) error {
		srk, err := readPersistent(t, SRKHandle)
		if err != nil {
			return fmt.Errorf("reading SRK: %w", err)
		}
		// The secret is inSensitive, the first parameter.
		s, err := d.auth(t, nil, encryptIn)
		if err != nil {
			return err
		}
		rsp, err := run(t, tpm2.Create{
			ParentHandle: tpm2.AuthHandle{Handle: SRKHandle, Name: srk.Name, Auth: s},
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
				Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
			}},
			InPublic: tpm2.New2B(tpm2.TPMTPublic{
				Type:    tpm2.TPMAlgKeyedHash,
				NameAlg: tpm2.TPMAlgSHA256,
				ObjectAttributes: tpm2.TPMAObject{
					FixedTPM:     true,
					FixedParent:  true,
					UserWithAuth: true,
					NoDA:         true,
				},
				Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
					Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
				}),
			}),
		})
		if err != nil {
			return err
		}
		k := WrappedKey{Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}
		body, err := k.MarshalBinary()
		if err != nil {
			return err
		}
		out = append([]byte(sealMagic), body...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Unseal returns the secret of a blob made by Seal on this TPM. After a
// clear it fails with ErrKeyInvalidated.
func (d *Device) Unseal(ctx context.Context, sealed []byte) ([]byte, error) {
	body, ok := bytes.CutPrefix(sealed, []byte(sealMagic))
	if !ok {
		return nil, errors.New("unsealing: not a dpsd sealed blob")
	}
	var k WrappedKey
	if err := k.UnmarshalBinary(body); err != nil {
		return nil, fmt.Errorf("unsealing: %w", err)
	}
	var secret []byte
	err := d.do(ctx, "unsealing", func(t transport.TPM) (err error) {
		h, err := loadKey(t, &k)
		if err != nil {
			return err
		}
		defer flush(t, h.Handle, &err)
		s, err := d.auth(t, nil, encryptOut)
		if err != nil {
			return err
		}
		rsp, err := run(t, tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: s}})
		if err != nil {
			return err
		}
		secret = rsp.OutData.Buffer
		return nil
	})
	if err != nil {
		return nil, err
	}
	return secret, nil
}
