package sas

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The vectors of docs/dps-tpm-protocol.md §4: key 00 01 … 1F, se 1700000000.
var (
	vectorKey = func() []byte {
		k := make([]byte, 32)
		for i := range k {
			k[i] = byte(i)
		}
		return k
	}()
	vectorExpiry = time.Unix(1700000000, 0)
	vectorRegID  = "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq"
	dpsResource  = "0ne00000A0A/registrations/" + vectorRegID
)

// softSigner is HMAC-SHA256 in software, standing in for the TPM.
func softSigner(key []byte) Signer {
	return func(_ context.Context, data []byte) ([]byte, error) {
		m := hmac.New(sha256.New, key)
		m.Write(data)
		return m.Sum(nil), nil
	}
}

func TestNewVectors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, resource, keyName, want string
	}{
		{
			"DPS §4.1 row 2", dpsResource, "registration",
			"SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Frglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq&sig=HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4%3D&se=1700000000&skn=registration",
		},
		{
			"hub §4.2", "contoso.azure-devices.net/devices/mydevice", "",
			"SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fmydevice&sig=MMoCnI2BAhWHPnwlQqeHtkyaxSTTg9VG7Vvm5vAM5cI%3D&se=1700000000",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := New(context.Background(), tc.resource, vectorExpiry, tc.keyName, softSigner(vectorKey))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestVerifyVectors: the three sr encodings real clients send (§4.1) all
// verify against the same request resource; the hub token (§4.2) too.
func TestVerifyVectors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, sr, sig, resource string
	}{
		{"C SDK, lowercase hex", "0ne00000A0A%2fregistrations%2f" + vectorRegID, "IMgRjAkIcpN6AV41UvMZEQGM0hDcAHukJf5kNRRom5Q=", dpsResource},
		{"Node/C#, uppercase hex", "0ne00000A0A%2Fregistrations%2F" + vectorRegID, "HWWFujMbxyUm4jmquys+PaCy5GGXYmT7+2RAkATRLv4=", dpsResource},
		{"IoT Identity Service, lowercase unencoded", "0ne00000a0a/registrations/" + vectorRegID, "uQcLtrmmSkY3/h8Wum3SxyriGm4CLi1T412UzMMp1kI=", dpsResource},
		{"hub device", "contoso.azure-devices.net%2Fdevices%2Fmydevice", "MMoCnI2BAhWHPnwlQqeHtkyaxSTTg9VG7Vvm5vAM5cI=", "contoso.azure-devices.net/devices/mydevice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lowerHex := strings.NewReplacer("%2B", "%2b", "%2F", "%2f", "%3D", "%3d")
			// sig: uppercase hex, lowercase hex (C SDK), not encoded at all.
			for _, sigEnc := range []string{url.QueryEscape(tc.sig), lowerHex.Replace(url.QueryEscape(tc.sig)), tc.sig} {
				tok, err := Parse("SharedAccessSignature sr=" + tc.sr + "&sig=" + sigEnc + "&se=1700000000&skn=registration")
				if err != nil {
					t.Fatal(err)
				}
				if tok.RawSR != tc.sr {
					t.Errorf("RawSR %q, want %q", tok.RawSR, tc.sr)
				}
				if err := tok.Verify(vectorKey, tc.resource, vectorExpiry, 0); err != nil {
					t.Errorf("sig %s: %v", sigEnc, err)
				}
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	good, err := New(context.Background(), dpsResource, vectorExpiry, "registration", softSigner(vectorKey))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	otherKey := append([]byte{0xFF}, vectorKey[1:]...)
	tampered := tok
	tampered.RawSR = strings.Replace(tok.RawSR, "0ne", "0nf", 1)
	later := tok
	later.Expiry = tok.Expiry.Add(time.Second)

	tests := []struct {
		name     string
		tok      Token
		key      []byte
		resource string
		now      time.Time
		skew     time.Duration
		want     error
	}{
		{"valid at expiry", tok, vectorKey, dpsResource, vectorExpiry, 0, nil},
		{"valid within skew", tok, vectorKey, dpsResource, vectorExpiry.Add(5 * time.Minute), 5 * time.Minute, nil},
		{"expired beyond skew", tok, vectorKey, dpsResource, vectorExpiry.Add(5*time.Minute + time.Second), 5 * time.Minute, ErrExpired},
		{"resource case ignored", tok, vectorKey, strings.ToUpper(dpsResource), vectorExpiry, 0, nil},
		{"other registration", tok, vectorKey, dpsResource + "x", vectorExpiry, 0, ErrResource},
		{"prefix is not enough for DPS", tok, vectorKey, dpsResource + "/x", vectorExpiry, 0, ErrResource},
		{"wrong key", tok, otherKey, dpsResource, vectorExpiry, 0, ErrSignature},
		{"sr changed after signing", tampered, vectorKey, "0nf00000A0A/registrations/" + vectorRegID, vectorExpiry, 0, ErrSignature},
		{"expiry extended after signing", later, vectorKey, dpsResource, vectorExpiry, 0, ErrSignature},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.tok.Verify(tc.key, tc.resource, tc.now, tc.skew)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyScope(t *testing.T) {
	t.Parallel()
	const hub = "contoso.azure-devices.net"
	tests := []struct {
		name, resource, covered string
		ok                      bool
	}{
		{"exact", hub + "/devices/mydevice", hub + "/devices/mydevice", true},
		{"sub-resource", hub + "/devices/mydevice", hub + "/devices/mydevice/messages/events", true},
		{"trailing slash on sr", hub + "/devices/mydevice/", hub + "/devices/mydevice", true},
		{"case", "Contoso.Azure-Devices.NET/devices/MyDevice", hub + "/devices/mydevice", true},
		{"longer device id", hub + "/devices/my", hub + "/devices/mydevice", false},
		{"other device", hub + "/devices/other", hub + "/devices/mydevice", false},
		{"narrower than the request", hub + "/devices/mydevice/messages", hub + "/devices/mydevice", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(context.Background(), tc.resource, vectorExpiry, "", softSigner(vectorKey))
			if err != nil {
				t.Fatal(err)
			}
			tok, err := Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			err = tok.VerifyScope(vectorKey, tc.covered, vectorExpiry, 0)
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrResource)) {
				t.Errorf("error %v, want ok=%t", err, tc.ok)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	const sig = "HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4%3D"
	tests := []struct{ name, token string }{
		{"empty", ""},
		{"no scheme", "sr=a&sig=" + sig + "&se=1"},
		{"scheme without space", "SharedAccessSignaturesr=a&sig=" + sig + "&se=1"},
		{"bearer", "Bearer abc"},
		{"missing sr", "SharedAccessSignature sig=" + sig + "&se=1700000000"},
		{"missing sig", "SharedAccessSignature sr=a&se=1700000000"},
		{"missing se", "SharedAccessSignature sr=a&sig=" + sig},
		{"empty sr", "SharedAccessSignature sr=&sig=" + sig + "&se=1700000000"},
		{"field without =", "SharedAccessSignature sr=a&sig=" + sig + "&se=1700000000&skn"},
		{"unknown field", "SharedAccessSignature sr=a&sig=" + sig + "&se=1700000000&x=1"},
		{"repeated sr", "SharedAccessSignature sr=a&sr=b&sig=" + sig + "&se=1700000000"},
		{"bad escape in sr", "SharedAccessSignature sr=a%2&sig=" + sig + "&se=1700000000"},
		{"sig not base64", "SharedAccessSignature sr=a&sig=!!&se=1700000000"},
		{"sig not 32 bytes", "SharedAccessSignature sr=a&sig=AAAAAAAAAAAAAAAAAAAAAA%3D%3D&se=1700000000"},
		{"sig only a line break", "SharedAccessSignature sr=0&sig=\r&se=1"},
		{"sig unpadded", "SharedAccessSignature sr=a&sig=HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4&se=1700000000"},
		{"se not a number", "SharedAccessSignature sr=a&sig=" + sig + "&se=soon"},
		{"se leading zero", "SharedAccessSignature sr=a&sig=" + sig + "&se=01700000000"},
		{"se negative", "SharedAccessSignature sr=a&sig=" + sig + "&se=-1"},
		{"se zero", "SharedAccessSignature sr=a&sig=" + sig + "&se=0"},
		{"se overflow", "SharedAccessSignature sr=a&sig=" + sig + "&se=99999999999999999999"},
		{"too long", "SharedAccessSignature sr=" + strings.Repeat("a", maxTokenLen) + "&sig=" + sig + "&se=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.token); !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v, want ErrMalformed", err)
			}
		})
	}
}

func TestParseFieldOrder(t *testing.T) {
	t.Parallel()
	tok, err := Parse("SharedAccessSignature skn=registration&se=1700000000&sig=HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4%3D&sr=0ne00000A0A%2Fregistrations%2F" + vectorRegID)
	if err != nil {
		t.Fatal(err)
	}
	if tok.KeyName != "registration" || !tok.Expiry.Equal(vectorExpiry) || tok.Resource != dpsResource {
		t.Errorf("parsed %+v", tok)
	}
	if err := tok.Verify(vectorKey, dpsResource, vectorExpiry, 0); err != nil {
		t.Error(err)
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	signErr := errors.New("TPM gone")
	failing := func(context.Context, []byte) ([]byte, error) { return nil, signErr }
	if _, err := New(context.Background(), dpsResource, vectorExpiry, "", failing); !errors.Is(err, signErr) {
		t.Errorf("signer error lost: %v", err)
	}
	if _, err := New(context.Background(), "", vectorExpiry, "", softSigner(vectorKey)); err == nil {
		t.Error("empty resource accepted")
	}
	if _, err := New(context.Background(), dpsResource, time.Time{}, "", softSigner(vectorKey)); err == nil {
		t.Error("zero expiry accepted")
	}
}

// TestNewEscapes: a resource with characters that mean something in a
// token still round-trips and verifies.
func TestNewEscapes(t *testing.T) {
	t.Parallel()
	resource := "hub.example/devices/a b&c=d+e%f"
	s, err := New(context.Background(), resource, vectorExpiry, "k&n", softSigner(vectorKey))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Resource != resource || tok.KeyName != "k&n" {
		t.Errorf("parsed %+v", tok)
	}
	if err := tok.Verify(vectorKey, resource, vectorExpiry, 0); err != nil {
		t.Error(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Frglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq&sig=HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4%3D&se=1700000000&skn=registration")
	f.Add("SharedAccessSignature sr=contoso.azure-devices.net%2Fdevices%2Fmydevice&sig=MMoCnI2BAhWHPnwlQqeHtkyaxSTTg9VG7Vvm5vAM5cI%3D&se=1700000000")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if tok.Expiry.Unix() <= 0 || len(tok.Sig) == 0 || tok.RawSR == "" {
			t.Fatalf("accepted %+v", tok)
		}
		_ = tok.Verify(vectorKey, tok.Resource, tok.Expiry, 0)
		_ = tok.VerifyScope(vectorKey, tok.Resource, tok.Expiry, 0)
		// Whatever resource and key name came in, a token New makes for
		// them parses back to the same values and verifies.
		again, err := New(context.Background(), tok.Resource, tok.Expiry, tok.KeyName, softSigner(vectorKey))
		if err != nil {
			return // an empty decoded resource
		}
		tok2, err := Parse(again)
		if err != nil {
			if len(again) > maxTokenLen {
				return
			}
			t.Fatalf("New made %q, which does not parse: %v", again, err)
		}
		if tok2.Resource != tok.Resource || tok2.KeyName != tok.KeyName || !tok2.Expiry.Equal(tok.Expiry) {
			t.Fatalf("round trip changed %+v into %+v", tok, tok2)
		}
		if err := tok2.Verify(vectorKey, tok.Resource, tok.Expiry, 0); err != nil {
			t.Fatal(err)
		}
	})
}

func BenchmarkNew(b *testing.B) {
	sign := softSigner(vectorKey)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := New(context.Background(), dpsResource, vectorExpiry, "registration", sign); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseVerify(b *testing.B) {
	s, err := New(context.Background(), dpsResource, vectorExpiry, "registration", softSigner(vectorKey))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		tok, err := Parse(s)
		if err != nil {
			b.Fatal(err)
		}
		if err := tok.Verify(vectorKey, dpsResource, vectorExpiry, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestResources pins the two resource shapes of §4 to the strings the
// vectors above sign.
func TestResources(t *testing.T) {
	tests := []struct{ name, got, want string }{
		{"DPS registration", RegistrationResource("0ne00000A0A", vectorRegID), dpsResource},
		{"hub device", DeviceResource("contoso.azure-devices.net", "mydevice"), "contoso.azure-devices.net/devices/mydevice"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}
