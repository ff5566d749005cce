package tpmdev

import (
	"context"
	"errors"
	"fmt"

	"github.com/dpsd-project/dpsd/tpmdev/authblob"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// ActivateAndImport unwraps a DPS authenticationKey blob: it activates the
// credential (the EK at 0x81010001, authorized by PolicySecret on the
// endorsement hierarchy with endorsementAuth; the SRK at 0x81000001 as the
// object the credential is bound to), which yields the inner wrapping key,
// then imports the HMAC key under the SRK. The returned key is wrapped by
// the SRK; no hierarchy auth is needed to load or use it later.
func (d *Device) ActivateAndImport(ctx context.Context, b *authblob.Blob, endorsementAuth []byte) (*WrappedKey, error) {
	if b == nil {
		return nil, errors.New("activating credential: nil blob")
	}
	var key *WrappedKey
	err := d.do(ctx, "activating credential and importing key", func(t transport.TPM) error {
		srk, err := readPersistent(t, SRKHandle)
		if err != nil {
			return fmt.Errorf("reading SRK: %w", err)
		}
		ek, err := readPersistent(t, EKHandle)
		if err != nil {
			return fmt.Errorf("reading EK: %w", err)
		}
		ekPub, err := checkedPublic(ek, EKHandle)
		if err != nil {
			return err
		}
		if err := d.pinEK(ekPub, false); err != nil {
			return err
		}
		innerKey, err := d.activate(t, srk.Name, ek.Name, b, endorsementAuth)
		if err != nil {
			return err
		}
		// The inner wrapping key is encryptionKey, the first parameter.
		s, err := d.auth(t, nil, encryptIn)
		if err != nil {
			return err
		}
		pub := tpm2.BytesAs2B[tpm2.TPMTPublic](b.Public)
		imp, err := run(t, tpm2.Import{
			ParentHandle:  tpm2.AuthHandle{Handle: SRKHandle, Name: srk.Name, Auth: s},
			EncryptionKey: tpm2.TPM2BData{Buffer: innerKey},
			ObjectPublic:  pub,
			Duplicate:     tpm2.TPM2BPrivate{Buffer: b.Duplicate},
			InSymSeed:     tpm2.TPM2BEncryptedSecret{Buffer: b.InSymSeed},
			Symmetric: tpm2.TPMTSymDef{
				Algorithm: tpm2.TPMAlgAES,
				KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)),
				Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
			},
		})
		if err != nil {
			return err
		}
		key = &WrappedKey{Public: tpm2.Marshal(pub), Private: tpm2.Marshal(imp.OutPrivate)}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return key, nil
}

// activate runs TPM2_ActivateCredential in a policy session it flushes on
// every path, and returns the credential (the blob's inner wrapping key).
// With bus protection the policy session is salted and encrypts the
// credential on its way out.
func (d *Device) activate(t transport.TPM, srkName, ekName tpm2.TPM2BName, b *authblob.Blob, endorsementAuth []byte) (inner []byte, err error) {
	var opts []tpm2.AuthOption
	if d.protect != BusOff {
		if opts, err = d.sessionOptions(t, encryptOut); err != nil {
			return nil, err
		}
	}
	// The session's closer keeps the transport it was made with: make it
	// one that flushes even after a cancellation.
	sess, closeSess, err := tpm2.PolicySession(uncancellable(t), tpm2.TPMAlgSHA256, 16, opts...)
	if err != nil {
		return nil, commandError(tpm2.TPMCCStartAuthSession, err)
	}
	defer func() {
		if cerr := closeSess(); cerr != nil {
			err = also(err, commandError(tpm2.TPMCCFlushContext, cerr))
		}
	}()
	endorsement, err := d.auth(t, endorsementAuth, encryptNone)
	if err != nil {
		return nil, err
	}
	if _, err := run(t, tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: endorsement},
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}); err != nil {
		return nil, fmt.Errorf("authorizing the EK: %w", err)
	}
	rsp, err := run(t, tpm2.ActivateCredential{
		ActivateHandle: tpm2.NamedHandle{Handle: SRKHandle, Name: srkName},
		KeyHandle:      tpm2.AuthHandle{Handle: EKHandle, Name: ekName, Auth: sess},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: b.CredentialBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: b.Secret},
	})
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}

// loadKey loads a wrapped key under the SRK and returns its transient
// handle, which the caller flushes. A key whose SRK is gone or changed
// gives ErrKeyInvalidated.
func loadKey(t transport.TPM, k *WrappedKey) (tpm2.NamedHandle, error) {
	l, err := k.loadable()
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("loading key: %w", err)
	}
	// The SRK is authorized with a password session, which binds no Name:
	// go-tpm asks for one all the same, and the handle stands in for it.
	// That spares a ReadPublic on every signature; a missing SRK still
	// shows, as TPM_RC_HANDLE from Load.
	rsp, err := run(t, tpm2.Load{
		ParentHandle: tpm2.NamedHandle{Handle: SRKHandle, Name: tpm2.HandleName(SRKHandle)},
		InPrivate:    l.private,
		InPublic:     l.public,
	})
	if err != nil {
		return tpm2.NamedHandle{}, loadError(err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// HMAC computes HMAC-SHA256 of data with a wrapped key inside the TPM: one
// TPM2_HMAC when data fits TPM_PT_INPUT_BUFFER, else an HMAC sequence. The
// key is loaded for this call only.
func (d *Device) HMAC(ctx context.Context, k *WrappedKey, data []byte) ([]byte, error) {
	var mac []byte
	err := d.do(ctx, "computing HMAC", func(t transport.TPM) (err error) {
		h, err := loadKey(t, k)
		if err != nil {
			return err
		}
		defer flush(t, h.Handle, &err)
		limit, err := d.inputBufferSize(t)
		if err != nil {
			return err
		}
		if len(data) <= limit {
			mac, err = d.hmac(t, h, data)
			return err
		}
		mac, err = d.hmacSequence(t, h, data, limit)
		return err
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// hmac is one TPM2_HMAC in the kept session (bus.go), which encrypts the
// signature on its way out. A kept session the TPM lost (a TPM reset) is
// replaced once; any other failure drops it.
func (d *Device) hmac(t transport.TPM, key tpm2.NamedHandle, data []byte) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		s, err := d.keptSession(t)
		if err != nil {
			return nil, err
		}
		rsp, err := run(t, tpm2.Hmac{
			Handle:  tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: s},
			Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
			HashAlg: tpm2.TPMAlgSHA256,
		})
		if err == nil {
			return rsp.OutHMAC.Buffer, nil
		}
		d.dropKept(t)
		if attempt > 0 || !sessionGone(err) {
			return nil, err
		}
		d.log.Debug("the kept TPM session is gone; starting another", "err", err)
	}
}

// hmacSequence feeds data in chunks of at most limit bytes; the sequence
// object is flushed by SequenceComplete, or here when a step fails. Only
// SequenceComplete, which returns the signature, needs a salted session.
func (d *Device) hmacSequence(t transport.TPM, h tpm2.NamedHandle, data []byte, limit int) (mac []byte, err error) {
	key := tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)}
	start, err := run(t, tpm2.HmacStart{Handle: key, HashAlg: tpm2.TPMAlgSHA256})
	if err != nil {
		return nil, err
	}
	seq := tpm2.AuthHandle{Handle: start.SequenceHandle, Auth: tpm2.PasswordAuth(nil)}
	for len(data) > limit {
		if _, err := run(t, tpm2.SequenceUpdate{SequenceHandle: seq, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data[:limit]}}); err != nil {
			flush(t, start.SequenceHandle, &err)
			return nil, err
		}
		data = data[limit:]
	}
	s, err := d.auth(t, nil, encryptOut)
	if err != nil {
		flush(t, start.SequenceHandle, &err)
		return nil, err
	}
	seq.Auth = s
	rsp, err := run(t, tpm2.SequenceComplete{SequenceHandle: seq, Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}, Hierarchy: tpm2.TPMRHNull})
	if err != nil {
		flush(t, start.SequenceHandle, &err)
		return nil, err
	}
	return rsp.Result.Buffer, nil
}

// Persist makes a wrapped key persistent at handle (the Azure SDKs use
// 0x81000100), for other software that expects it there. An older key of
// the same kind at the handle (an HMAC key for an HMAC key, a signing key of
// the same type for a signing key) is evicted first; any other object is
// refused with ErrForeignObject. Persisting the key that is already there does nothing.
func (d *Device) Persist(ctx context.Context, k *WrappedKey, at tpmhandle.Handle, ownerAuth []byte) error {
	if !at.OwnerPersistent() {
		return fmt.Errorf("persisting key: handle %v is not an owner persistent handle", at)
	}
	handle := tpm2.TPMHandle(at)
	err := d.do(ctx, "persisting key", func(t transport.TPM) (err error) {
		l, err := k.loadable()
		if err != nil {
			return err
		}
		want, err := l.public.Contents()
		if err != nil {
			return fmt.Errorf("decoding the key's public area: %w", err)
		}
		s, err := d.auth(t, ownerAuth, encryptNone)
		if err != nil {
			return err
		}
		owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s}
		h, err := loadKey(t, k)
		if err != nil {
			return err
		}
		defer flush(t, h.Handle, &err)
		old, err := readPersistent(t, handle)
		switch {
		case err == nil:
			if string(old.Name.Buffer) == string(h.Name.Buffer) {
				return nil
			}
			pub, err := old.OutPublic.Contents()
			if err != nil || !sameKind(pub, want) {
				return fmt.Errorf("object at %v is not a key of the same kind: %w", at, ErrForeignObject)
			}
			if _, err := run(t, tpm2.EvictControl{
				Auth:             owner,
				ObjectHandle:     tpm2.NamedHandle{Handle: handle, Name: old.Name},
				PersistentHandle: handle,
			}); err != nil {
				return fmt.Errorf("evicting the old key: %w", err)
			}
		case !isNotFound(err):
			return err
		}
		_, err = run(t, tpm2.EvictControl{Auth: owner, ObjectHandle: h, PersistentHandle: handle})
		return err
	})
	if err == nil {
		d.log.Info("persisted the key", "handle", at.String())
	}
	return err
}

// LoadCheck proves that a wrapped key still loads under the SRK (and
// flushes it): ErrKeyInvalidated after a clear.
func (d *Device) LoadCheck(ctx context.Context, k *WrappedKey) error {
	return d.do(ctx, "loading key", func(t transport.TPM) (err error) {
		h, err := loadKey(t, k)
		if err != nil {
			return err
		}
		flush(t, h.Handle, &err)
		return err
	})
}
