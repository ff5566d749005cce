package authblob

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// testKeys are software stand-ins for a TPM's EK and SRK. The real TPM
// check (activate and import in the reference simulator) lives with tpmdev;
// here an independent software implementation of the TPM's side checks
// every MAC and recovers the key, so a wrong label or context fails fast.
type testKeys struct {
	ek, srk       *rsa.PrivateKey
	ekPub, srkPub []byte // marshalled TPM2B_PUBLIC
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func loadTestKeys(t testing.TB) testKeys {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if keys.ek, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
		if keys.srk, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			t.Fatal(err)
		}
		keys.ekPub = publicFor(tpm2.RSAEKTemplate, keys.ek)
		keys.srkPub = publicFor(tpm2.RSASRKTemplate, keys.srk)
	})
	if keys.ek == nil {
		t.Fatal("test keys not generated")
	}
	return keys
}

// publicFor marshals a TPM2B_PUBLIC as a TPM would report for template
// with k's modulus.
func publicFor(template tpm2.TPMTPublic, k *rsa.PrivateKey) []byte {
	template.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()})
	return tpm2.Marshal(tpm2.New2B(template))
}

// kdfa is SP800-108 counter mode with HMAC-SHA256, written out here so the
// test does not trust the KDF Build uses.
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

func cfbDecrypt(key, ciphertext []byte) []byte {
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err)
	}
	out := make([]byte, len(ciphertext))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(out, ciphertext)
	return out
}

// sha256Name is nameAlg ‖ SHA-256(TPMT_PUBLIC).
func sha256Name(tpmtPublic []byte) []byte {
	d := sha256.Sum256(tpmtPublic)
	return append([]byte{0x00, 0x0B}, d[:]...)
}

// activateAndImport does in software what the TPM does with the blob
// (ActivateCredential with the SRK and EK, then Import under the SRK) and
// returns the HMAC key and the decrypted trailer.
func activateAndImport(k testKeys, blob *Blob) (key, trailer []byte, err error) {
	// ActivateCredential.
	seed2, err := rsa.DecryptOAEP(sha256.New(), nil, k.ek, blob.Secret, []byte("IDENTITY\x00"))
	if err != nil {
		return nil, nil, err
	}
	srkName := sha256Name(k.srkPub[2:])
	integrity, encIdentity := blob.CredentialBlob[2:34], blob.CredentialBlob[34:]
	m := hmac.New(sha256.New, kdfa(seed2, "INTEGRITY", nil, nil, 256))
	m.Write(encIdentity)
	m.Write(srkName)
	if !hmac.Equal(m.Sum(nil), integrity) {
		return nil, nil, errors.New("credential integrity (bound to the wrong SRK?)")
	}
	cred := cfbDecrypt(kdfa(seed2, "STORAGE", srkName, nil, 128), encIdentity)
	if binary.BigEndian.Uint16(cred) != 16 || len(cred) != 18 {
		return nil, nil, errors.New("credential is not a 16-byte TPM2B_DIGEST")
	}
	innerKey := cred[2:]

	// Import: outer wrapper.
	seed, err := rsa.DecryptOAEP(sha256.New(), nil, k.srk, blob.InSymSeed, []byte("DUPLICATE\x00"))
	if err != nil {
		return nil, nil, err
	}
	name := sha256Name(blob.Public)
	outer, dupSensitive := blob.Duplicate[2:34], blob.Duplicate[34:]
	m = hmac.New(sha256.New, kdfa(seed, "INTEGRITY", nil, nil, 256))
	m.Write(dupSensitive)
	m.Write(name)
	if !hmac.Equal(m.Sum(nil), outer) {
		return nil, nil, errors.New("outer integrity")
	}
	innerBlob := cfbDecrypt(innerKey, cfbDecrypt(kdfa(seed, "STORAGE", name, nil, 128), dupSensitive))

	// Import: inner wrapper.
	if binary.BigEndian.Uint16(innerBlob) != 32 {
		return nil, nil, errors.New("inner integrity size")
	}
	sens2b := innerBlob[34:]
	want := sha256.Sum256(append(append([]byte{}, sens2b...), name...))
	if !bytes.Equal(innerBlob[2:34], want[:]) {
		return nil, nil, errors.New("inner integrity")
	}
	sens, err := tpm2.Unmarshal[tpm2.TPM2BSensitive](sens2b)
	if err != nil {
		return nil, nil, err
	}
	contents, err := sens.Contents()
	if err != nil {
		return nil, nil, err
	}
	bits, err := contents.Sensitive.Bits()
	if err != nil {
		return nil, nil, err
	}
	if len(contents.AuthValue.Buffer) != 0 {
		return nil, nil, errors.New("identity key has an authValue")
	}
	// CryptValidateKeys: unique = H(seedValue ‖ key).
	unique := sha256.Sum256(append(append([]byte{}, contents.SeedValue.Buffer...), bits.Buffer...))
	if !bytes.Equal(blob.Public[16:], unique[:]) {
		return nil, nil, errors.New("unique does not match the sensitive area")
	}
	return bits.Buffer, cfbDecrypt(innerKey, blob.EncURIData), nil
}

func TestBuildRoundTrip(t *testing.T) {
	k := loadTestKeys(t)
	tests := []struct {
		name    string
		key     []byte
		trailer []byte
	}{
		{"production shape", bytes.Repeat([]byte{0xA5}, 32), []byte("contoso.azure-devices.net/devices/dev1")},
		{"empty trailer", bytes.Repeat([]byte{1}, 32), nil},
		{"longest key and trailer", bytes.Repeat([]byte{2}, 64), bytes.Repeat([]byte{'x'}, MaxTrailer)},
		{"one-byte key", []byte{7}, []byte("t")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := Build(rand.Reader, k.ekPub, k.srkPub, tc.key, tc.trailer)
			if err != nil {
				t.Fatal(err)
			}
			blob, err := Parse(raw)
			if err != nil {
				t.Fatal(err)
			}
			if len(blob.EncURIData) != len(tc.trailer) || blob.EncURIData == nil {
				t.Errorf("trailer of %d bytes, want %d (always present)", len(blob.EncURIData), len(tc.trailer))
			}
			gotKey, gotTrailer, err := activateAndImport(k, blob)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(gotKey, tc.key) || !bytes.Equal(gotTrailer, tc.trailer) {
				t.Errorf("recovered key %x trailer %q", gotKey, gotTrailer)
			}
		})
	}
}

// TestBuildProductionSizes: a 32-byte key gives exactly the field sizes of
// the real blobs (§6).
func TestBuildProductionSizes(t *testing.T) {
	k := loadTestKeys(t)
	raw, err := Build(rand.Reader, k.ekPub, k.srkPub, make([]byte, 32), make([]byte, 108))
	if err != nil {
		t.Fatal(err)
	}
	real := productionBlobs(t)["assignedStatus"].blob
	if len(raw) != len(real) {
		t.Fatalf("built %d bytes, production %d", len(raw), len(real))
	}
	// Everything but key material matches production: sizes and the public
	// area up to its unique value.
	for _, off := range []int{0, 2, 54, 312, 314, 456, 714, 764} {
		if !bytes.Equal(raw[off:off+2], real[off:off+2]) {
			t.Errorf("size at %d: %x, production %x", off, raw[off:off+2], real[off:off+2])
		}
	}
	if !bytes.Equal(raw[714:732], real[714:732]) {
		t.Errorf("identity public %x, production %x", raw[714:732], real[714:732])
	}
}

func TestBuildBindsToSRK(t *testing.T) {
	k := loadTestKeys(t)
	raw, err := Build(rand.Reader, k.ekPub, k.srkPub, make([]byte, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	other := k
	other.srkPub = bytes.Clone(k.srkPub)
	other.srkPub[len(other.srkPub)-1] ^= 1 // another SRK's Name
	if _, _, err := activateAndImport(other, blob); err == nil {
		t.Fatal("credential activated with a different SRK Name")
	}
}

func TestBuildRejects(t *testing.T) {
	k := loadTestKeys(t)
	signingKey := tpm2.RSASRKTemplate
	signingKey.ObjectAttributes.Decrypt = false
	signingKey.ObjectAttributes.SignEncrypt = true
	tests := []struct {
		name             string
		ek, srk, key, tr []byte
	}{
		{"no key", k.ekPub, k.srkPub, nil, nil},
		{"key too long", k.ekPub, k.srkPub, make([]byte, 65), nil},
		{"trailer too long", k.ekPub, k.srkPub, make([]byte, 32), make([]byte, MaxTrailer+1)},
		{"EK garbage", []byte{0, 1, 2}, k.srkPub, make([]byte, 32), nil},
		{"SRK is a signing key", k.ekPub, publicFor(signingKey, k.srk), make([]byte, 32), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Build(rand.Reader, tc.ek, tc.srk, tc.key, tc.tr); err == nil {
				t.Fatal("built")
			}
		})
	}
}

func TestValidateKeys(t *testing.T) {
	k := loadTestKeys(t)
	ecc := tpm2.ECCSRKTemplate
	small := tpm2.RSASRKTemplate
	small.Parameters = rsaParms(1024, 128)
	aes256 := tpm2.RSAEKTemplate
	aes256.Parameters = rsaParms(2048, 256)
	unrestricted := tpm2.RSAEKTemplate
	unrestricted.ObjectAttributes.Restricted = false
	trailing := append(bytes.Clone(k.ekPub), 0)
	binary.BigEndian.PutUint16(trailing, uint16(len(trailing)-2))

	tests := []struct {
		name string
		pub  []byte
		ok   bool
	}{
		{"TCG EK", k.ekPub, true},
		{"TCG SRK", k.srkPub, true},
		{"empty", nil, false},
		{"size field wrong", append(bytes.Clone(k.ekPub), 0), false},
		{"trailing byte inside the TPM2B", trailing, false},
		{"ECC", tpm2.Marshal(tpm2.New2B(ecc)), false},
		{"RSA-1024", tpm2.Marshal(tpm2.New2B(small)), false},
		{"AES-256", publicFor(aes256, k.ek), false},
		{"unrestricted", publicFor(unrestricted, k.ek), false},
		{"template with zero modulus", tpm2.Marshal(tpm2.New2B(tpm2.RSAEKTemplate)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for what, validate := range map[string]func([]byte) error{"EK": ValidateEK, "SRK": ValidateSRK} {
				err := validate(tc.pub)
				if (err == nil) != tc.ok {
					t.Errorf("%s: error %v, want ok=%t", what, err, tc.ok)
				}
				if err != nil && !errors.Is(err, ErrBadKey) {
					t.Errorf("%s: %v does not wrap ErrBadKey", what, err)
				}
			}
		})
	}
}

// rsaParms is a restricted RSA key's parameters with AES-CFB.
func rsaParms(keyBits, aesBits int) tpm2.TPMUPublicParms {
	return tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
		Symmetric: tpm2.TPMTSymDefObject{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(aesBits)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		},
		KeyBits: tpm2.TPMIRSAKeyBits(keyBits),
	})
}

func TestSameEK(t *testing.T) {
	k := loadTestKeys(t)
	// The same modulus under the TCG template and the empty-unique variant's
	// attributes is still the same key.
	variant := tpm2.RSAEKTemplate
	variant.ObjectAttributes.UserWithAuth = true
	tests := []struct {
		name string
		a, b []byte
		same bool
	}{
		{"identical", k.ekPub, bytes.Clone(k.ekPub), true},
		{"other attributes, same modulus", k.ekPub, publicFor(variant, k.ek), true},
		{"other key", k.ekPub, publicFor(tpm2.RSAEKTemplate, k.srk), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			same, err := SameEK(tc.a, tc.b)
			if err != nil || same != tc.same {
				t.Errorf("SameEK = %t, %v; want %t", same, err, tc.same)
			}
		})
	}
	if _, err := SameEK(k.ekPub, []byte{1}); err == nil {
		t.Error("garbage compared without error")
	}
}

func FuzzValidateEK(f *testing.F) {
	k := loadTestKeys(f)
	f.Add(k.ekPub)
	f.Add(k.srkPub)
	f.Add(tpm2.Marshal(tpm2.New2B(tpm2.ECCSRKTemplate)))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ValidateEK(data)
		if err != nil && !errors.Is(err, ErrBadKey) {
			t.Fatalf("%v does not wrap ErrBadKey", err)
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	k := loadTestKeys(b)
	key := make([]byte, 32)
	trailer := []byte("contoso.azure-devices.net/devices/dev1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(rand.Reader, k.ekPub, k.srkPub, key, trailer); err != nil {
			b.Fatal(err)
		}
	}
}
