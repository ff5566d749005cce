package dps

import (
	"errors"
	"strings"
	"testing"
)

// TestRegistrationID uses vectors computed independently (Python:
// base64.b32encode(hashlib.sha256(ek).digest()).lower().rstrip("=")). The
// protocol document's example regID cannot be reproduced: the simulated EK
// it came from is not recorded.
func TestRegistrationID(t *testing.T) {
	t.Parallel()
	ek := append(append([]byte{}, testEK...), make([]byte, 256)...)
	for i := range 256 {
		ek[len(testEK)+i] = byte(i)
	}
	tests := []struct {
		name string
		ek   []byte
		want string
	}{
		{"TCG EK header with modulus 00 01 … FF", ek, "n3xf4ovmyolsbw2hxustntghu4pymlkajeqmgunpry3j2k7ifrya"},
		{"empty input", nil, "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbkq"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RegistrationID(tc.ek)
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
			if len(got) != 52 || ValidRegistrationID(got) != nil {
				t.Errorf("%s is not a valid 52-character registration ID", got)
			}
		})
	}
	if len(ek) != 316 {
		t.Fatalf("test EK is %d bytes, a TCG EK TPM2B_PUBLIC is 316", len(ek))
	}
}

func TestValidRegistrationID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id string
		ok bool
	}{
		{testRegID, true},
		{"a", true},
		{"Device-01.site_a:x", true},
		{strings.Repeat("a", 128), true},
		{"", false},
		{strings.Repeat("a", 129), false},
		{"-a", false},
		{"a.", false},
		{"a/b", false},
		{"a b", false},
		{"a%2Fb", false},
		{"ä", false},
	}
	for _, tc := range tests {
		err := ValidRegistrationID(tc.id)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrRegistrationID)) {
			t.Errorf("ValidRegistrationID(%q) = %v, want ok=%t", tc.id, err, tc.ok)
		}
	}
}
