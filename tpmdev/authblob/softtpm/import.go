package softtpm

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrIntegrity is what the TPM reports as TPM_RC_INTEGRITY: an HMAC or the
// inner digest does not match, as when the blob was made for another SRK
// or was altered on the way.
var ErrIntegrity = errors.New("integrity check failed")

// Import does in software what the TPM does with an authenticationKey blob
// (already base64-decoded): ActivateCredential with the EK and SRK, then
// Import under the SRK. It returns the identity key's HMAC key and the
// trailer decrypted with the inner wrapping key (nil when the blob has no
// trailer). Integrity failures wrap ErrIntegrity.
func (d *Device) Import(blob []byte) (key, trailer []byte, err error) {
	f, err := split(blob)
	if err != nil {
		return nil, nil, err
	}

	// ActivateCredential (§8.4 reversed).
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, d.EK, f.secret, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, nil, fmt.Errorf("decrypting the credential seed: %w", err)
	}
	if len(d.SRKPublic) < 2 {
		return nil, nil, errors.New("no SRK public area")
	}
	srkName := name(d.SRKPublic[2:])
	encIdentity, err := checkHMAC(f.credential, kdfa(seed, "INTEGRITY", nil, nil, 256), srkName)
	if err != nil {
		return nil, nil, fmt.Errorf("checking the credential (bound to another SRK?): %w", err)
	}
	ident := cfbDecrypt(kdfa(seed, "STORAGE", srkName, nil, 128), encIdentity)
	if len(ident) != 18 || binary.BigEndian.Uint16(ident) != 16 {
		return nil, nil, errors.New("credential is not a 16-byte TPM2B_DIGEST")
	}
	innerKey := ident[2:]

	// Import: outer wrapper (§8.3 reversed).
	seed, err = rsa.DecryptOAEP(sha256.New(), nil, d.SRK, f.inSymSeed, []byte("DUPLICATE\x00"))
	if err != nil {
		return nil, nil, fmt.Errorf("decrypting the import seed: %w", err)
	}
	idName := name(f.public)
	dupSensitive, err := checkHMAC(f.duplicate, kdfa(seed, "INTEGRITY", nil, nil, 256), idName)
	if err != nil {
		return nil, nil, fmt.Errorf("checking the duplicate: %w", err)
	}
	plain := cfbDecrypt(innerKey, cfbDecrypt(kdfa(seed, "STORAGE", idName, nil, 128), dupSensitive))

	// Import: inner wrapper (§8.2 reversed).
	if len(plain) < 34 || binary.BigEndian.Uint16(plain) != 32 {
		return nil, nil, errors.New("inner wrapper has no SHA-256 integrity digest")
	}
	sens2b := plain[34:]
	sum := sha256.Sum256(append(bytes.Clone(sens2b), idName...))
	if !bytes.Equal(sum[:], plain[2:34]) {
		return nil, nil, fmt.Errorf("checking the inner wrapper: %w", ErrIntegrity)
	}
	key, err = hmacKey(sens2b, f.public)
	if err != nil {
		return nil, nil, err
	}
	if f.encURIData != nil {
		trailer = cfbDecrypt(innerKey, f.encURIData)
	}
	return key, trailer, nil
}

// fields are the contents of the blob's TPM2B structures (§6).
type fields struct {
	credential, secret, duplicate, inSymSeed, public, encURIData []byte
}

// split cuts a blob into its fields without trusting authblob.Parse.
func split(b []byte) (fields, error) {
	var f fields
	for _, p := range []*[]byte{&f.credential, &f.secret, &f.duplicate, &f.inSymSeed, &f.public, &f.encURIData} {
		if p == &f.encURIData && len(b) == 0 {
			break // the trailer is optional
		}
		var err error
		if *p, b, err = tpm2b(b); err != nil {
			return fields{}, fmt.Errorf("splitting the blob: %w", err)
		}
	}
	if len(b) != 0 {
		return fields{}, fmt.Errorf("splitting the blob: %d bytes after the trailer", len(b))
	}
	return f, nil
}

// tpm2b returns the contents of the size-prefixed structure at the start
// of b and what follows it.
func tpm2b(b []byte) (contents, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, errors.New("truncated size field")
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b)-2 < n {
		return nil, nil, fmt.Errorf("size %d but %d bytes left", n, len(b)-2)
	}
	return b[2 : 2+n], b[2+n:], nil
}

// hmacKey checks a TPM2B_SENSITIVE of a keyed-hash key against the
// identity key's public area, as TPM2_Load would, and returns the key.
func hmacKey(sens2b, public []byte) ([]byte, error) {
	sens, rest, err := tpm2b(sens2b)
	if err != nil {
		return nil, fmt.Errorf("reading the sensitive area: %w", err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%d bytes after the sensitive area", len(rest))
	}
	if len(sens) < 2 || binary.BigEndian.Uint16(sens) != 0x0008 {
		return nil, errors.New("sensitive area is not a keyed-hash key")
	}
	r := sens[2:]
	var authValue, seedValue, key []byte
	for _, p := range []*[]byte{&authValue, &seedValue, &key} {
		if *p, r, err = tpm2b(r); err != nil {
			return nil, fmt.Errorf("reading the sensitive area: %w", err)
		}
	}
	if len(r) != 0 {
		return nil, fmt.Errorf("%d bytes after the sensitive area's key", len(r))
	}
	if len(authValue) != 0 {
		return nil, errors.New("identity key has an authValue")
	}
	// The TPM's CryptValidateKeys: unique = SHA-256(seedValue ‖ key).
	unique := sha256.Sum256(append(bytes.Clone(seedValue), key...))
	if len(public) < len(unique) || !bytes.Equal(unique[:], public[len(public)-len(unique):]) {
		return nil, errors.New("identity key's unique does not match its sensitive area")
	}
	return key, nil
}

// checkHMAC checks contents = be16(32) ‖ HMAC-SHA256(key, data ‖ name) ‖
// data and returns data.
func checkHMAC(contents, key, name []byte) ([]byte, error) {
	if len(contents) < 34 || binary.BigEndian.Uint16(contents) != 32 {
		return nil, errors.New("no SHA-256 HMAC")
	}
	m := hmac.New(sha256.New, key)
	m.Write(contents[34:])
	m.Write(name)
	if !hmac.Equal(m.Sum(nil), contents[2:34]) {
		return nil, ErrIntegrity
	}
	return contents[34:], nil
}

// kdfa is the TPM's KDFa: SP800-108 counter mode with HMAC-SHA256. It is
// written out here, rather than taken from go-tpm, so that tests do not
// trust the KDF the blob's builder uses.
func kdfa(key []byte, label string, contextU, contextV []byte, bits int) []byte {
	var out []byte
	for i := uint32(1); len(out)*8 < bits; i++ {
		m := hmac.New(sha256.New, key)
		m.Write(binary.BigEndian.AppendUint32(nil, i))
		m.Write([]byte(label + "\x00"))
		m.Write(contextU)
		m.Write(contextV)
		m.Write(binary.BigEndian.AppendUint32(nil, uint32(bits)))
		out = m.Sum(out)
	}
	return out[:bits/8]
}

// cfbDecrypt is AES-CFB with a zero IV, as the TPM uses for every
// wrapper here.
func cfbDecrypt(key, data []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(fmt.Sprintf("AES key of %d bytes: %v", len(key), err)) // only 16-byte keys reach here
	}
	out := make([]byte, len(data))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(out, data)
	return out
}
