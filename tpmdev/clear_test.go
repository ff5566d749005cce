package tpmdev_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/google/go-tpm/tpm2"
)

// TestClear does what an owner does to a device in the field (tpm2_clear on
// swtpm, TPM2_Clear as the platform on the simulator) and checks what dpsd
// relies on to notice and recover.
func TestClear(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		ownerAuth := randomBytes(t, 32)
		sealed, err := dev.Seal(ctx, ownerAuth)
		if err != nil {
			t.Fatal(err)
		}
		if err := dev.SetOwnerAuth(ctx, nil, ownerAuth); err != nil {
			t.Fatal(err)
		}
		key := randomBytes(t, 32)
		wk := importKey(t, dev, ek, srk, key)
		before, err := dev.Fingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}

		clear()

		// Both persistent keys are gone, and so is the owner auth.
		if _, err := dev.ReadEK(ctx); !errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("ReadEK after clear: %v, want ErrNotFound", err)
		}
		if _, err := dev.ReadSRK(ctx); !errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("ReadSRK after clear: %v, want ErrNotFound", err)
		}
		if _, err := dev.Fingerprint(ctx); !errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("Fingerprint without EK: %v, want ErrNotFound", err)
		}
		if err := dev.LoadCheck(ctx, wk); !errors.Is(err, tpmdev.ErrKeyInvalidated) {
			t.Errorf("loading the old key without SRK: %v, want ErrKeyInvalidated", err)
		}
		own, err := dev.Ownership(ctx)
		if err != nil || own.OwnerAuthSet {
			t.Errorf("ownership after clear: %+v, %v; want no owner auth", own, err)
		}

		// Re-created: the EK is the same key, the SRK a new one.
		ek2, srk2 := provision(t, dev)
		if !ek2.Created || !bytes.Equal(ek2.Public, ek.Public) {
			t.Errorf("re-created EK: created %v, same public %v; want a re-creation of the same key", ek2.Created, bytes.Equal(ek2.Public, ek.Public))
		}
		if !srk2.Created || bytes.Equal(srk2.Name, srk.Name) {
			t.Errorf("re-created SRK: created %v, same Name %v; want a new key", srk2.Created, bytes.Equal(srk2.Name, srk.Name))
		}
		after, err := dev.Fingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.EKDigest != before.EKDigest || bytes.Equal(after.SRKName, before.SRKName) {
			t.Errorf("fingerprint: EK same %v, SRK same %v; want EK same, SRK changed",
				after.EKDigest == before.EKDigest, bytes.Equal(after.SRKName, before.SRKName))
		}

		// What the old SRK wrapped no longer loads.
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"LoadCheck", func() error { return dev.LoadCheck(ctx, wk) }},
			{"HMAC", func() error { _, err := dev.HMAC(ctx, wk, []byte("x")); return err }},
			{"Unseal", func() error { _, err := dev.Unseal(ctx, sealed); return err }},
		} {
			err := tc.call()
			if !errors.Is(err, tpmdev.ErrKeyInvalidated) || !errors.Is(err, tpm2.TPMRCIntegrity) {
				t.Errorf("%s with the old SRK's key: %v, want ErrKeyInvalidated from TPM_RC_INTEGRITY", tc.name, err)
			}
		}

		// Provisioning again works as on a new TPM.
		wk2 := importKey(t, dev, ek2, srk2, key)
		mac, err := dev.HMAC(ctx, wk2, []byte("x"))
		if err != nil || !bytes.Equal(mac, goHMAC(key, []byte("x"))) {
			t.Errorf("HMAC after re-provisioning: %v", err)
		}
	})
}
