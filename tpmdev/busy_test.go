package tpmdev_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// hangingTPM never answers until released, like a TPM or driver that
// hangs; sent tells that a command reached it.
type hangingTPM struct{ sent, release chan struct{} }

func newHangingTPM() hangingTPM {
	return hangingTPM{sent: make(chan struct{}, 1), release: make(chan struct{})}
}

func (h hangingTPM) Send([]byte) ([]byte, error) {
	select {
	case h.sent <- struct{}{}:
	default:
	}
	<-h.release
	return nil, errors.New("released")
}

func TestBusyWhileACommandHangs(t *testing.T) {
	t.Parallel()
	h := newHangingTPM()
	dev := tpmdev.OpenTransport(h, "hanging", nil)
	if b := dev.Busy(); b != 0 {
		t.Fatalf("idle device busy for %v", b)
	}
	done := make(chan struct{})
	go func() {
		_, _ = dev.ReadSRK(context.Background())
		close(done)
	}()
	testenv.WaitUntil(t, "Busy to grow while a command hangs", func() bool { return dev.Busy() >= 20*time.Millisecond })
	close(h.release)
	<-done
	if b := dev.Busy(); b != 0 {
		t.Errorf("busy for %v after the answer", b)
	}
}

// A caller waiting for the TPM behind a slow operation can give up.
func TestWaitForTheTPMHonoursContext(t *testing.T) {
	t.Parallel()
	h := newHangingTPM()
	dev := tpmdev.OpenTransport(h, "hanging", nil)
	done := make(chan struct{})
	go func() {
		_, _ = dev.ReadSRK(context.Background()) // holds the TPM
		close(done)
	}()
	<-h.sent
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := dev.ReadEK(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ReadEK behind a hung operation: %v, want the deadline", err)
	}
	close(h.release)
	<-done
}
