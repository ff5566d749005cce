package tpmhandle

import "testing"

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Handle
		ok   bool
	}{
		{"0x81000100", 0x81000100, true},
		{"0X817FFFFF", 0x817FFFFF, true},
		{"0x810001aB", 0x810001ab, true},
		{"0x81010001", EK, true},
		{"81000100", 0, false},
		{"0x81800000", 0, false},
		{"0x80000000", 0, false},
		{"0x1", 0, false},
		{"0x", 0, false},
		{"0x1000000000", 0, false},
		{"", 0, false},
	} {
		got, err := Parse(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestString(t *testing.T) {
	for _, tc := range []struct {
		h    Handle
		want string
	}{
		{SRK, "0x81000001"},
		{EK, "0x81010001"},
		{0x810001AB, "0x810001ab"},
		{1, "0x00000001"},
	} {
		if got := tc.h.String(); got != tc.want {
			t.Errorf("%#x.String() = %q, want %q", uint32(tc.h), got, tc.want)
		}
	}
}
