package authblob

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
)

// innerKeySize is the AES-128 key of the inner wrapper; devices call Import
// with AES-128-CFB (§7.2), so it must be 16 bytes.
const innerKeySize = 16

// maxHMACKey is the largest keyed-hash key a TPM accepts for SHA-256 (its
// block size).
const maxHMACKey = 64

// Build makes an authenticationKey blob (§8, the service side) that delivers
// the HMAC key `key` to the TPM holding ekPub, for import under srkPub. Both
// publics are marshalled TPM2B_PUBLIC as the device sent them. The trailer
// plaintext (at most MaxTrailer bytes, may be empty) is encrypted into
// encUriData. The result is the raw blob; DPS sends it base64-encoded.
func Build(rand io.Reader, ekPub, srkPub []byte, key, trailer []byte) ([]byte, error) {
	if len(key) == 0 || len(key) > maxHMACKey {
		return nil, fmt.Errorf("building blob: HMAC key of %d bytes, want 1..%d", len(key), maxHMACKey)
	}
	if len(trailer) > MaxTrailer {
		return nil, fmt.Errorf("building blob: trailer of %d bytes, want at most %d", len(trailer), MaxTrailer)
	}
	ek, err := parseStorageKey("EK", ekPub)
	if err != nil {
		return nil, fmt.Errorf("building blob: %w", err)
	}
	srk, err := parseStorageKey("SRK", srkPub)
	if err != nil {
		return nil, fmt.Errorf("building blob: %w", err)
	}

	pub, sens2b, err := identityKey(rand, key)
	if err != nil {
		return nil, fmt.Errorf("building blob: %w", err)
	}
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, fmt.Errorf("building blob: identity key name: %w", err)
	}

	innerKey := make([]byte, innerKeySize)
	if _, err := io.ReadFull(rand, innerKey); err != nil {
		return nil, fmt.Errorf("building blob: reading random inner key: %w", err)
	}
	duplicate, inSymSeed, err := wrap(rand, srk, name.Buffer, innerKey, sens2b)
	if err != nil {
		return nil, fmt.Errorf("building blob: %w", err)
	}

	// MakeCredential: the EK releases innerKey only to the TPM holding the
	// SRK whose Name it is bound to (§8.4).
	srkName, err := tpm2.ObjectName(srk)
	if err != nil {
		return nil, fmt.Errorf("building blob: SRK name: %w", err)
	}
	ekKEM, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, fmt.Errorf("building blob: EK encapsulation key: %w", err)
	}
	idObject, secret, err := tpm2.CreateCredential(rand, ekKEM, srkName.Buffer, innerKey)
	if err != nil {
		return nil, fmt.Errorf("building blob: making the credential: %w", err)
	}

	pubBytes := tpm2.Marshal(pub)
	out := make([]byte, 0, 6*2+len(idObject)+len(secret)+len(duplicate)+len(inSymSeed)+len(pubBytes)+len(trailer))
	for _, field := range [][]byte{idObject, secret, duplicate, inSymSeed, pubBytes, cfbEncrypt(innerKey, trailer)} {
		out = binary.BigEndian.AppendUint16(out, uint16(len(field)))
		out = append(out, field...)
	}
	return out, nil
}

// identityKey makes the public area and the marshalled TPM2B_SENSITIVE of
// the keyed-hash HMAC key (§8.1) with the attributes production DPS uses.
func identityKey(rand io.Reader, key []byte) (tpm2.TPMTPublic, []byte, error) {
	seedValue := make([]byte, digestSize)
	if _, err := io.ReadFull(rand, seedValue); err != nil {
		return tpm2.TPMTPublic{}, nil, fmt.Errorf("reading random seedValue: %w", err)
	}
	// The TPM checks unique = H(seedValue ‖ key) on import.
	unique := sha256.Sum256(append(append([]byte{}, seedValue...), key...))
	pub := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			UserWithAuth: true,
			NoDA:         true,
			SignEncrypt:  true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: unique[:]}),
	}
	sens := tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgKeyedHash,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seedValue},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BSensitiveData{Buffer: key}),
	}
	return pub, tpm2.Marshal(tpm2.New2B(sens)), nil
}

// wrap duplicates the sensitive area for TPM2_Import under the SRK: the
// inner wrapper with innerKey (§8.2), then the outer wrapper with a seed
// encapsulated to the SRK (§8.3). go-tpm's CreateDuplicate has no inner
// wrapper, and devices always pass one to Import, hence this by hand.
func wrap(rand io.Reader, srk *tpm2.TPMTPublic, name, innerKey, sens2b []byte) (duplicate, inSymSeed []byte, err error) {
	innerIntegrity := sha256.Sum256(append(append([]byte{}, sens2b...), name...))
	inner := binary.BigEndian.AppendUint16(nil, digestSize)
	inner = append(inner, innerIntegrity[:]...)
	inner = append(inner, sens2b...)
	innerCipher := cfbEncrypt(innerKey, inner)

	srkKEM, err := tpm2.ImportEncapsulationKey(srk)
	if err != nil {
		return nil, nil, fmt.Errorf("SRK encapsulation key: %w", err)
	}
	seed, inSymSeed, err := srkKEM.Encapsulate(rand, "DUPLICATE")
	if err != nil {
		return nil, nil, fmt.Errorf("encapsulating the duplication seed to the SRK: %w", err)
	}
	// 128 bits: the SRK's symmetric key size, checked by parseStorageKey.
	dupSensitive := cfbEncrypt(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name, nil, 128), innerCipher)
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(dupSensitive)
	mac.Write(name)

	duplicate = binary.BigEndian.AppendUint16(nil, digestSize)
	duplicate = mac.Sum(duplicate)
	duplicate = append(duplicate, dupSensitive...)
	return duplicate, inSymSeed, nil
}

// cfbEncrypt is AES-CFB with a zero IV, as the TPM uses for every wrapper
// here. key is 16 bytes, so aes.NewCipher cannot fail.
func cfbEncrypt(key, plaintext []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(fmt.Sprintf("authblob: AES key of %d bytes", len(key)))
	}
	out := make([]byte, len(plaintext))
	//lint:ignore SA1019 TPM 2.0 specifies CFB here; the HMACs around each layer give integrity
	cipher.NewCFBEncrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(out, plaintext)
	return out
}
