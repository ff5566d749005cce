package tpmdev_test

import (
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// inspector opens spec as dpsd check does: it lists what is loaded without
// flushing anything it did not load.
func inspector(t *testing.T, spec string) *tpmdev.Device {
	t.Helper()
	dev, err := tpmdev.OpenInspect(spec, tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

// loaded lists the transient objects and sessions in the TPM at spec.
func loaded(t *testing.T, spec string) []tpm2.TPMHandle {
	t.Helper()
	hs, err := inspector(t, spec).LoadedHandles(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return hs
}

// Without a resource manager nothing flushes what a killed client or
// tpm2-tools left loaded: three such objects fill swtpm, and every key
// operation failed with TPM_RC_OBJECT_MEMORY for good. The first
// operation of a Device flushes them.
func TestLeftoversAreFlushedAtOpen(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start func(testing.TB, string) tpmtest.SwtpmInfo
	}{
		{"swtpm", tpmtest.StartSwtpm},
		{"mssim", tpmtest.StartSwtpmTCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := tc.start(t, "")
			tpmtest.LeaveObjects(t, info, 3)
			if hs := loaded(t, info.Spec()); len(hs) != 3 {
				t.Fatalf("after three tpm2_createprimary: %#x loaded, want three objects", hs)
			}
			dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			ctx := context.Background()
			// The TPM is full: the first command that loads something
			// finds it so, and the leftovers are flushed for it.
			if _, err := dev.EnsureSRK(ctx, nil); err != nil {
				t.Fatalf("EnsureSRK (TPM2_CreatePrimary): %v", err)
			}
			if hs := loaded(t, info.Spec()); len(hs) != 0 {
				t.Errorf("after the first key: %#x still loaded", hs)
			}
			// What fits but was left behind goes when the daemon is up.
			tpmtest.LeaveObjects(t, info, 1)
			if err := dev.FlushLeftovers(ctx); err != nil {
				t.Fatal(err)
			}
			if hs := loaded(t, info.Spec()); len(hs) != 0 {
				t.Errorf("after FlushLeftovers: %#x still loaded", hs)
			}
		})
	}
}

// loadForeign loads n transient objects (ECC primaries in the null
// hierarchy) or n sessions into dev's TPM and leaves them there, as a
// client beside dpsd would.
func loadForeign(t *testing.T, dev *tpmdev.Device, n int, sessions bool) {
	t.Helper()
	err := dev.Exec(context.Background(), func(tpm transport.TPM) error {
		for range n {
			var err error
			if sessions {
				_, err = tpm2.StartAuthSession{
					TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, SessionType: tpm2.TPMSEHMAC,
					NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
					Symmetric:   tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256,
				}.Execute(tpm)
			} else {
				_, err = tpm2.CreatePrimary{
					PrimaryHandle: tpm2.TPMRHNull,
					InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
				}.Execute(tpm)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("loading %d foreign objects or sessions: %v", n, err)
	}
}

// A TPM that runs out of room for objects or sessions mid-life (another
// client filled it) answers TPM_RC_OBJECT_MEMORY or _SESSION_MEMORY
// without running the command: the Device flushes what it does not hold
// and sends the command once more.
func TestOutOfMemoryFlushesAndRetries(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// run fills the TPM by calling fill, then runs an operation that
		// needs room.
		run func(t *testing.T, dev *tpmdev.Device, ek tpmdev.EK, srk tpmdev.SRK, fill func(n int, sessions bool))
	}{
		{"objects", func(t *testing.T, dev *tpmdev.Device, _ tpmdev.EK, _ tpmdev.SRK, fill func(int, bool)) {
			fill(3, false)
			// Reading a persistent object takes an object slot.
			if _, err := dev.EnsureSRK(ctx, nil); err != nil {
				t.Fatalf("EnsureSRK: %v", err)
			}
		}},
		{"sessions", func(t *testing.T, dev *tpmdev.Device, ek tpmdev.EK, srk tpmdev.SRK, fill func(int, bool)) {
			fill(3, true)
			// ActivateAndImport runs a policy session.
			importKey(t, dev, ek, srk, randomBytes(t, 32))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
				ek, srk := provision(t, dev) // the open's flush is behind us
				tc.run(t, dev, ek, srk, func(n int, sessions bool) { loadForeign(t, dev, n, sessions) })
			})
		})
	}
}

// A command that loads something and whose answer never comes back (the
// caller's context ended; on a socket the wait is abandoned) leaves an
// object nobody knows the handle of. dpsd has the TPM to itself and holds
// nothing between operations, so the next operation flushes whatever it
// finds loaded.
func TestInterruptedLoadIsFlushedByTheNextOperation(t *testing.T) {
	for _, tc := range []struct {
		name string
		cc   tpm2.TPMCC
		op   func(ctx context.Context, dev *tpmdev.Device, sealed []byte) error
	}{
		{"CreatePrimary", tpm2.TPMCCCreatePrimary, func(ctx context.Context, dev *tpmdev.Device, _ []byte) error {
			_, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
			return err
		}},
		{"Load", tpm2.TPMCCLoad, func(ctx context.Context, dev *tpmdev.Device, sealed []byte) error {
			_, err := dev.Unseal(ctx, sealed)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, info, sealed := sealedOnSwtpm(t)
			ctx := context.Background()
			dropped := make(chan struct{})
			viaProxy, err := tpmdev.Open("swtpm:"+proxyTPM(t, info.Socket, tc.cc, true, dropped), tpmtest.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer viaProxy.Close()
			cctx, cancel := context.WithCancel(ctx)
			go func() { <-dropped; cancel() }()
			if err := tc.op(cctx, viaProxy, sealed); !errors.Is(err, context.Canceled) {
				t.Fatalf("%s whose answer was lost: %v, want the cancellation", tc.name, err)
			}
			if hs := loaded(t, info.Spec()); len(hs) != 1 {
				t.Fatalf("after the lost answer: %#x loaded, want the one orphan", hs)
			}
			if _, err := viaProxy.ReadSRK(ctx); err != nil {
				t.Fatal(err)
			}
			if hs := loaded(t, info.Spec()); len(hs) != 0 {
				t.Errorf("after the next operation: %#x still loaded", hs)
			}
		})
	}
}

// fillAfterLoad is a TPM client that fills the TPM with objects right
// after dpsd's first TPM2_Load, in the middle of dpsd's operation.
type fillAfterLoad struct {
	t    transport.TPM
	n    int
	done bool
}

func (f *fillAfterLoad) Send(cmd []byte) ([]byte, error) {
	rsp, err := f.t.Send(cmd)
	if !f.done && len(cmd) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10])) == tpm2.TPMCCLoad {
		f.done = true
		for range f.n {
			if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHNull, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(f.t); err != nil {
				return nil, err
			}
		}
	}
	return rsp, err
}

// The flush for room spares what the running operation loaded: a long
// HMAC holds its key when the TPM refuses it room for the sequence.
func TestFlushForRoomKeepsTheOperationsObjects(t *testing.T) {
	dev := tpmtest.Simulator(t)
	ek, srk := provision(t, dev)
	key := randomBytes(t, 32)
	wk := importKey(t, dev, ek, srk, key)
	var raw transport.TPM
	_ = dev.Exec(context.Background(), func(t transport.TPM) error { raw = t; return nil })
	filling := tpmdev.OpenTransport(&fillAfterLoad{t: raw, n: 2}, "filling", tpmtest.Logger(t))
	data := make([]byte, 4096) // more than one TPM2_HMAC takes: a sequence
	mac, err := filling.HMAC(context.Background(), wk, data)
	if err != nil {
		t.Fatalf("HMAC: %v", err)
	}
	if !hmac.Equal(mac, goHMAC(key, data)) {
		t.Error("HMAC differs from Go's")
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}

// Policy sessions (handles 0x03…, listed among the loaded sessions) and
// context-saved sessions (handles 0x02… or 0x03…, listed among the saved
// ones) are leftovers too: a policy session is what a killed dpsd leaves
// behind ActivateCredential, and three of them make every
// TPM2_StartAuthSession fail with TPM_RC_SESSION_MEMORY.
func TestPolicyAndSavedSessionsAreFlushedAtOpen(t *testing.T) {
	info := tpmtest.StartSwtpm(t, "")
	err := inspector(t, info.Spec()).Exec(context.Background(), func(tpm transport.TPM) error {
		start := func(typ tpm2.TPMSE) (tpm2.TPMISHAuthSession, error) {
			rsp, err := tpm2.StartAuthSession{
				TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, SessionType: typ,
				NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
				Symmetric:   tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256,
			}.Execute(tpm)
			if err != nil {
				return 0, err
			}
			return rsp.SessionHandle, nil
		}
		for range 2 {
			if _, err := start(tpm2.TPMSEPolicy); err != nil {
				return err
			}
		}
		h, err := start(tpm2.TPMSEHMAC)
		if err != nil {
			return err
		}
		_, err = tpm2.ContextSave{SaveHandle: h}.Execute(tpm)
		return err
	})
	if err != nil {
		t.Fatalf("leaving two policy sessions and a saved one: %v", err)
	}
	if hs := loaded(t, info.Spec()); len(hs) != 3 {
		t.Fatalf("listed %#x, want the three sessions", hs)
	}
	dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if err := dev.FlushLeftovers(context.Background()); err != nil {
		t.Fatal(err)
	}
	if hs := loaded(t, info.Spec()); len(hs) != 0 {
		t.Errorf("after FlushLeftovers: %#x still loaded", hs)
	}
}
