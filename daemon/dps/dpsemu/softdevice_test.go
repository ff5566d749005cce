package dpsemu_test

import (
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
)

// newSoftDevice returns software device n (0 or 1): it plays the TPM side
// of §7 with RSA keys the test holds, so it can recover the HMAC key a blob
// carries. Both devices share one SRK; their EKs differ. The error-path
// tests and the benchmarks use it; TestTPMExchange uses a real (simulated)
// TPM.
func newSoftDevice(t testing.TB, n int) *softtpm.Device {
	t.Helper()
	if n != 0 && n != 1 {
		t.Fatalf("soft device %d: there are two, 0 and 1", n)
	}
	return softtpm.New(softtpm.Key(n), softtpm.Key(2))
}
