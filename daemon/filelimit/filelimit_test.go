package filelimit_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int64) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("x", int(min(size, 4096)))), 0o600); err != nil {
			t.Fatal(err)
		}
		// Sparse beyond the first bytes: a 100 MB file costs no disk.
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		path string
		want error
	}{
		{"empty", write("empty", 0), nil},
		{"at the limit", write("at", 1024), nil},
		{"one byte over", write("over", 1025), filelimit.ErrTooLarge},
		{"100 MB of junk", write("junk", 100<<20), filelimit.ErrTooLarge},
		{"missing", filepath.Join(dir, "missing"), fs.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			b, err := filelimit.Read(tc.path, 1024)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Fatalf("Read: %v, want %v", err, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), tc.path) {
				t.Errorf("error %q does not name the file", err)
			}
			if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
				t.Errorf("reading with a 1 KiB limit allocated %d bytes", n)
			}
			if err == nil {
				if fi, _ := os.Stat(tc.path); int64(len(b)) != fi.Size() {
					t.Errorf("read %d bytes of %d", len(b), fi.Size())
				}
			}
		})
	}
}

// TestReadPipe: a file without a size is cut off at the limit.
func TestReadPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	go func() {
		defer w.Close()
		junk := make([]byte, 4096)
		for range 1024 {
			if _, err := w.Write(junk); err != nil {
				return // the reader gave up, as it should
			}
		}
	}()
	if _, err := filelimit.Read("/dev/fd/"+strconv.Itoa(int(r.Fd())), 8192); !errors.Is(err, filelimit.ErrTooLarge) {
		t.Errorf("Read of a pipe: %v, want ErrTooLarge", err)
	}
}
