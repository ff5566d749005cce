package authblob

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// productionBlobs reads the two real DPS blobs kept in the repository's
// testdata, with the sizes recorded beside them.
func productionBlobs(t testing.TB) map[string]struct {
	blob  []byte
	sizes map[string]int
} {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "dps", "production-blobs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]struct {
		blob  []byte
		sizes map[string]int
	}{}
	for _, name := range []string{"challenge401", "assignedStatus"} {
		var entry struct {
			Body struct {
				AuthenticationKey string `json:"authenticationKey"`
			} `json:"body"`
			Sizes map[string]int `json:"sizes"`
			Total int            `json:"total"`
		}
		if err := json.Unmarshal(doc[name], &entry); err != nil {
			t.Fatal(name, err)
		}
		b, err := base64.StdEncoding.DecodeString(entry.Body.AuthenticationKey)
		if err != nil {
			t.Fatal(name, err)
		}
		if len(b) != entry.Total {
			t.Fatalf("%s: %d bytes, testdata says %d", name, len(b), entry.Total)
		}
		out[name] = struct {
			blob  []byte
			sizes map[string]int
		}{b, entry.Sizes}
	}
	return out
}

func TestParseProductionBlobs(t *testing.T) {
	t.Parallel()
	for name, tc := range productionBlobs(t) {
		t.Run(name, func(t *testing.T) {
			b, err := Parse(tc.blob)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]int{
				"credentialBlob":    len(b.CredentialBlob),
				"secret":            len(b.Secret),
				"duplicate":         len(b.Duplicate),
				"encryptedSeed":     len(b.InSymSeed),
				"identityKeyPublic": len(b.Public),
				"encUriData":        len(b.EncURIData),
			}
			for field, want := range tc.sizes {
				if got[field] != want {
					t.Errorf("%s: %d bytes, want %d", field, got[field], want)
				}
			}
			if !bytes.Equal(assemble(b), tc.blob) {
				t.Error("fields do not reassemble into the blob")
			}
		})
	}
}

// TestParseTruncated cuts a production blob at every offset. The one prefix
// that is valid is the blob without its trailer (it ends at offset 764,
// where the trailer's size field would start, §6), which clients must accept.
func TestParseTruncated(t *testing.T) {
	t.Parallel()
	full := productionBlobs(t)["challenge401"].blob
	const withoutTrailer = 764
	for n := 0; n < len(full); n++ {
		b, err := Parse(full[:n])
		if n == withoutTrailer {
			if err != nil || b.EncURIData != nil {
				t.Errorf("blob without trailer: %v, trailer %v", err, b)
			}
			continue
		}
		if err == nil {
			t.Fatalf("prefix of %d bytes parsed", n)
		}
		if !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d bytes: error %v does not wrap ErrMalformed", n, err)
		}
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	good := productionBlobs(t)["challenge401"].blob
	with := func(off int, patch ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], patch)
		return b
	}
	tests := []struct {
		name  string
		blob  []byte
		field string
		off   int
		want  string
	}{
		{"empty", nil, "credentialBlob", 0, "missing"},
		{"credential too big", with(0, 0x00, 0x80), "credentialBlob", 0, "outside"},
		{"credential HMAC size", with(2, 0x00, 0x14), "credentialBlob", 0, "integrityHMAC size 20"},
		{"secret empty", with(54, 0x00, 0x00), "secret", 54, "size 0"},
		{"secret too big", with(54, 0x02, 0x01), "secret", 54, "outside 1..512"},
		{"secret beyond end", good[:200], "secret", 54, "size 256 but only 144 bytes left"},
		{"outer HMAC size", with(314, 0x00, 0x30), "duplicate", 312, "outerHMAC size 48"},
		{"seed size", with(456, 0x02, 0x01), "encryptedSeed", 456, "outside"},
		{"public size", with(714, 0x00, 0x31), "identityKeyPublic", 714, "want 48"},
		{"public type RSA", with(716, 0x00, 0x01), "identityKeyPublic", 714, "type 0x0001"},
		{"public nameAlg", with(718, 0x00, 0x04), "identityKeyPublic", 714, "nameAlg 0x0004"},
		{"public fixedTPM", with(720, 0x00, 0x04, 0x04, 0x42), "identityKeyPublic", 714, "objectAttributes"},
		{"public not sign", with(720, 0x00, 0x00, 0x04, 0x40), "identityKeyPublic", 714, "objectAttributes"},
		{"public policy", with(724, 0x00, 0x20), "identityKeyPublic", 714, "authPolicy size 32"},
		{"public scheme", with(726, 0x00, 0x0A), "identityKeyPublic", 714, "scheme 0x000A"},
		{"public unique", with(730, 0x00, 0x1F), "identityKeyPublic", 714, "unique size 31"},
		{"trailer one byte", good[:765], "encUriData", 764, "1 byte left"},
		{"trailer too long", append(good[:764:764], append([]byte{0x10, 0x01}, make([]byte, 4097)...)...), "encUriData", 764, "outside 0..4096"},
		{"trailer short", with(764, 0x00, 0x9B), "encUriData", 764, "size 155 but only 154"},
		{"bytes after trailer", append(bytes.Clone(good), 0), "encUriData", 764, "1 bytes after"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.blob)
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v, want a *FormatError", err)
			}
			if fe.Field != tc.field || fe.Offset != tc.off || !strings.Contains(fe.Reason, tc.want) {
				t.Errorf("got %q, want field %s at %d containing %q", err, tc.field, tc.off, tc.want)
			}
		})
	}
}

func TestParseEmptyTrailer(t *testing.T) {
	t.Parallel()
	good := productionBlobs(t)["assignedStatus"].blob
	b, err := Parse(append(good[:764:764], 0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if b.EncURIData == nil || len(b.EncURIData) != 0 {
		t.Errorf("trailer %v, want present and empty", b.EncURIData)
	}
}

// assemble writes a parsed blob back in wire form.
func assemble(b *Blob) []byte {
	var out []byte
	fields := [][]byte{b.CredentialBlob, b.Secret, b.Duplicate, b.InSymSeed, b.Public}
	if b.EncURIData != nil {
		fields = append(fields, b.EncURIData)
	}
	for _, f := range fields {
		out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

func FuzzParse(f *testing.F) {
	for _, tc := range productionBlobs(f) {
		f.Add(tc.blob)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse(data)
		if err != nil {
			if b != nil {
				t.Fatal("blob and error both returned")
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// Whatever parses is exactly the input, field by field.
		if !bytes.Equal(assemble(b), data) {
			t.Fatal("parsed fields do not reassemble into the input")
		}
		if len(b.EncURIData) > MaxTrailer || len(b.Public) != identityPublicSize {
			t.Fatal("a bound was not enforced")
		}
	})
}

func BenchmarkParse(b *testing.B) {
	blob := productionBlobs(b)["challenge401"].blob
	b.ReportAllocs()
	b.SetBytes(int64(len(blob)))
	for b.Loop() {
		if _, err := Parse(blob); err != nil {
			b.Fatal(err)
		}
	}
}
