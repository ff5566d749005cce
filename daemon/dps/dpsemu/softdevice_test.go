package dpsemu_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev/authblob"
)

// softDevice plays the TPM side of §7 in software: its EK and SRK are RSA
// keys the test holds, so it can do what ActivateCredential and Import do
// and recover the HMAC key a blob carries. The error-path tests and the
// benchmarks use it; TestTPMExchange uses a real (simulated) TPM.
type softDevice struct {
	ek, srk       *rsa.PrivateKey
	ekPub, srkPub []byte // marshalled TPM2B_PUBLIC, as sent to DPS
	srkName       []byte
}

// testKeys are generated once per test binary: RSA-2048 generation is slow.
var testKeys = sync.OnceValue(func() []*rsa.PrivateKey {
	keys := make([]*rsa.PrivateKey, 3)
	for i := range keys {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		keys[i] = k
	}
	return keys
})

// newSoftDevice returns device n (0 or 1); both share one SRK, and the EKs
// differ.
func newSoftDevice(t testing.TB, n int) *softDevice {
	t.Helper()
	keys := testKeys()
	d := &softDevice{ek: keys[n], srk: keys[2]}
	d.ekPub = rsaPublic(ekHeader, d.ek)
	d.srkPub = rsaPublic(srkHeader, d.srk)
	d.srkName = tpmName(d.srkPub[2:])
	return d
}

// The fixed parts of the TCG EK and SRK public areas (§2.4, §2.5), from
// type to the exponent; the modulus follows.
var (
	ekHeader = append(append([]byte{
		0x00, 0x01, 0x00, 0x0B, 0x00, 0x03, 0x00, 0xB2, 0x00, 0x20},
		mustHex("837197674484B3F81A90CC8D46A5D724FD52D76E06520B64F2A1DA1B331469AA")...),
		0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00)
	srkHeader = []byte{
		0x00, 0x01, 0x00, 0x0B, 0x00, 0x03, 0x04, 0x72, 0x00, 0x00,
		0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00}
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// rsaPublic marshals a TPM2B_PUBLIC: header, then the 256-byte modulus.
func rsaPublic(header []byte, k *rsa.PrivateKey) []byte {
	t := append(bytes.Clone(header), 0x01, 0x00)
	t = append(t, k.N.FillBytes(make([]byte, 256))...)
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(t))), t...)
}

// tpmName is nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC).
func tpmName(tpmtPublic []byte) []byte {
	sum := sha256.Sum256(tpmtPublic)
	return append([]byte{0x00, 0x0B}, sum[:]...)
}

// kdfa is the TPM's SP800-108 counter-mode KDF with HMAC-SHA256.
func kdfa(key []byte, label string, contextU, contextV []byte, bits int) []byte {
	var out []byte
	for i := uint32(1); len(out)*8 < bits; i++ {
		m := hmac.New(sha256.New, key)
		binary.Write(m, binary.BigEndian, i)
		m.Write([]byte(label))
		m.Write([]byte{0})
		m.Write(contextU)
		m.Write(contextV)
		binary.Write(m, binary.BigEndian, uint32(bits))
		out = m.Sum(out)
	}
	return out[:bits/8]
}

func cfbDecrypt(key, data []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(data))
	cipher.NewCFBDecrypter(block, make([]byte, 16)).XORKeyStream(out, data)
	return out
}

// errIntegrity is what the TPM's TPM_RC_INTEGRITY would be.
var errIntegrity = errors.New("integrity check failed")

// unwrapHMAC checks contents = be16(32) ‖ HMAC ‖ data against hmacKey and
// name, and returns data.
func unwrapHMAC(contents, hmacKey, name []byte) ([]byte, error) {
	if len(contents) < 34 || binary.BigEndian.Uint16(contents) != 32 {
		return nil, errors.New("no HMAC")
	}
	m := hmac.New(sha256.New, hmacKey)
	m.Write(contents[34:])
	m.Write(name)
	if !hmac.Equal(m.Sum(nil), contents[2:34]) {
		return nil, errIntegrity
	}
	return contents[34:], nil
}

// importBlob does ActivateCredential and Import in software and returns
// the HMAC key the blob delivers.
func (d *softDevice) importBlob(raw []byte) ([]byte, error) {
	b, err := authblob.Parse(raw)
	if err != nil {
		return nil, err
	}
	// ActivateCredential (§8.4 reversed).
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, d.ek, b.Secret, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, fmt.Errorf("credential secret: %w", err)
	}
	encIdentity, err := unwrapHMAC(b.CredentialBlob, kdfa(seed, "INTEGRITY", nil, nil, 256), d.srkName)
	if err != nil {
		return nil, fmt.Errorf("credential: %w", err)
	}
	ident := cfbDecrypt(kdfa(seed, "STORAGE", d.srkName, nil, 128), encIdentity)
	if binary.BigEndian.Uint16(ident) != 16 || len(ident) != 18 {
		return nil, errors.New("credential is not a 16-byte key")
	}
	innerKey := ident[2:]

	// Import (§8.2, §8.3 reversed).
	seed, err = rsa.DecryptOAEP(sha256.New(), nil, d.srk, b.InSymSeed, []byte("DUPLICATE\x00"))
	if err != nil {
		return nil, fmt.Errorf("import seed: %w", err)
	}
	name := tpmName(b.Public)
	dupSensitive, err := unwrapHMAC(b.Duplicate, kdfa(seed, "INTEGRITY", nil, nil, 256), name)
	if err != nil {
		return nil, fmt.Errorf("duplicate: %w", err)
	}
	plain := cfbDecrypt(innerKey, cfbDecrypt(kdfa(seed, "STORAGE", name, nil, 128), dupSensitive))
	if len(plain) < 36 || binary.BigEndian.Uint16(plain) != 32 {
		return nil, errors.New("inner wrapper: no integrity digest")
	}
	sens2b := plain[34:]
	sum := sha256.Sum256(append(bytes.Clone(sens2b), name...))
	if !bytes.Equal(sum[:], plain[2:34]) {
		return nil, fmt.Errorf("inner wrapper: %w", errIntegrity)
	}
	// TPM2B_SENSITIVE: size, type, authValue, seedValue, bits.
	r := sens2b[2:]
	if binary.BigEndian.Uint16(r) != 0x0008 {
		return nil, errors.New("sensitive is not a keyed-hash key")
	}
	r = r[2:]
	var fields [3][]byte
	for i := range fields {
		if len(r) < 2 || len(r) < 2+int(binary.BigEndian.Uint16(r)) {
			return nil, errors.New("sensitive truncated")
		}
		n := int(binary.BigEndian.Uint16(r))
		fields[i], r = r[2:2+n], r[2+n:]
	}
	key := fields[2]
	// unique = SHA-256(seedValue ‖ key), as the TPM checks on Load.
	unique := sha256.Sum256(append(bytes.Clone(fields[1]), key...))
	if !bytes.Equal(unique[:], b.Public[len(b.Public)-32:]) {
		return nil, errors.New("public unique does not match the key")
	}
	return key, nil
}
