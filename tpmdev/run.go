package tpmdev

import (
	"context"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// run executes one TPM command and names it in the error.
func run[R any, C tpm2.Command[R, *R]](t transport.TPM, cmd C, s ...tpm2.Session) (*R, error) {
	rsp, err := cmd.Execute(t, s...)
	if err != nil {
		return nil, commandError(cmd.Command(), err)
	}
	return rsp, nil
}

// flush flushes a transient object or session; its error joins the
// operation's so a leak is never silent. It runs even when the operation's
// context has ended: a client that hangs up between Load and FlushContext
// must not leave the object in the TPM (on /dev/tpmrm0 it would hold one
// of the daemon's few transient slots until a restart).
func flush(t transport.TPM, h tpm2.TPMHandle, err *error) {
	_, ferr := run(uncancellable(t), tpm2.FlushContext{FlushHandle: h})
	*err = also(*err, ferr)
}

// uncancellable is t without the operation's cancellation, for cleanup.
func uncancellable(t transport.TPM) transport.TPM {
	c, ok := t.(*countingTPM)
	if !ok {
		return t
	}
	cc := *c
	cc.ctx = context.WithoutCancel(c.ctx)
	return &cc
}

// also adds a cleanup failure to an operation's error, keeping both
// checkable with errors.Is.
func also(err, cleanup error) error {
	switch {
	case cleanup == nil:
		return err
	case err == nil:
		return cleanup
	}
	return fmt.Errorf("%w; also %w", err, cleanup)
}

// readPersistent reads the public area at a persistent handle. It returns
// an error matching ErrNotFound when the handle is empty.
func readPersistent(t transport.TPM, h tpm2.TPMHandle) (*tpm2.ReadPublicResponse, error) {
	rsp, err := run(t, tpm2.ReadPublic{ObjectHandle: h})
	if err != nil {
		if isNoObject(err) {
			return nil, fmt.Errorf("handle 0x%08x: %w: %w", uint32(h), ErrNotFound, err)
		}
		return nil, err
	}
	return rsp, nil
}
