package tpmdev_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
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
	sealed := sealOn(t, dev)
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

// proxyTPM forwards a socket TPM's connections command by command, except
// the first command with code cc: it never delivers it (deliver false: a
// hung TPM), or delivers it and drops the answer (deliver true: the answer
// lost on the way back, as when the caller's context ends first). Either
// way the caller waits until its context ends the wait. dropped, when not
// nil, is closed once that command was withheld or answered by the TPM.
func proxyTPM(t *testing.T, target string, cc tpm2.TPMCC, deliver bool, dropped chan struct{}) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "proxy.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var once sync.Once
	drop := func(client net.Conn) {
		if dropped != nil {
			once.Do(func() { close(dropped) })
		}
		io.Copy(io.Discard, client) // never answered
	}
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
					match := len(cmd) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == cc
					if match && !deliver {
						drop(client)
						return
					}
					if _, err := server.Write(append(hdr[:], cmd...)); err != nil {
						return
					}
					// Answer: length (4), response, status (4).
					var n [4]byte
					if _, err := io.ReadFull(server, n[:]); err != nil {
						return
					}
					rsp := make([]byte, binary.BigEndian.Uint32(n[:])+4)
					if _, err := io.ReadFull(server, rsp); err != nil {
						return
					}
					if match {
						drop(client)
						return
					}
					if _, err := client.Write(append(n[:], rsp...)); err != nil {
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
	dev, info, sealed := sealedOnSwtpm(t)
	ctx := context.Background()
	viaProxy, err := tpmdev.Open("swtpm:"+proxyTPM(t, info.Socket, tpm2.TPMCCUnseal, false, nil), nil)
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

// sealedOnSwtpm gives a fresh swtpm with an SRK and a secret sealed under it.
func sealedOnSwtpm(t *testing.T) (*tpmdev.Device, tpmtest.SwtpmInfo, []byte) {
	t.Helper()
	dev, info := tpmtest.Swtpm(t)
	return dev, info, sealOn(t, dev)
}

// sealOn makes the SRK and seals a secret under it.
func sealOn(t *testing.T, dev *tpmdev.Device) []byte {
	t.Helper()
	ctx := context.Background()
	if _, err := dev.EnsureSRK(ctx, nil); err != nil {
		t.Fatal(err)
	}
	sealed, err := dev.Seal(ctx, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	return sealed
}
