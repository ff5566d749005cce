package tpmdev_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/tpmdev"
)

// hangingTPM never answers until released, like a TPM or driver that hangs.
type hangingTPM struct{ release chan struct{} }

func (h hangingTPM) Send([]byte) ([]byte, error) {
	<-h.release
	return nil, errors.New("released")
}

func TestBusyWhileACommandHangs(t *testing.T) {
	h := hangingTPM{release: make(chan struct{})}
	dev := tpmdev.OpenTransport(h, "hanging", nil)
	if b := dev.Busy(); b != 0 {
		t.Fatalf("idle device busy for %v", b)
	}
	done := make(chan struct{})
	go func() {
		_, _ = dev.ReadSRK(context.Background())
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for dev.Busy() < 20*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatal("Busy never grew while a command hung")
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(h.release)
	<-done
	if b := dev.Busy(); b != 0 {
		t.Errorf("busy for %v after the answer", b)
	}
}

// A caller waiting for the TPM behind a slow operation can give up.
func TestWaitForTheTPMHonoursContext(t *testing.T) {
	h := hangingTPM{release: make(chan struct{})}
	dev := tpmdev.OpenTransport(h, "hanging", nil)
	done := make(chan struct{})
	go func() {
		_, _ = dev.ReadSRK(context.Background()) // holds the TPM
		close(done)
	}()
	for dev.Busy() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := dev.ReadEK(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ReadEK behind a hung operation: %v, want the deadline", err)
	}
	close(h.release)
	<-done
}
