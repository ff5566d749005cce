package check_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// TestStateDirCannotTakeIdentity: a state directory with the right owner
// and mode can still refuse the key DPS has just replaced the old one
// with: a full or read-only file system, or a directory where state.json
// belongs. The check says so.
func TestStateDirCannotTakeIdentity(t *testing.T) {
	testenv.RequireRoot(t, "change file owners")
	tests := []struct {
		name    string
		mount   string // tmpfs options; "" mounts nothing
		prepare func(t *testing.T, dir string)
		detail  string
	}{
		{"full", "size=256k,mode=0700", func(t *testing.T, dir string) {
			// More than fits: the write stops at ENOSPC with the file
			// system full.
			_ = os.WriteFile(filepath.Join(dir, "filler"), make([]byte, 512<<10), 0o600)
		}, "no space left"},
		{"read-only", "size=256k,mode=0700,ro", func(*testing.T, string) {}, "read-only"},
		{"state.json is a directory", "", func(t *testing.T, dir string) {
			if err := os.Mkdir(filepath.Join(dir, state.StateFile), 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := offline(t)
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if tt.mount != "" {
				mountTmpfs(t, dir, tt.mount)
			}
			tt.prepare(t, dir)
			cfg.State.Dir = dir
			rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: errors.New("x"), ServiceUser: "root"})
			expect(t, rep, check.NameStateDir, apitype.CheckFail, tt.detail)
		})
	}
}

func mountTmpfs(t *testing.T, dir, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}
