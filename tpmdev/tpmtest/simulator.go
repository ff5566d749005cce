//go:build cgo

package tpmtest

import (
	"sync"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// simulators maps the Devices Simulator made to their raw transport, so
// that ClearSimulator can act as the platform, outside the Device.
var simulators sync.Map // *tpmdev.Device -> transport.TPM

// Simulator gives the test a freshly manufactured reference TPM (new
// seeds, nothing persisted), closed when the test ends. Only one simulator
// exists per process: a second caller waits until the first test's
// simulator is closed, so tests using it must not run in parallel.
func Simulator(t testing.TB) *tpmdev.Device {
	t.Helper()
	sim, err := simulator.Get()
	if err != nil {
		t.Fatalf("starting the TPM simulator: %v", err)
	}
	tr := transport.FromReadWriteCloser(sim)
	dev := tpmdev.OpenTransport(tr, "simulator", Logger(t))
	simulators.Store(dev, transport.TPM(tr))
	t.Cleanup(func() {
		simulators.Delete(dev)
		if err := dev.Close(); err != nil {
			t.Errorf("closing the simulator: %v", err)
		}
	})
	return dev
}

// ClearSimulator runs TPM2_Clear as the platform (empty platform auth), as
// firmware would on the owner's request: the owner and endorsement
// hierarchies lose their persistent objects and auth values, the owner seed
// changes, the endorsement seed does not. Call it between operations.
func ClearSimulator(t testing.TB, dev *tpmdev.Device) {
	t.Helper()
	tr, ok := simulators.Load(dev)
	if !ok {
		t.Fatal("ClearSimulator: device was not made by tpmtest.Simulator")
	}
	_, err := tpm2.Clear{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)},
	}.Execute(tr.(transport.TPM))
	if err != nil {
		t.Fatalf("TPM2_Clear on the simulator: %v", err)
	}
}
