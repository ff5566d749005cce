package tpmdev

import (
	"bytes"
	"context"
	"fmt"

	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The SRK's and the EK's persistent handles (tpmhandle.SRK, tpmhandle.EK)
// as go-tpm types them.
const (
	SRKHandle = tpm2.TPMHandle(tpmhandle.SRK)
	EKHandle  = tpm2.TPMHandle(tpmhandle.EK)
	// ekCertIndex is the NV index of the RSA-2048 EK certificate (TCG EK
	// Credential Profile, section 2.2.1.4).
	ekCertIndex tpm2.TPMHandle = 0x01C00002
)

// EKTemplate selects the template an absent EK is created from. Both give
// the same key type; the unique field differs, so they give different keys.
type EKTemplate int

const (
	// EKTemplateTCG is the TCG EK Credential Profile template L-1 (unique:
	// 256 zero bytes): the key a manufacturer's EK certificate certifies.
	EKTemplateTCG EKTemplate = iota
	// EKTemplateAzureSDK is the variant the Azure C, Node and Java SDKs
	// create (unique empty), for devices registered with those SDKs.
	EKTemplateAzureSDK
)

// String returns the config spelling: "tcg" or "azure-sdk".
func (t EKTemplate) String() string {
	switch t {
	case EKTemplateTCG:
		return "tcg"
	case EKTemplateAzureSDK:
		return "azure-sdk"
	}
	return fmt.Sprintf("EKTemplate(%d)", int(t))
}

func (t EKTemplate) public() (tpm2.TPMTPublic, error) {
	switch t {
	case EKTemplateTCG:
		return rsaTemplate(tpm2.RSAEKTemplate, 256), nil
	case EKTemplateAzureSDK:
		return rsaTemplate(tpm2.RSAEKTemplate, 0), nil
	}
	return tpm2.TPMTPublic{}, fmt.Errorf("unknown EK template %d", int(t))
}

// rsaTemplate copies go-tpm's shared template with a unique field of n zero
// bytes, so that the package variable is never aliased.
func rsaTemplate(base tpm2.TPMTPublic, n int) tpm2.TPMTPublic {
	tmpl := base
	tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: bytes.Clone(base.AuthPolicy.Buffer)}
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, n)})
	return tmpl
}

// EK is the endorsement key's public part.
type EK struct {
	// Public is the marshalled TPM2B_PUBLIC, size prefix included: the
	// bytes DPS receives as endorsementKey and the registration ID hashes.
	Public []byte
	// Created is true when this call created and persisted the EK.
	Created bool
}

// SRK is the storage root key's public part.
type SRK struct {
	// Public is the marshalled TPM2B_PUBLIC, size prefix included.
	Public []byte
	// Name is the TPM Name (nameAlg || digest of the public area); it
	// changes when the TPM is cleared and the SRK is made again.
	Name []byte
	// Created is true when this call created and persisted the SRK.
	Created bool
}

// EnsureEK returns the EK at 0x81010001, creating it from template t in the
// endorsement hierarchy (endorsementAuth) and persisting it (ownerAuth:
// EvictControl needs the owner hierarchy) when the handle is empty. An
// object there that is not a restricted RSA-2048 decryption key with the
// TCG EK policy is refused with ErrForeignObject and left alone.
func (d *Device) EnsureEK(ctx context.Context, t EKTemplate, endorsementAuth, ownerAuth []byte) (EK, error) {
	tmpl, err := t.public()
	if err != nil {
		return EK{}, err
	}
	var ek EK
	err = d.do(ctx, "ensuring EK", func(tpm transport.TPM) error {
		var err error
		ek, err = d.readEK(tpm)
		if !isNotFound(err) {
			return err
		}
		pub, _, err := d.createPersistent(tpm, tpm2.TPMRHEndorsement, endorsementAuth, tmpl, EKHandle, ownerAuth)
		if err != nil {
			return err
		}
		ek = EK{Public: pub, Created: true}
		return nil
	})
	if err != nil {
		return EK{}, err
	}
	if ek.Created {
		d.log.Info("created and persisted the EK", "handle", tpmhandle.EK.String(), "template", t.String())
	}
	return ek, nil
}

// ReadEK returns the persistent EK without creating it: ErrNotFound when
// the handle is empty, ErrForeignObject when it holds something else.
func (d *Device) ReadEK(ctx context.Context) (EK, error) {
	var ek EK
	err := d.do(ctx, "reading EK", func(t transport.TPM) (err error) {
		ek, err = d.readEK(t)
		return err
	})
	return ek, err
}

// readEK reads the persistent EK, checks it and pins it as the key
// sessions are salted to.
func (d *Device) readEK(t transport.TPM) (EK, error) {
	rsp, err := readPersistent(t, EKHandle)
	if err != nil {
		return EK{}, err
	}
	pub, err := checkedPublic(rsp, EKHandle)
	if err != nil {
		return EK{}, err
	}
	if err := checkEK(pub); err != nil {
		return EK{}, err
	}
	if err := d.pinEK(pub, true); err != nil {
		return EK{}, err
	}
	return EK{Public: tpm2.Marshal(rsp.OutPublic)}, nil
}

// createPersistent creates a primary key from tmpl under hierarchy h,
// persists it at handle and flushes the transient copy. It returns the
// marshalled TPM2B_PUBLIC and the Name. A new EK is pinned, and the owner
// auth that persists it goes in a session salted to it.
func (d *Device) createPersistent(t transport.TPM, h tpm2.TPMHandle, hierarchyAuth []byte, tmpl tpm2.TPMTPublic, handle tpm2.TPMHandle, ownerAuth []byte) (pub, name []byte, err error) {
	s, err := d.auth(t, hierarchyAuth, encryptNone)
	if err != nil {
		return nil, nil, err
	}
	cp, err := run(t, tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: h, Auth: s},
		InPublic:      tpm2.New2B(tmpl),
	})
	if err != nil {
		return nil, nil, err
	}
	defer flush(t, cp.ObjectHandle, &err)
	public, err := checkedPublic(&tpm2.ReadPublicResponse{OutPublic: cp.OutPublic, Name: cp.Name}, cp.ObjectHandle)
	if err != nil {
		return nil, nil, err
	}
	if handle == EKHandle {
		if err := checkEK(public); err != nil {
			return nil, nil, err
		}
		// Pinned, and salted to the transient copy until it is persisted.
		_ = d.pinEK(public, true) // replacing never fails
		d.ek.handle = cp.ObjectHandle
		defer func() {
			d.ek.handle = EKHandle
			d.ekSeen = err == nil
		}()
	}
	if s, err = d.auth(t, ownerAuth, encryptNone); err != nil {
		return nil, nil, err
	}
	if _, err := run(t, tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: s},
		ObjectHandle:     tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: handle,
	}); err != nil {
		return nil, nil, fmt.Errorf("persisting at 0x%08x: %w", uint32(handle), err)
	}
	return tpm2.Marshal(cp.OutPublic), cp.Name.Buffer, nil
}

// checkEK accepts what every SDK accepts as the EK: a restricted RSA-2048
// decryption key whose policy is PolicySecret(TPM_RH_ENDORSEMENT), the
// policy ActivateAndImport satisfies.
func checkEK(pub *tpm2.TPMTPublic) error {
	a := pub.ObjectAttributes
	ok := pub.Type == tpm2.TPMAlgRSA && a.Restricted && a.Decrypt && !a.SignEncrypt &&
		bytes.Equal(pub.AuthPolicy.Buffer, tpm2.RSAEKTemplate.AuthPolicy.Buffer)
	if ok {
		rsa, err := pub.Parameters.RSADetail()
		ok = err == nil && rsa.KeyBits == 2048
	}
	if !ok {
		return fmt.Errorf("object at %v is not an RSA-2048 EK: %w", tpmhandle.EK, ErrForeignObject)
	}
	return nil
}

// EnsureSRK returns the SRK at 0x81000001, creating the standard RSA-2048
// storage key (TCG template, empty auth) in the owner hierarchy and
// persisting it when the handle is empty; ownerAuth is used only then. Any
// other object at the handle is refused with ErrForeignObject and never
// evicted.
func (d *Device) EnsureSRK(ctx context.Context, ownerAuth []byte) (SRK, error) {
	var srk SRK
	err := d.do(ctx, "ensuring SRK", func(t transport.TPM) error {
		var err error
		srk, err = readSRK(t)
		if !isNotFound(err) {
			return err
		}
		tmpl := rsaTemplate(tpm2.RSASRKTemplate, 256)
		pub, name, err := d.createPersistent(t, tpm2.TPMRHOwner, ownerAuth, tmpl, SRKHandle, ownerAuth)
		if err != nil {
			return err
		}
		srk = SRK{Public: pub, Name: name, Created: true}
		return nil
	})
	if err != nil {
		return SRK{}, err
	}
	if srk.Created {
		d.log.Info("created and persisted the SRK", "handle", tpmhandle.SRK.String())
	}
	return srk, nil
}

// ReadSRK returns the persistent SRK without creating it: ErrNotFound when
// the handle is empty, ErrForeignObject when it holds something else.
func (d *Device) ReadSRK(ctx context.Context) (SRK, error) {
	var srk SRK
	err := d.do(ctx, "reading SRK", func(t transport.TPM) (err error) {
		srk, err = readSRK(t)
		return err
	})
	return srk, err
}

func readSRK(t transport.TPM) (SRK, error) {
	rsp, err := readPersistent(t, SRKHandle)
	if err != nil {
		return SRK{}, err
	}
	pub, err := checkedPublic(rsp, SRKHandle)
	if err != nil {
		return SRK{}, err
	}
	if !isStandardSRK(pub) {
		return SRK{}, fmt.Errorf("object at %v is not a standard RSA-2048 SRK: %w", tpmhandle.SRK, ErrForeignObject)
	}
	return SRK{Public: tpm2.Marshal(rsp.OutPublic), Name: rsp.Name.Buffer}, nil
}

// isStandardSRK accepts an SRK made from the TCG storage template with any
// unique field (the C, Node and Java SDKs leave it empty): the attributes,
// empty policy and parameters are what make it usable with empty auth as
// the parent of imported keys.
func isStandardSRK(pub *tpm2.TPMTPublic) bool {
	want := tpm2.RSASRKTemplate
	if pub.Type != tpm2.TPMAlgRSA || pub.NameAlg != tpm2.TPMAlgSHA256 ||
		pub.ObjectAttributes != want.ObjectAttributes || len(pub.AuthPolicy.Buffer) != 0 {
		return false
	}
	rsa, err := pub.Parameters.RSADetail()
	if err != nil || rsa.KeyBits != 2048 || (rsa.Exponent != 0 && rsa.Exponent != 65537) ||
		rsa.Scheme.Scheme != tpm2.TPMAlgNull || rsa.Symmetric.Algorithm != tpm2.TPMAlgAES {
		return false
	}
	bits, err := rsa.Symmetric.KeyBits.AES()
	if err != nil || *bits != 128 {
		return false
	}
	mode, err := rsa.Symmetric.Mode.AES()
	return err == nil && *mode == tpm2.TPMAlgCFB
}

// EKCertificate returns the EK certificate (DER) from NV index 0x01C00002,
// or nil when the TPM has none.
func (d *Device) EKCertificate(ctx context.Context) ([]byte, error) {
	var cert []byte
	err := d.do(ctx, "reading EK certificate", func(t transport.TPM) error {
		pubRsp, err := run(t, tpm2.NVReadPublic{NVIndex: ekCertIndex})
		if err != nil {
			if isNoObject(err) {
				return nil
			}
			return err
		}
		nv, err := pubRsp.NVPublic.Contents()
		if err != nil {
			return fmt.Errorf("decoding NV public area: %w", err)
		}
		index := tpm2.NamedHandle{Handle: ekCertIndex, Name: pubRsp.NVName}
		// The EK Credential Profile has certificates readable with the
		// index's own empty auth (AUTHREAD). Otherwise try the owner
		// hierarchy with empty auth: hierarchy auth is not DA-protected, so
		// a refusal costs nothing toward lockout.
		var auth tpm2.AuthHandle
		if nv.Attributes.AuthRead {
			auth = tpm2.AuthHandle{Handle: ekCertIndex, Name: pubRsp.NVName, Auth: tpm2.PasswordAuth(nil)}
		} else {
			auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
		}
		chunk, err := d.nvBufferMax(t)
		if err != nil {
			return err
		}
		buf := make([]byte, 0, nv.DataSize)
		for off := 0; off < int(nv.DataSize); {
			n := min(chunk, int(nv.DataSize)-off)
			rsp, err := run(t, tpm2.NVRead{AuthHandle: auth, NVIndex: index, Size: uint16(n), Offset: uint16(off)})
			if err != nil {
				return err
			}
			if len(rsp.Data.Buffer) != n {
				return fmt.Errorf("TPM2_NV_Read returned %d bytes, asked %d", len(rsp.Data.Buffer), n)
			}
			buf = append(buf, rsp.Data.Buffer...)
			off += n
		}
		cert = buf
		return nil
	})
	if err != nil {
		return nil, err
	}
	return cert, nil
}
