package main

import "testing"

func TestMirrorFromSources(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian http://other.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`
	oneLine := `# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] https://packages.example/apt cloud-sdk main
deb [ signed-by=/k.gpg ] http://mirror.example/debian bookworm main non-free-firmware
`
	tests := []struct {
		name, got, want string
	}{
		{name: "deb822", got: mirrorFromDeb822(deb822, "bookworm"), want: "http://deb.debian.org/debian"},
		{name: "deb822 other suite", got: mirrorFromDeb822(deb822, "trixie"), want: ""},
		{name: "one-line", got: mirrorFromOneLine(oneLine, "bookworm"), want: "http://mirror.example/debian"},
		{name: "one-line other suite", got: mirrorFromOneLine(oneLine, "trixie"), want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}
