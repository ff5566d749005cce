package state_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/state"
)

// TestOversizedFiles: a state file filled with junk (100 MB) is refused
// before it is read: state.json as a corrupt record (the daemon then
// carries on as a fresh device), the keys as unreadable, all with an
// error that names the file and costs no memory.
func TestOversizedFiles(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file string
		load func(state.Store) error
		want string
	}{
		{state.StateFile, func(s state.Store) error { _, _, err := s.Load(); return err }, "move it away"},
		{state.IdentityFile, func(s state.Store) error { _, err := s.LoadIdentity(); return err }, ""},
		{state.StagedIdentityFile, func(s state.Store) error { _, err := s.LoadStaged(); return err }, ""},
		{state.OwnerAuthFile, func(s state.Store) error { _, err := s.LoadOwnerAuth(); return err }, ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			s := state.Store{Dir: t.TempDir()}
			path := filepath.Join(s.Dir, tc.file)
			if err := os.WriteFile(path, []byte("{junk"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, 100<<20); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := tc.load(s)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), tc.file) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("loading a 100 MB %s: %v, want an error naming it (and saying %q)", tc.file, err, tc.want)
			}
			if tc.file == state.StateFile && !errors.Is(err, state.ErrCorrupt) {
				t.Errorf("a 100 MB state.json: %v, want ErrCorrupt", err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("loading a 100 MB %s allocated %d bytes", tc.file, n)
			}
		})
	}
}
