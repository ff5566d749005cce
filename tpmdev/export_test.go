package tpmdev

import (
	"context"

	"github.com/google/go-tpm/tpm2/transport"
)

// Exec runs f as one operation of d, for tests that set up what dpsd never
// does itself (foreign objects, NV certificates).
func (d *Device) Exec(ctx context.Context, f func(t transport.TPM) error) error {
	return d.do(ctx, "test setup", f)
}
