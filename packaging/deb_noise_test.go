package main

import "testing"

func TestBinaryNoise(t *testing.T) {
	for _, tt := range []struct {
		line string
		want bool
	}{
		{"I: dpsd: spelling-error-in-binary NaM Name [usr/bin/dpsd]\n", true},
		{"I: dpsd: spelling-error-in-binary incomming incoming [usr/bin/dpsd]\n", false},
		{"W: dpsd: binary-without-manpage [usr/bin/dpsd]\n", false},
	} {
		if got := binaryNoise(tt.line); got != tt.want {
			t.Errorf("binaryNoise(%q) = %v, want %v", tt.line, got, tt.want)
		}
	}
}
