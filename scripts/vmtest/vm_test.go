package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestReadReports: the serial port adds carriage returns and the kernel or
// systemd may write to it too; only the driver's JSON lines count.
func TestReadReports(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       []report
	}{
		{name: "empty", text: "", want: nil},
		{name: "carriage returns", text: "{\"phase\":\"p\",\"scenario\":\"a\",\"ok\":true,\"ms\":5}\r\n{\"phase\":\"p\",\"ok\":true,\"done\":true}\r\n",
			want: []report{{Phase: "p", Scenario: "a", OK: true, Millis: 5}, {Phase: "p", OK: true, Done: true}}},
		{name: "noise and a cut line", text: "[  1.0] random: crng init done\n{\"phase\":\"p\",\"scenario\":\"b\",\"ok\":false}\n{\"phase\":\"p\",\"scen",
			want: []report{{Phase: "p", Scenario: "b"}}},
		{name: "JSON without a phase", text: "{\"ok\":true}\n", want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "results")
			if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			if got := readReports(path); !slices.Equal(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
