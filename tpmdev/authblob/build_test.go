package authblob

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
	"github.com/google/go-tpm/tpm2"
)

// testDevice is a software stand-in for a TPM's EK and SRK. The real TPM
// check (activate and import in the reference simulator) lives with tpmdev;
// here softtpm, an independent implementation of the TPM's side with its
// own KDF, checks every MAC and recovers the key, so a wrong label or
// context fails fast.
func testDevice() *softtpm.Device {
	return softtpm.New(softtpm.Key(0), softtpm.Key(1))
}

func TestBuildRoundTrip(t *testing.T) {
	t.Parallel()
	d := testDevice()
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
			raw, err := Build(rand.Reader, d.EKPublic, d.SRKPublic, tc.key, tc.trailer)
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
			gotKey, gotTrailer, err := d.Import(raw)
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
	t.Parallel()
	d := testDevice()
	raw, err := Build(rand.Reader, d.EKPublic, d.SRKPublic, make([]byte, 32), make([]byte, 108))
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
	t.Parallel()
	d := testDevice()
	raw, err := Build(rand.Reader, d.EKPublic, d.SRKPublic, make([]byte, 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	other := *d
	other.SRKPublic = bytes.Clone(d.SRKPublic)
	other.SRKPublic[len(other.SRKPublic)-1] ^= 1 // another SRK's Name
	if _, _, err := other.Import(raw); !errors.Is(err, softtpm.ErrIntegrity) {
		t.Fatalf("credential activated with a different SRK Name: %v, want an integrity failure", err)
	}
}

func TestBuildRejects(t *testing.T) {
	t.Parallel()
	d := testDevice()
	signingKey := tpm2.RSASRKTemplate
	signingKey.ObjectAttributes.Decrypt = false
	signingKey.ObjectAttributes.SignEncrypt = true
	tests := []struct {
		name             string
		ek, srk, key, tr []byte
	}{
		{"no key", d.EKPublic, d.SRKPublic, nil, nil},
		{"key too long", d.EKPublic, d.SRKPublic, make([]byte, 65), nil},
		{"trailer too long", d.EKPublic, d.SRKPublic, make([]byte, 32), make([]byte, MaxTrailer+1)},
		{"EK garbage", []byte{0, 1, 2}, d.SRKPublic, make([]byte, 32), nil},
		{"SRK is a signing key", d.EKPublic, softtpm.Public(signingKey, &d.SRK.PublicKey), make([]byte, 32), nil},
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
	t.Parallel()
	d := testDevice()
	ecc := tpm2.ECCSRKTemplate
	small := tpm2.RSASRKTemplate
	small.Parameters = rsaParms(1024, 128)
	aes256 := tpm2.RSAEKTemplate
	aes256.Parameters = rsaParms(2048, 256)
	unrestricted := tpm2.RSAEKTemplate
	unrestricted.ObjectAttributes.Restricted = false
	trailing := append(bytes.Clone(d.EKPublic), 0)
	binary.BigEndian.PutUint16(trailing, uint16(len(trailing)-2))

	tests := []struct {
		name string
		pub  []byte
		ok   bool
	}{
		{"TCG EK", d.EKPublic, true},
		{"TCG SRK", d.SRKPublic, true},
		{"empty", nil, false},
		{"size field wrong", append(bytes.Clone(d.EKPublic), 0), false},
		{"trailing byte inside the TPM2B", trailing, false},
		{"ECC", tpm2.Marshal(tpm2.New2B(ecc)), false},
		{"RSA-1024", tpm2.Marshal(tpm2.New2B(small)), false},
		{"AES-256", softtpm.Public(aes256, &d.EK.PublicKey), false},
		{"unrestricted", softtpm.Public(unrestricted, &d.EK.PublicKey), false},
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
	t.Parallel()
	d := testDevice()
	// The same modulus under the TCG template and the empty-unique variant's
	// attributes is still the same key.
	variant := tpm2.RSAEKTemplate
	variant.ObjectAttributes.UserWithAuth = true
	tests := []struct {
		name string
		a, b []byte
		same bool
	}{
		{"identical", d.EKPublic, bytes.Clone(d.EKPublic), true},
		{"other attributes, same modulus", d.EKPublic, softtpm.Public(variant, &d.EK.PublicKey), true},
		{"other key", d.EKPublic, softtpm.Public(tpm2.RSAEKTemplate, &d.SRK.PublicKey), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			same, err := SameEK(tc.a, tc.b)
			if err != nil || same != tc.same {
				t.Errorf("SameEK = %t, %v; want %t", same, err, tc.same)
			}
		})
	}
	if _, err := SameEK(d.EKPublic, []byte{1}); err == nil {
		t.Error("garbage compared without error")
	}
}

func FuzzValidateEK(f *testing.F) {
	d := testDevice()
	f.Add(d.EKPublic)
	f.Add(d.SRKPublic)
	f.Add(tpm2.Marshal(tpm2.New2B(tpm2.ECCSRKTemplate)))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ValidateEK(data)
		if err != nil && !errors.Is(err, ErrBadKey) {
			t.Fatalf("%v does not wrap ErrBadKey", err)
		}
	})
}

func BenchmarkBuild(b *testing.B) {
	d := testDevice()
	key := make([]byte, 32)
	trailer := []byte("contoso.azure-devices.net/devices/dev1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Build(rand.Reader, d.EKPublic, d.SRKPublic, key, trailer); err != nil {
			b.Fatal(err)
		}
	}
}
