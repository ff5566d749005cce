package main

import (
	"testing"
	"time"
)

func TestUpstreamVersion(t *testing.T) {
	committed := time.Date(2026, 11, 26, 17, 47, 25, 0, time.FixedZone("CET", 3600))
	tests := []struct {
		describe string
		want     string
		wantErr  bool
	}{
		{describe: "v1.2.0", want: "1.2.0"},
		{describe: "1.2.0", want: "1.2.0"},
		{describe: "v1.2.0-rc1", wantErr: true}, // a hyphen would end the upstream version
		{describe: "v1.2.0~rc1", want: "1.2.0~rc1"},
		{describe: "v1.2.0-3-g61bb585", want: "1.2.0+git3.61bb585"},
		{describe: "v1.2.0-3-g61bb585-dirty", want: "1.2.0+git3.61bb585+dirty"},
		{describe: "61bb585", want: "0~git20261126164725.61bb585"},
		{describe: "61bb585-dirty", want: "0~git20261126164725.61bb585+dirty"},
		{describe: "release-1", wantErr: true},
		{describe: "", wantErr: true},
		{describe: "-dirty", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.describe, func(t *testing.T) {
			got, err := upstreamVersion(tt.describe, committed)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("upstreamVersion(%q) = %q, want an error", tt.describe, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("upstreamVersion(%q) = %q, want %q", tt.describe, got, tt.want)
			}
		})
	}
}
