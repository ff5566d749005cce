package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

// TestOversizedFiles: a config file, a drop-in or a CA file filled with
// junk (100 MB) is refused before it is read, with an error naming it.
func TestOversizedFiles(t *testing.T) {
	t.Parallel()
	// The system's roots load once per process; not part of the count.
	if _, err := (config.Network{}).RootCAs(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file string // relative to the config's directory
		load func(main string) error
	}{
		{"main file", "config.toml", loadConfig},
		{"drop-in", "config.d/50-junk.toml", loadConfig},
		{"ca_file", "ca.pem", func(main string) error {
			_, err := config.Network{CAFile: filepath.Join(filepath.Dir(main), "ca.pem")}.RootCAs()
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			main := filepath.Join(dir, "config.toml")
			if err := os.WriteFile(main, []byte("[provisioning]\nid_scope = \"0ne00000A0A\"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tc.file)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte("# junk\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, 100<<20); err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := tc.load(main)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, filelimit.ErrTooLarge) || !strings.Contains(err.Error(), path) {
				t.Errorf("a 100 MB %s: %v, want ErrTooLarge naming %s", tc.file, err, path)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
				t.Errorf("a 100 MB %s: %d bytes allocated", tc.file, n)
			}
		})
	}
}

func loadConfig(main string) error {
	_, err := config.Load(main)
	return err
}
