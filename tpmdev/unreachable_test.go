package tpmdev_test

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
)

// TestUnreachableSocket: a socket TPM whose socket is missing is
// ErrUnreachable, named by its path, and never reads as a missing file
// (a caller checking fs.ErrNotExist took it for "no key yet").
func TestUnreachableSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "swtpm.sock")
	dev, err := tpmdev.Open("swtpm:"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	for name, op := range map[string]func(context.Context) error{
		"Ownership": func(ctx context.Context) error { _, err := dev.Ownership(ctx); return err },
		"LoadCheck": func(ctx context.Context) error { return dev.LoadCheck(ctx, &tpmdev.WrappedKey{}) },
	} {
		err := op(t.Context())
		if !errors.Is(err, tpmdev.ErrUnreachable) || !strings.Contains(err.Error(), sock) {
			t.Errorf("%s: %v, want ErrUnreachable naming %s", name, err, sock)
		}
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("%s: %v reads as a missing file or object", name, err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := dev.Ownership(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Ownership with a cancelled context: %v, want context.Canceled", err)
	}
}
