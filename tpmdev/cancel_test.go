package tpmdev_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

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

// stallingProxy forwards a socket TPM's connections but never delivers a
// TPM2_Unseal: the command waits for ever, as on a hung TPM, until the
// caller's context ends the wait.
func stallingProxy(t *testing.T, target string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer client.Close()
				server, err := net.Dial("unix", target)
				if err != nil {
					return
				}
				defer server.Close()
				go io.Copy(client, server)
				for {
					// Frame: TPM_SEND_COMMAND (4), locality (1), length (4), command.
					var hdr [9]byte
					if _, err := io.ReadFull(client, hdr[:]); err != nil {
						return
					}
					cmd := make([]byte, binary.BigEndian.Uint32(hdr[5:9]))
					if _, err := io.ReadFull(client, cmd); err != nil {
						return
					}
					if len(cmd) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCUnseal {
						io.Copy(io.Discard, client) // never answered
						return
					}
					if _, err := server.Write(append(hdr[:], cmd...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return path
}

// On a socket TPM the operation's connection is useless after a cancelled
// wait (the answer may still arrive on it); the flush must go over a new
// one, since swtpm keeps loaded objects across connections.
func TestCancelledOperationStillFlushesOnSocket(t *testing.T) {
	dev, info := tpmtest.Swtpm(t)
	ctx := context.Background()
	if _, err := dev.EnsureSRK(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sealed, err := dev.Seal(ctx, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	viaProxy, err := tpmdev.Open("swtpm:"+stallingProxy(t, info.Socket), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer viaProxy.Close()
	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := viaProxy.Unseal(cctx, sealed); err == nil {
		t.Fatal("Unseal succeeded although the TPM never answered")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Unseal: %v, want the deadline", err)
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}
