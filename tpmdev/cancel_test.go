package tpmdev_test

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// cancelAfterLoad cancels the operation's context as soon as a TPM2_Load
// has been answered: a client that hangs up (the request context of
// POST /v1/token) or a deadline that expires between Load and FlushContext.
type cancelAfterLoad struct {
	t      transport.TPM
	cancel context.CancelFunc
}

func (c *cancelAfterLoad) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.t.Send(cmd)
	if len(cmd) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCLoad && c.cancel != nil {
		c.cancel()
	}
	return rsp, err
}

// A cancelled context must not skip the flush of what the operation
// loaded: the daemon holds /dev/tpmrm0 for its life, whose per-fd space has
// only a few transient slots, so each leak is permanent until restart.
func TestCancelledOperationStillFlushes(t *testing.T) {
	dev := tpmtest.Simulator(t)
	ctx := context.Background()
	if _, err := dev.EnsureSRK(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sealed, err := dev.Seal(ctx, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	tpmtest.AssertNoTransientHandles(t, dev)

	// Drive the same simulator through a transport that cancels after Load.
	var raw transport.TPM
	_ = dev.Exec(ctx, func(t transport.TPM) error { raw = t; return nil })
	cctx, cancel := context.WithCancel(ctx)
	wrap := &cancelAfterLoad{t: raw, cancel: cancel}
	dev2 := tpmdev.OpenTransport(wrap, "cancelling", nil)
	if _, err := dev2.Unseal(cctx, sealed); err == nil {
		t.Fatal("Unseal succeeded although its context was cancelled mid-operation")
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}
