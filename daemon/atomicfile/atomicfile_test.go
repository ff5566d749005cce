package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	tests := []struct {
		name  string
		setup func(t *testing.T)
		perm  os.FileMode
	}{
		{"new file", func(*testing.T) {}, 0o600},
		{"replaces", func(t *testing.T) { os.WriteFile(path, []byte("old"), 0o644) }, 0o640},
		{"stale tmp from a crash", func(t *testing.T) { os.WriteFile(path+TmpSuffix, []byte("half"), 0o666) }, 0o600},
		{"tmp is a symlink", func(t *testing.T) { os.Symlink("/etc/passwd", path+TmpSuffix) }, 0o600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.setup(t)
			if err := WriteFile(path, []byte("new"), tt.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != "new" {
				t.Fatalf("read %q, %v", got, err)
			}
			fi, err := os.Lstat(path)
			if err != nil || fi.Mode().Perm() != tt.perm || !fi.Mode().IsRegular() {
				t.Errorf("mode %v (err %v), want regular %v", fi.Mode(), err, tt.perm)
			}
			if _, err := os.Lstat(path + TmpSuffix); !os.IsNotExist(err) {
				t.Errorf("temporary file left behind: %v", err)
			}
		})
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	t.Parallel()
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "f"), []byte("x"), 0o600); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}
