package tpmdev_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// forEachTPM runs f on a fresh TPM of each backend, and checks afterwards
// that nothing was left loaded.
func forEachTPM(t *testing.T, f func(t *testing.T, dev *tpmdev.Device, clear func())) {
	for _, b := range tpmtest.Backends() {
		t.Run(b.Name, func(t *testing.T) {
			dev, clear := b.Open(t)
			t.Cleanup(func() { tpmtest.AssertNoTransientHandles(t, dev) })
			f(t, dev, clear)
		})
	}
}

// provision makes the EK and SRK with empty hierarchy auth.
func provision(t *testing.T, dev *tpmdev.Device) (tpmdev.EK, tpmdev.SRK) {
	t.Helper()
	ctx := context.Background()
	ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := dev.EnsureSRK(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ek, srk
}

// buildBlob is what the service sends: a random HMAC key for this EK and
// SRK, parsed as the device parses it.
func buildBlob(t testing.TB, ek tpmdev.EK, srk tpmdev.SRK) *authblob.Blob {
	t.Helper()
	return buildBlobFor(t, ek, srk, randomBytes(t, 32))
}

func buildBlobFor(t testing.TB, ek tpmdev.EK, srk tpmdev.SRK, key []byte) *authblob.Blob {
	t.Helper()
	raw, err := authblob.Build(rand.Reader, ek.Public, srk.Public, key, []byte("hub.example/devices/dev1"))
	if err != nil {
		t.Fatal(err)
	}
	blob, err := authblob.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

// importKey builds a service-side blob for key and unwraps it in the TPM.
func importKey(t *testing.T, dev *tpmdev.Device, ek tpmdev.EK, srk tpmdev.SRK, key []byte) *tpmdev.WrappedKey {
	t.Helper()
	wk, err := dev.ActivateAndImport(context.Background(), buildBlobFor(t, ek, srk, key), nil)
	if err != nil {
		t.Fatal(err)
	}
	return wk
}

func goHMAC(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestEK(t *testing.T) {
	// The first 60 bytes of every TCG RSA EK's TPM2B_PUBLIC (protocol doc §2.4).
	tcgPrefix, _ := base64.StdEncoding.DecodeString("AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEA")
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		if _, err := dev.ReadEK(ctx); !errors.Is(err, tpmdev.ErrNotFound) {
			t.Fatalf("ReadEK on a fresh TPM: %v, want ErrNotFound", err)
		}
		ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !ek.Created || len(ek.Public) != 316 || !bytes.HasPrefix(ek.Public, tcgPrefix) {
			t.Fatalf("EK: created %v, %d bytes, prefix %x", ek.Created, len(ek.Public), ek.Public[:min(60, len(ek.Public))])
		}
		again, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		read, err := dev.ReadEK(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if again.Created || !bytes.Equal(again.Public, ek.Public) || !bytes.Equal(read.Public, ek.Public) {
			t.Errorf("re-read EK differs or claims creation")
		}
		fp, err := dev.Fingerprint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if fp.EKDigest != sha256.Sum256(ek.Public) || fp.SRKName != nil {
			t.Errorf("fingerprint %x / SRK %x, want EK digest and no SRK", fp.EKDigest, fp.SRKName)
		}

		// The SDKs' empty-unique variant is another key from the same seed.
		clear()
		azure, err := dev.EnsureEK(ctx, tpmdev.EKTemplateAzureSDK, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !azure.Created || len(azure.Public) != 316 || bytes.Equal(azure.Public, ek.Public) {
			t.Errorf("azure-sdk EK: created %v, %d bytes, same as TCG: %v", azure.Created, len(azure.Public), bytes.Equal(azure.Public, ek.Public))
		}
	})
}

func TestEKCertificate(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		cert, err := dev.EKCertificate(ctx)
		if err != nil || cert != nil {
			t.Fatalf("EKCertificate on a TPM without one: %x, %v", cert, err)
		}
		// Longer than one NV_Read, as real certificates are.
		want := randomBytes(t, 1400)
		writeNV(t, dev, 0x01C00002, want)
		cert, err = dev.EKCertificate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(cert, want) {
			t.Errorf("EKCertificate returned %d bytes, not the %d written", len(cert), len(want))
		}
	})
}

// writeNV defines an owner-written, auth-readable NV index holding data,
// as a manufacturer provisions an EK certificate.
func writeNV(t *testing.T, dev *tpmdev.Device, index tpm2.TPMHandle, data []byte) {
	t.Helper()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	err := dev.Exec(context.Background(), func(tpm transport.TPM) error {
		_, err := tpm2.NVDefineSpace{
			AuthHandle: owner,
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex:    index,
				NameAlg:    tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
				DataSize:   uint16(len(data)),
			}),
		}.Execute(tpm)
		if err != nil {
			return err
		}
		pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
		if err != nil {
			return err
		}
		nv := tpm2.NamedHandle{Handle: index, Name: pub.NVName}
		for off := 0; off < len(data); off += 512 {
			end := min(off+512, len(data))
			if _, err := (tpm2.NVWrite{AuthHandle: owner, NVIndex: nv, Data: tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]}, Offset: uint16(off)}).Execute(tpm); err != nil {
				return err
			}
			// Writing changes the Name (TPMA_NV_WRITTEN).
			pub, err = tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
			if err != nil {
				return err
			}
			nv.Name = pub.NVName
		}
		return nil
	})
	if err != nil {
		t.Fatalf("writing NV index 0x%08x: %v", uint32(index), err)
	}
}

// persistPrimary creates a primary key from tmpl in the owner hierarchy and
// persists it at handle, as other software on the device might.
func persistPrimary(t *testing.T, dev *tpmdev.Device, tmpl tpm2.TPMTPublic, handle tpm2.TPMHandle) []byte {
	t.Helper()
	var name []byte
	err := dev.Exec(context.Background(), func(tpm transport.TPM) error {
		owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
		cp, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tmpl)}.Execute(tpm)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(tpm)
		name = cp.Name.Buffer
		_, err = tpm2.EvictControl{
			Auth:             owner,
			ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
			PersistentHandle: handle,
		}.Execute(tpm)
		return err
	})
	if err != nil {
		t.Fatalf("persisting a primary at 0x%08x: %v", uint32(handle), err)
	}
	return name
}

// nameAt returns the Name of the object persisted at handle.
func nameAt(t *testing.T, dev *tpmdev.Device, handle tpm2.TPMHandle) []byte {
	t.Helper()
	var name []byte
	err := dev.Exec(context.Background(), func(tpm transport.TPM) error {
		rsp, err := tpm2.ReadPublic{ObjectHandle: handle}.Execute(tpm)
		if err != nil {
			return err
		}
		name = rsp.Name.Buffer
		return nil
	})
	if err != nil {
		t.Fatalf("reading 0x%08x: %v", uint32(handle), err)
	}
	return name
}

func TestSRK(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		srk, err := dev.EnsureSRK(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !srk.Created || len(srk.Public) != 284 || len(srk.Name) != 34 {
			t.Fatalf("SRK: created %v, public %d bytes, name %d bytes", srk.Created, len(srk.Public), len(srk.Name))
		}
		again, err := dev.EnsureSRK(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if again.Created || !bytes.Equal(again.Name, srk.Name) || !bytes.Equal(again.Public, srk.Public) {
			t.Errorf("re-used SRK differs or claims creation")
		}
		if !bytes.Equal(nameAt(t, dev, tpmdev.SRKHandle), srk.Name) {
			t.Errorf("SRK Name differs from the TPM's")
		}
	})
}

func TestForeignObjectsAreRefusedAndKept(t *testing.T) {
	// A storage key of another kind (ECC) where dpsd wants its RSA SRK, and
	// an RSA storage key without the EK policy where the EK belongs.
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		foreignSRK := persistPrimary(t, dev, tpm2.ECCSRKTemplate, tpmdev.SRKHandle)
		foreignEK := persistPrimary(t, dev, tpm2.RSASRKTemplate, tpmdev.EKHandle)
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"EnsureSRK", func() error { _, err := dev.EnsureSRK(ctx, nil); return err }},
			{"ReadSRK", func() error { _, err := dev.ReadSRK(ctx); return err }},
			{"EnsureEK", func() error { _, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil); return err }},
			{"ReadEK", func() error { _, err := dev.ReadEK(ctx); return err }},
		} {
			if err := tc.call(); !errors.Is(err, tpmdev.ErrForeignObject) {
				t.Errorf("%s: %v, want ErrForeignObject", tc.name, err)
			}
		}
		if !bytes.Equal(nameAt(t, dev, tpmdev.SRKHandle), foreignSRK) || !bytes.Equal(nameAt(t, dev, tpmdev.EKHandle), foreignEK) {
			t.Error("a foreign object was replaced")
		}
	})
}

func TestOwnershipTaken(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		own, err := dev.Ownership(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if own.OwnerAuthSet || own.EndorsementAuthSet || own.LockoutAuthSet || own.InLockout || own.MaxAuthFail == 0 {
			t.Fatalf("fresh TPM: %+v", own)
		}
		ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		ownerAuth := randomBytes(t, 32)
		if err := dev.SetOwnerAuth(ctx, nil, ownerAuth); err != nil {
			t.Fatal(err)
		}
		if own, err = dev.Ownership(ctx); err != nil || !own.OwnerAuthSet {
			t.Fatalf("after SetOwnerAuth: %+v, %v", own, err)
		}

		// Creating the SRK needs the owner auth now; a wrong one is refused once.
		_, err = dev.EnsureSRK(ctx, nil)
		if !errors.Is(err, tpmdev.ErrAuthFail) || !errors.Is(err, tpm2.TPMRCBadAuth) {
			t.Fatalf("EnsureSRK without the owner auth: %v, want ErrAuthFail wrapping TPM_RC_BAD_AUTH", err)
		}
		if err := dev.SetOwnerAuth(ctx, []byte("wrong"), nil); !errors.Is(err, tpmdev.ErrAuthFail) {
			t.Errorf("SetOwnerAuth with a wrong old auth: %v, want ErrAuthFail", err)
		}
		// Hierarchy auth is not DA-protected: the refusals cost no lockout.
		if own, err = dev.Ownership(ctx); err != nil || own.LockoutCounter != 0 || own.InLockout {
			t.Errorf("after two wrong owner auths: %+v, %v", own, err)
		}
		srk, err := dev.EnsureSRK(ctx, ownerAuth)
		if err != nil || !srk.Created {
			t.Fatalf("EnsureSRK with the owner auth: %+v, %v", srk, err)
		}

		// Import, load and HMAC need no hierarchy auth.
		key := randomBytes(t, 32)
		wk := importKey(t, dev, ek, srk, key)
		if err := dev.LoadCheck(ctx, wk); err != nil {
			t.Fatal(err)
		}
		data := []byte("0ne00000A0A%2Fregistrations%2Fdev1\n1700000000")
		mac, err := dev.HMAC(ctx, wk, data)
		if err != nil {
			t.Fatal(err)
		}
		if !hmac.Equal(mac, goHMAC(key, data)) {
			t.Error("TPM HMAC differs from Go's")
		}

		// The owner auth is kept sealed under the SRK.
		sealed, err := dev.Seal(ctx, ownerAuth)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(sealed, ownerAuth) {
			t.Error("sealed blob contains the secret in the clear")
		}
		got, err := dev.Unseal(ctx, sealed)
		if err != nil || !bytes.Equal(got, ownerAuth) {
			t.Fatalf("Unseal: %x, %v", got, err)
		}
		if err := dev.SetOwnerAuth(ctx, got, nil); err != nil {
			t.Errorf("giving ownership back with the unsealed auth: %v", err)
		}
	})
}

func TestActivateImportHMAC(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		key := randomBytes(t, 32)
		wk := importKey(t, dev, ek, srk, key)

		raw, err := wk.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var stored tpmdev.WrappedKey
		if err := stored.UnmarshalBinary(raw); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, key) {
			t.Error("wrapped key contains the HMAC key in the clear")
		}
		// Around TPM_PT_INPUT_BUFFER (1024 on both): above it, an HMAC sequence.
		for _, n := range []int{0, 1, 100, 1024, 1025, 2048, 5000} {
			data := randomBytes(t, n)
			mac, err := dev.HMAC(ctx, &stored, data)
			if err != nil {
				t.Fatalf("HMAC of %d bytes: %v", n, err)
			}
			if !hmac.Equal(mac, goHMAC(key, data)) {
				t.Errorf("HMAC of %d bytes differs from Go's", n)
			}
		}
		st := dev.Stats()
		if st.ByCommand["HMAC"].Count != 4 || st.ByCommand["HMAC_Start"].Count != 3 || st.ByCommand["SequenceComplete"].Count != 3 {
			t.Errorf("HMAC commands: %+v", st.ByCommand)
		}

		// Persisting for other software: again is a no-op, a new key replaces it.
		const handle tpmhandle.Handle = 0x81000100
		if err := dev.Persist(ctx, wk, handle, nil); err != nil {
			t.Fatal(err)
		}
		first := nameAt(t, dev, tpm2.TPMHandle(handle))
		if err := dev.Persist(ctx, wk, handle, nil); err != nil {
			t.Fatal(err)
		}
		wk2 := importKey(t, dev, ek, srk, randomBytes(t, 32))
		if err := dev.Persist(ctx, wk2, handle, nil); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(nameAt(t, dev, tpm2.TPMHandle(handle)), first) {
			t.Error("Persist kept the old key")
		}
		if err := dev.Persist(ctx, wk, tpmhandle.SRK, nil); !errors.Is(err, tpmdev.ErrForeignObject) {
			t.Errorf("Persist over the SRK: %v, want ErrForeignObject", err)
		}
	})
}

func TestActivateRefusesABlobForAnotherSRK(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ek, _ := provision(t, dev)
		// The credential is bound to another storage key's Name, so the TPM
		// refuses to activate it with our SRK.
		raw, err := authblob.Build(rand.Reader, ek.Public, softwareSRK(t), randomBytes(t, 32), nil)
		if err != nil {
			t.Fatal(err)
		}
		blob, err := authblob.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = dev.ActivateAndImport(context.Background(), blob, nil)
		if !errors.Is(err, tpm2.TPMRCIntegrity) || !strings.Contains(err.Error(), "TPM2_ActivateCredential") {
			t.Fatalf("activating a blob for another SRK: %v, want TPM2_ActivateCredential: TPM_RC_INTEGRITY", err)
		}
	})
}

// softwareSRK is the TPM2B_PUBLIC of an SRK-shaped key made in Go.
func softwareSRK(t *testing.T) []byte {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	pub := tpm2.RSASRKTemplate
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return tpm2.Marshal(tpm2.New2B(pub))
}

func TestSharedModeWithEndorsementAuth(t *testing.T) {
	// Someone else owns the TPM and set an endorsement auth; dpsd is given
	// both values (ownership = "shared").
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		ownerAuth, endorsementAuth := []byte("owner"), []byte("endorsement")
		err := dev.Exec(ctx, func(tpm transport.TPM) error {
			for h, auth := range map[tpm2.TPMHandle][]byte{tpm2.TPMRHOwner: ownerAuth, tpm2.TPMRHEndorsement: endorsementAuth} {
				if _, err := (tpm2.HierarchyChangeAuth{AuthHandle: tpm2.AuthHandle{Handle: h, Auth: tpm2.PasswordAuth(nil)}, NewAuth: tpm2.TPM2BAuth{Buffer: auth}}).Execute(tpm); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, ownerAuth); !errors.Is(err, tpmdev.ErrAuthFail) {
			t.Fatalf("EnsureEK without the endorsement auth: %v, want ErrAuthFail", err)
		}
		ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, endorsementAuth, ownerAuth)
		if err != nil {
			t.Fatal(err)
		}
		srk, err := dev.EnsureSRK(ctx, ownerAuth)
		if err != nil {
			t.Fatal(err)
		}
		own, err := dev.Ownership(ctx)
		if err != nil || !own.OwnerAuthSet || !own.EndorsementAuthSet || own.LockoutAuthSet {
			t.Errorf("ownership: %+v, %v", own, err)
		}
		key := randomBytes(t, 32)
		blob := buildBlobFor(t, ek, srk, key)
		// PolicySecret fails without the endorsement auth; its session is flushed.
		if _, err := dev.ActivateAndImport(ctx, blob, nil); !errors.Is(err, tpmdev.ErrAuthFail) || !strings.Contains(err.Error(), "TPM2_PolicySecret") {
			t.Fatalf("ActivateAndImport without the endorsement auth: %v, want TPM2_PolicySecret: ErrAuthFail", err)
		}
		tpmtest.AssertNoTransientHandles(t, dev)
		wk, err := dev.ActivateAndImport(ctx, blob, endorsementAuth)
		if err != nil {
			t.Fatal(err)
		}
		mac, err := dev.HMAC(ctx, wk, []byte("x"))
		if err != nil || !hmac.Equal(mac, goHMAC(key, []byte("x"))) {
			t.Errorf("HMAC: %v", err)
		}
	})
}

func TestOwnershipReportsLockout(t *testing.T) {
	// Wrong passwords for a DA-protected object count toward lockout; the
	// counter and inLockout bit must read as the TPM sets them.
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		before, err := dev.Ownership(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var lockedOut error
		err = dev.Exec(ctx, func(tpm transport.TPM) error {
			srk, err := tpm2.ReadPublic{ObjectHandle: tpmdev.SRKHandle}.Execute(tpm)
			if err != nil {
				return err
			}
			parent := tpm2.NamedHandle{Handle: tpmdev.SRKHandle, Name: srk.Name}
			obj, err := tpm2.Create{
				ParentHandle: parent,
				InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
					UserAuth: tpm2.TPM2BAuth{Buffer: []byte("right")},
					Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: []byte("s")}),
				}},
				InPublic: tpm2.New2B(tpm2.TPMTPublic{
					Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
					ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true},
					Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
				}),
			}.Execute(tpm)
			if err != nil {
				return err
			}
			l, err := tpm2.Load{ParentHandle: parent, InPrivate: obj.OutPrivate, InPublic: obj.OutPublic}.Execute(tpm)
			if err != nil {
				return err
			}
			defer tpm2.FlushContext{FlushHandle: l.ObjectHandle}.Execute(tpm)
			for range before.MaxAuthFail + 1 {
				_, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name, Auth: tpm2.PasswordAuth([]byte("wrong"))}}.Execute(tpm)
				if errors.Is(err, tpm2.TPMRCLockout) {
					lockedOut = err
					break
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if lockedOut == nil {
			t.Fatalf("no lockout after %d wrong passwords", before.MaxAuthFail+1)
		}
		after, err := dev.Ownership(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if before.InLockout || before.LockoutCounter != 0 || !after.InLockout || after.LockoutCounter != after.MaxAuthFail {
			t.Errorf("before %+v, after %+v", before, after)
		}
		// Everything dpsd uses is noDA (SRK, identity key, sealed data), so a
		// TPM in lockout still provisions and signs.
		key := randomBytes(t, 32)
		mac, err := dev.HMAC(ctx, importKey(t, dev, ek, srk, key), []byte("x"))
		if err != nil || !hmac.Equal(mac, goHMAC(key, []byte("x"))) {
			t.Errorf("HMAC in lockout: %v", err)
		}
		sealed, err := dev.Seal(ctx, []byte("s"))
		if err == nil {
			_, err = dev.Unseal(ctx, sealed)
		}
		if err != nil {
			t.Errorf("sealing in lockout: %v", err)
		}
	})
}
