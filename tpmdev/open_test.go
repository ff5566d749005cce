package tpmdev_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
	"github.com/google/go-tpm/tpm2"
)

func TestOpenRefusesBadSpecs(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		notFound bool
	}{
		{spec: ""},
		{spec: "tpm0"},
		{spec: "swtpm:"},
		{spec: "mssim:"},
		{spec: "/dev/does-not-exist-tpm", notFound: true},
	} {
		dev, err := tpmdev.Open(tc.spec, nil)
		if err == nil {
			dev.Close()
			t.Errorf("Open(%q) succeeded", tc.spec)
			continue
		}
		if tc.notFound != errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("Open(%q): %v; ErrNotFound want %v", tc.spec, err, tc.notFound)
		}
	}
}

func TestSocketTPMDownIsAnErrorPerOperation(t *testing.T) {
	// A socket TPM is dialled per operation: Open succeeds, each call says
	// what failed, and a TPM that comes back is used again.
	info := tpmtest.StartSwtpm(t, "")
	dev, err := tpmdev.Open(info.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	ctx := context.Background()
	if _, err := dev.Ownership(ctx); err != nil {
		t.Fatal(err)
	}
	info.Stop()
	if _, err := dev.Ownership(ctx); err == nil || !strings.Contains(err.Error(), "connecting to TPM") {
		t.Errorf("Ownership with swtpm stopped: %v, want a connection error", err)
	}
}

func TestMssimOverTCP(t *testing.T) {
	// swtpm's TCP command port speaks the reference simulator's framing;
	// tpm2-tools reach the same swtpm in between through the swtpm TCTI.
	info := tpmtest.StartSwtpmTCP(t, "")
	dev, err := tpmdev.Open(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if !strings.HasPrefix(dev.Path(), "mssim:127.0.0.1:") {
		t.Errorf("Path %q", dev.Path())
	}
	ctx := context.Background()
	ek, _ := provision(t, dev)
	tpmtest.ClearSwtpm(t, info)
	ek2, srk2 := provision(t, dev)
	if !bytes.Equal(ek.Public, ek2.Public) || !srk2.Created {
		t.Error("after tpm2_clear over TCP: EK changed or SRK not re-created")
	}
	tpmtest.AssertNoTransientHandles(t, dev)
	if _, err := dev.Fingerprint(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestCancelledContextSendsNothing(t *testing.T) {
	dev, _ := tpmtest.Swtpm(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := dev.EnsureSRK(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("EnsureSRK with a cancelled context: %v", err)
	}
	if st := dev.Stats(); st.Total != 0 {
		t.Errorf("%d commands sent under a cancelled context", st.Total)
	}
}

func TestConcurrentCallersAreSerialized(t *testing.T) {
	dev, _ := tpmtest.Swtpm(t)
	ek, srk := provision(t, dev)
	key := randomBytes(t, 32)
	wk := importKey(t, dev, ek, srk, key)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := bytes.Repeat([]byte{byte(i)}, 100+i*400) // some use a sequence
			mac, err := dev.HMAC(context.Background(), wk, data)
			if err == nil && !hmac.Equal(mac, goHMAC(key, data)) {
				err = errors.New("HMAC differs from Go's")
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}

func TestStatsCountEveryCommand(t *testing.T) {
	dev, _ := tpmtest.Swtpm(t)
	provision(t, dev)
	st := dev.Stats()
	sum := 0
	for name, c := range st.ByCommand {
		if c.Count <= 0 || c.Total <= 0 {
			t.Errorf("%s: %+v", name, c)
		}
		sum += c.Count
	}
	// Two reads that found nothing, two creations persisted and flushed;
	// no look for leftovers (that waits for FlushLeftovers).
	want := map[string]int{"ReadPublic": 2, "CreatePrimary": 2, "EvictControl": 2, "FlushContext": 2}
	for name, n := range want {
		if st.ByCommand[name].Count != n {
			t.Errorf("%s counted %d times, want %d (all: %v)", name, st.ByCommand[name].Count, n, st.ByCommand)
		}
	}
	if sum != st.Total || st.Total != 8 {
		t.Errorf("total %d, sum %d, want 8", st.Total, sum)
	}
}

func TestWrappedKeyUnmarshalRefusesMalformed(t *testing.T) {
	good := tpmdev.WrappedKey{
		Public: tpm2.Marshal(tpm2.New2B(tpm2.TPMTPublic{
			Type:    tpm2.TPMAlgKeyedHash,
			NameAlg: tpm2.TPMAlgSHA256,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
				Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgKeyedHash, &tpm2.TPM2BDigest{Buffer: make([]byte, 32)}),
		})),
		Private: []byte{0, 3, 1, 2, 3},
	}
	rsa := tpm2.Marshal(tpm2.New2B(tpm2.RSASRKTemplate))
	raw, err := good.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back tpmdev.WrappedKey
	if err := back.UnmarshalBinary(raw); err != nil || !bytes.Equal(back.Public, good.Public) || !bytes.Equal(back.Private, good.Private) {
		t.Fatalf("round trip: %v", err)
	}
	for name, b := range map[string][]byte{
		"empty":             nil,
		"one byte":          {0},
		"public truncated":  raw[:10],
		"private missing":   good.Public,
		"private truncated": raw[:len(raw)-1],
		"trailing byte":     append(bytes.Clone(raw), 0),
		"empty public":      append([]byte{0, 0}, good.Private...),
		"garbage public":    append([]byte{0, 2, 0xff, 0xff}, good.Private...),
		"RSA public":        append(bytes.Clone(rsa), good.Private...),
	} {
		var k tpmdev.WrappedKey
		if err := k.UnmarshalBinary(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := (&tpmdev.WrappedKey{Public: good.Public}).MarshalBinary(); err == nil {
		t.Error("MarshalBinary without a private part succeeded")
	}
}

func TestUnsealRefusesForeignBlobs(t *testing.T) {
	dev, _ := tpmtest.Swtpm(t)
	provision(t, dev)
	ctx := context.Background()
	sealed, err := dev.Seal(ctx, []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"empty":     nil,
		"no magic":  sealed[len("dpsd-sealed-v1\n"):],
		"truncated": sealed[:len(sealed)-3],
	} {
		if _, err := dev.Unseal(ctx, b); err == nil {
			t.Errorf("%s: unsealed", name)
		}
	}
	for _, n := range []int{0, 129} {
		if _, err := dev.Seal(ctx, make([]byte, n)); err == nil {
			t.Errorf("sealing %d bytes succeeded", n)
		}
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}

// After Close a Device runs nothing: a socket TPM is not dialled again,
// so a goroutine that outlives the daemon's TPM leaves nothing loaded.
func TestClosedDeviceRunsNothing(t *testing.T) {
	info := tpmtest.StartSwtpm(t, "")
	dev, err := tpmdev.Open(info.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	if err := dev.PrepareTokens(context.Background()); !errors.Is(err, tpmdev.ErrClosed) {
		t.Errorf("PrepareTokens after Close: %v, want ErrClosed", err)
	}
	if n := dev.Stats().Total; n != 0 {
		t.Errorf("%d TPM commands after Close, want 0", n)
	}
}
