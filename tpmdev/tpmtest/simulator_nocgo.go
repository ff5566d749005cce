//go:build !cgo

package tpmtest

import (
	"testing"

	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// Simulator needs cgo (the reference simulator is C): without it the test
// fails in CI and is skipped elsewhere.
func Simulator(t testing.TB) *tpmdev.Device {
	t.Helper()
	testenv.Missing(t, "the TPM simulator needs cgo (CGO_ENABLED=1, gcc, libssl-dev)")
	return nil
}

// ClearSimulator is never reached without cgo: Simulator stops the test.
func ClearSimulator(t testing.TB, dev *tpmdev.Device) {
	t.Helper()
	testenv.Missing(t, "the TPM simulator needs cgo")
}
