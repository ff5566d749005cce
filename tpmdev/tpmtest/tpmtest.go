// Package tpmtest gives tests a real TPM: the in-process reference
// simulator (ms-tpm-20-ref via go-tpm-tools, cgo) or an swtpm process, plus
// the clear an owner would do from outside and a leak check. Test code only.
//
// A test that needs a missing tool (swtpm, tpm2_clear, cgo for the
// simulator) is skipped, except when CI=true: then it fails.
package tpmtest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
)

// Logger is a logger that writes to the test's output.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// AssertNoTransientHandles fails the test when the TPM holds a transient
// object or a session: every tpmdev method must flush what it loaded.
func AssertNoTransientHandles(t testing.TB, dev *tpmdev.Device) {
	t.Helper()
	hs, err := dev.LoadedHandles(context.Background())
	if err != nil {
		t.Fatalf("listing loaded handles: %v", err)
	}
	if len(hs) > 0 {
		t.Errorf("TPM holds %d transient objects or sessions: %#x", len(hs), hs)
	}
}

// Backend is a real TPM implementation a test can run on, with the way its
// owner clears it.
type Backend struct {
	Name string
	// Open gives the test a fresh TPM of this kind, and a function that
	// clears it from outside (ClearSimulator or ClearSwtpm).
	Open func(t *testing.T) (dev *tpmdev.Device, clear func())
}

// Backends lists the reference simulator and swtpm, for table tests that
// run on both.
func Backends() []Backend {
	return []Backend{
		{"simulator", func(t *testing.T) (*tpmdev.Device, func()) {
			dev := Simulator(t)
			return dev, func() { ClearSimulator(t, dev) }
		}},
		{"swtpm", func(t *testing.T) (*tpmdev.Device, func()) {
			dev, info := Swtpm(t)
			return dev, func() { ClearSwtpm(t, info) }
		}},
	}
}
