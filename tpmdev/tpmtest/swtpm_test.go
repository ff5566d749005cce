package tpmtest

import (
	"os"
	"path/filepath"
	"testing"
)

// swtpm listens before it manufactures the TPM and writes the state: a
// test that copies the state right after StartSwtpm (to put a TPM back as
// it was) read nothing on a loaded machine. Several starts, since each is
// one draw of that race.
func TestStartSwtpmHasWrittenTheState(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(testing.TB, string) SwtpmInfo
	}{
		{"unix", StartSwtpm},
		{"tcp", StartSwtpmTCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 10 {
				info := tc.start(t, "")
				fi, err := os.Stat(filepath.Join(info.StateDir, "tpm2-00.permall"))
				if err != nil || fi.Size() == 0 {
					t.Fatalf("right after the start: %v, %v", fi, err)
				}
				info.Stop()
			}
		})
	}
}
