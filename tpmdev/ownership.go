package tpmdev

import (
	"context"
	"fmt"
	"math"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Ownership is what TPM_PT_PERMANENT and the dictionary-attack counters say.
type Ownership struct {
	OwnerAuthSet       bool
	EndorsementAuthSet bool
	LockoutAuthSet     bool
	InLockout          bool
	// LockoutCounter is the number of authorization failures counted now;
	// the TPM locks out when it reaches MaxAuthFail.
	LockoutCounter uint32
	MaxAuthFail    uint32
	// PersistentAvail is TPM_PT_HR_PERSISTENT_AVAIL, the TPM's estimate of
	// how many more persistent objects fit in its NV memory: 0 means that
	// the EK or SRK could not be persisted. Read in the same command;
	// math.MaxUint32 when the TPM does not report it.
	PersistentAvail uint32
}

// TPMA_PERMANENT bits (TPM 2.0 Part 2, section 8.6).
const (
	permOwnerAuthSet       = 1 << 0
	permEndorsementAuthSet = 1 << 1
	permLockoutAuthSet     = 1 << 2
	permInLockout          = 1 << 9
)

// Ownership reads the hierarchy auth flags and the lockout state.
func (d *Device) Ownership(ctx context.Context) (Ownership, error) {
	var o Ownership
	err := d.do(ctx, "reading ownership", func(t transport.TPM) error {
		props, err := properties(t, tpm2.TPMPTPermanent, tpm2.TPMPTMaxAuthFail)
		if err != nil {
			return err
		}
		perm, ok := props[tpm2.TPMPTPermanent]
		if !ok {
			return fmt.Errorf("TPM did not report TPM_PT_PERMANENT")
		}
		o = Ownership{
			OwnerAuthSet:       perm&permOwnerAuthSet != 0,
			EndorsementAuthSet: perm&permEndorsementAuthSet != 0,
			LockoutAuthSet:     perm&permLockoutAuthSet != 0,
			InLockout:          perm&permInLockout != 0,
			LockoutCounter:     props[tpm2.TPMPTLockoutCounter],
			MaxAuthFail:        props[tpm2.TPMPTMaxAuthFail],
			PersistentAvail:    math.MaxUint32,
		}
		if n, ok := props[tpm2.TPMPTHRPersistentAvail]; ok {
			o.PersistentAvail = n
		}
		return nil
	})
	return o, err
}

// SetOwnerAuth changes the owner hierarchy's authorization from old to new
// (TPM2_HierarchyChangeAuth). A refused old value is returned as
// ErrAuthFail and never retried.
func (d *Device) SetOwnerAuth(ctx context.Context, old, new []byte) error {
	err := d.do(ctx, "setting owner auth", func(t transport.TPM) error {
		enc := encryptNone
		if len(new) > 0 {
			enc = encryptIn // newAuth
		}
		s, err := d.changeAuthSession(t, old, enc)
		if err != nil {
			return err
		}
		_, err = run(t, tpm2.HierarchyChangeAuth{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s},
			NewAuth:    tpm2.TPM2BAuth{Buffer: new},
		})
		return err
	})
	if err == nil {
		d.log.Info("changed the owner hierarchy auth", "set", len(new) > 0)
	}
	return err
}

// properties reads the TPM properties from first to last inclusive.
func properties(t transport.TPM, first, last tpm2.TPMPT) (map[tpm2.TPMPT]uint32, error) {
	props := map[tpm2.TPMPT]uint32{}
	for next := first; next <= last; {
		before := next
		rsp, err := run(t, tpm2.GetCapability{
			Capability:    tpm2.TPMCapTPMProperties,
			Property:      uint32(next),
			PropertyCount: uint32(last - next + 1),
		})
		if err != nil {
			return nil, err
		}
		list, err := rsp.CapabilityData.Data.TPMProperties()
		if err != nil {
			return nil, fmt.Errorf("decoding TPM properties: %w", err)
		}
		if len(list.TPMProperty) == 0 {
			break
		}
		for _, p := range list.TPMProperty {
			if p.Property >= first && p.Property <= last {
				props[p.Property] = p.Value
			}
			next = max(next, p.Property+1)
		}
		if !rsp.MoreData || next == before {
			break
		}
	}
	return props, nil
}

// property reads one TPM property, with fallback when the TPM does not
// report it.
func property(t transport.TPM, pt tpm2.TPMPT, fallback uint32) (uint32, error) {
	props, err := properties(t, pt, pt)
	if err != nil {
		return 0, err
	}
	if v, ok := props[pt]; ok && v > 0 {
		return v, nil
	}
	return fallback, nil
}

// nvBufferMax is the largest NV_Read the TPM accepts.
func (d *Device) nvBufferMax(t transport.TPM) (int, error) {
	v, err := property(t, tpm2.TPMPTNVBufferMax, 512)
	return int(min(v, 1024)), err
}

// inputBufferSize is TPM_PT_INPUT_BUFFER, the largest TPM2_HMAC input,
// read once per Device.
func (d *Device) inputBufferSize(t transport.TPM) (int, error) {
	if d.inputBuffer > 0 {
		return d.inputBuffer, nil
	}
	v, err := property(t, tpm2.TPMPTInputBuffer, 1024)
	if err != nil {
		return 0, err
	}
	// TPM2B_MAX_BUFFER in go-tpm and in every TPM we know is at most 1024.
	d.inputBuffer = int(min(v, 1024))
	return d.inputBuffer, nil
}
