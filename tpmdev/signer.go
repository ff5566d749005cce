package tpmdev

import (
	"context"
	"crypto"
	"crypto/rsa"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"

	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// KeyAlgorithm chooses the kind of signing key CreateSigningKey makes.
type KeyAlgorithm int

const (
	// KeyAuto is ECC NIST P-256 when the TPM implements the curve, else
	// RSA-2048: the profile requires P-256, but older TPMs shipped without
	// ECC.
	KeyAuto KeyAlgorithm = iota
	// KeyECCP256 is ECC NIST P-256 with ECDSA-SHA256 fixed in the key.
	KeyECCP256
	// KeyRSA2048 is RSA-2048 with no scheme fixed in the key: TLS 1.3 needs
	// RSASSA-PSS and TLS 1.2 and X.509 commonly use RSASSA-PKCS1-v1_5, so
	// the scheme is chosen per signature.
	KeyRSA2048
)

// String names the algorithm for logs.
func (a KeyAlgorithm) String() string {
	switch a {
	case KeyAuto:
		return "auto"
	case KeyECCP256:
		return "ecc-p256"
	case KeyRSA2048:
		return "rsa-2048"
	}
	return fmt.Sprintf("KeyAlgorithm(%d)", int(a))
}

// SigningKey is an asymmetric signing key created in the TPM under the SRK
// (TPM2_Create): the TPM never releases its private part, fixedTPM and
// fixedParent forbid duplicating it, and it stops loading when the TPM is
// cleared. The layout is WrappedKey's: TPM2B_PUBLIC then TPM2B_PRIVATE.
type SigningKey WrappedKey

// MarshalBinary returns Public followed by Private, as WrappedKey does.
func (k *SigningKey) MarshalBinary() ([]byte, error) {
	return (*WrappedKey)(k).MarshalBinary()
}

// UnmarshalBinary parses what MarshalBinary wrote and checks that the
// public area is an unrestricted signing key of a kind Signer handles.
func (k *SigningKey) UnmarshalBinary(b []byte) error {
	pub, priv, err := splitWrapped(b)
	if err != nil {
		return fmt.Errorf("unmarshalling signing key: %w", err)
	}
	if _, _, err := signingPublic(pub); err != nil {
		return fmt.Errorf("unmarshalling signing key: %w", err)
	}
	k.Public, k.Private = pub, priv
	return nil
}

// PublicKey returns the key's public part as a crypto public key
// (*ecdsa.PublicKey or *rsa.PublicKey), without asking the TPM.
func (k *SigningKey) PublicKey() (crypto.PublicKey, error) {
	pub, _, err := signingPublic(k.Public)
	return pub, err
}

// signingPublic decodes a marshalled TPM2B_PUBLIC and checks it is a key
// this file made: unrestricted, sign only, P-256 or RSA-2048.
func signingPublic(tpm2b []byte) (crypto.PublicKey, tpm2.TPMAlgID, error) {
	if err := checkTPM2B("public", tpm2b); err != nil {
		return nil, 0, err
	}
	area, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpm2b[2:])
	if err != nil {
		return nil, 0, fmt.Errorf("public area: %w", err)
	}
	a := area.ObjectAttributes
	if !a.SignEncrypt || a.Decrypt || a.Restricted {
		return nil, 0, errors.New("public area is not an unrestricted signing key")
	}
	switch area.Type {
	case tpm2.TPMAlgECC:
		parms, err := area.Parameters.ECCDetail()
		if err != nil || parms.CurveID != tpm2.TPMECCNistP256 {
			return nil, 0, errors.New("ECC key is not on NIST P-256")
		}
	case tpm2.TPMAlgRSA:
		parms, err := area.Parameters.RSADetail()
		if err != nil || parms.KeyBits != 2048 {
			return nil, 0, errors.New("RSA key is not 2048 bits")
		}
	default:
		return nil, 0, fmt.Errorf("object type 0x%04x, want ECC or RSA", uint16(area.Type))
	}
	pub, err := tpm2.Pub(*area)
	if err != nil {
		return nil, 0, fmt.Errorf("public key: %w", err)
	}
	return pub, area.Type, nil
}

// signingTemplate is the public area of a new signing key. noDA spares the
// dictionary-attack counter a wrong password some other program (an
// OpenSSL provider misconfigured) might send: the key's auth is empty, so
// there is nothing to guess.
func signingTemplate(alg KeyAlgorithm) tpm2.TPMTPublic {
	attrs := tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		SignEncrypt:         true,
	}
	if alg == KeyRSA2048 {
		return tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgRSA,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme:  tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
		}
	}
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgECC,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// CreateSigningKey creates a signing key under the SRK (ErrNotFound when
// there is none) and returns it wrapped, for the caller to store. KeyAuto
// picks P-256 when the TPM lists the curve.
func (d *Device) CreateSigningKey(ctx context.Context, alg KeyAlgorithm) (*SigningKey, error) {
	if alg < KeyAuto || alg > KeyRSA2048 {
		return nil, fmt.Errorf("creating signing key: unknown algorithm %d", int(alg))
	}
	var k *SigningKey
	err := d.do(ctx, "creating signing key", func(t transport.TPM) error {
		if alg == KeyAuto {
			ecc, err := hasP256(t)
			if err != nil {
				return err
			}
			alg = KeyRSA2048
			if ecc {
				alg = KeyECCP256
			}
		}
		rsp, err := run(t, tpm2.Create{
			ParentHandle: tpm2.NamedHandle{Handle: SRKHandle, Name: tpm2.HandleName(SRKHandle)},
			InPublic:     tpm2.New2B(signingTemplate(alg)),
		})
		if isNoObject(err) {
			return fmt.Errorf("handle %v (SRK): %w: %w", tpmhandle.SRK, ErrNotFound, err)
		}
		if err != nil {
			return err
		}
		k = &SigningKey{Public: tpm2.Marshal(rsp.OutPublic), Private: tpm2.Marshal(rsp.OutPrivate)}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.log.Info("created a signing key under the SRK", "algorithm", alg.String())
	return k, nil
}

// hasP256 reports whether the TPM lists NIST P-256 among its curves; a TPM
// without ECC lists none.
func hasP256(t transport.TPM) (bool, error) {
	rsp, err := run(t, tpm2.GetCapability{Capability: tpm2.TPMCapECCCurves, PropertyCount: 64})
	if err != nil {
		return false, err
	}
	curves, err := rsp.CapabilityData.Data.ECCCurves()
	if err != nil {
		return false, fmt.Errorf("decoding ECC curves: %w", err)
	}
	return slices.Contains(curves.ECCCurves, tpm2.TPMECCNistP256), nil
}

// PersistSigningKey makes a signing key persistent at an owner handle, for
// programs that address TPM keys by handle (tpm2-openssl's handle:0x81…
// URIs). Persist's rules apply: an older key of the same kind there is
// replaced, anything else is refused with ErrForeignObject.
func (d *Device) PersistSigningKey(ctx context.Context, k *SigningKey, handle tpmhandle.Handle, ownerAuth []byte) error {
	return d.Persist(ctx, (*WrappedKey)(k), handle, ownerAuth)
}

// sameKind reports whether old, found at a persistent handle, is a key that
// persisting new may replace: an unrestricted signing key of the same type
// (for the identity key, an HMAC key).
func sameKind(old, new *tpm2.TPMTPublic) bool {
	return old.Type == new.Type && old.ObjectAttributes.SignEncrypt && !old.ObjectAttributes.Restricted
}

// Signer is a crypto.Signer whose private key stays in the TPM: each
// signature loads the key under the SRK, signs with TPM2_Sign and flushes
// it. ECDSA signatures come back ASN.1 DER encoded and RSA ones as the
// PKCS #1 v1.5 or PSS signature bytes, as crypto/x509 and crypto/tls
// expect. Only SHA-256 digests are signed (the ECC key fixes it; the
// callers pin TLS to the matching signature schemes).
type Signer struct {
	d   *Device
	key SigningKey
	pub crypto.PublicKey
	typ tpm2.TPMAlgID
}

var _ crypto.Signer = (*Signer)(nil)

// Signer returns a crypto.Signer for k. It does not touch the TPM; a key
// that no longer loads fails at the first signature (ErrKeyInvalidated).
func (d *Device) Signer(k *SigningKey) (*Signer, error) {
	if k == nil {
		return nil, errors.New("signer: nil signing key")
	}
	if err := checkTPM2B("private", k.Private); err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	pub, typ, err := signingPublic(k.Public)
	if err != nil {
		return nil, fmt.Errorf("signer: %w", err)
	}
	return &Signer{d: d, key: SigningKey{Public: slices.Clone(k.Public), Private: slices.Clone(k.Private)}, pub: pub, typ: typ}, nil
}

// Public returns the *ecdsa.PublicKey or *rsa.PublicKey of the TPM key.
func (s *Signer) Public() crypto.PublicKey { return s.pub }

// Sign signs a SHA-256 digest in the TPM; rand is not used (the TPM has
// its own). opts of type *rsa.PSSOptions asks an RSA key for PSS.
func (s *Signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.SignContext(context.Background(), digest, opts)
}

// SignContext is Sign with a context that bounds the wait for the TPM.
func (s *Signer) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != crypto.SHA256.Size() {
		return nil, errors.New("signing: only SHA-256 digests are signed")
	}
	hash := tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}
	var scheme tpm2.TPMTSigScheme
	switch _, pss := opts.(*rsa.PSSOptions); {
	case s.typ == tpm2.TPMAlgECC:
		scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &hash)}
	case pss:
		// The TPM's salt is as long as the digest (TPM 2.0 Part 1, B.7),
		// what TLS 1.3 requires and PSSSaltLengthAuto accepts.
		scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgRSAPSS, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSAPSS, &hash)}
	default:
		scheme = tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSASSA, &hash)}
	}
	var sig []byte
	err := s.d.do(ctx, "signing", func(t transport.TPM) (err error) {
		h, err := loadKey(t, (*WrappedKey)(&s.key))
		if err != nil {
			return err
		}
		defer flush(t, h.Handle, &err)
		rsp, err := run(t, tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(nil)},
			Digest:     tpm2.TPM2BDigest{Buffer: digest},
			InScheme:   scheme,
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		})
		if err != nil {
			return err
		}
		sig, err = encodeSignature(&rsp.Signature)
		return err
	})
	if err != nil {
		return nil, err
	}
	return sig, nil
}

// encodeSignature turns a TPMT_SIGNATURE into what Go's crypto verifies:
// ASN.1 SEQUENCE{r, s} for ECDSA, the raw signature for RSA.
func encodeSignature(sig *tpm2.TPMTSignature) ([]byte, error) {
	switch sig.SigAlg {
	case tpm2.TPMAlgECDSA:
		ecc, err := sig.Signature.ECDSA()
		if err != nil {
			return nil, fmt.Errorf("decoding ECDSA signature: %w", err)
		}
		return asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(ecc.SignatureR.Buffer),
			new(big.Int).SetBytes(ecc.SignatureS.Buffer),
		})
	case tpm2.TPMAlgRSASSA:
		r, err := sig.Signature.RSASSA()
		if err != nil {
			return nil, fmt.Errorf("decoding RSASSA signature: %w", err)
		}
		return r.Sig.Buffer, nil
	case tpm2.TPMAlgRSAPSS:
		r, err := sig.Signature.RSAPSS()
		if err != nil {
			return nil, fmt.Errorf("decoding RSAPSS signature: %w", err)
		}
		return r.Sig.Buffer, nil
	}
	return nil, fmt.Errorf("TPM returned a signature of algorithm 0x%04x", uint16(sig.SigAlg))
}
