package provision_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/provision"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// downDPS is a DPS that cannot be reached: the engine stops before any
// registration, which is all these tests need.
type downDPS struct{}

func (downDPS) Challenge(context.Context, string, []byte, []byte, json.RawMessage) (*dps.Challenge, error) {
	return nil, errors.New("DPS down")
}

func (downDPS) Register(context.Context, string, []byte, []byte, json.RawMessage, string) (*dps.Operation, error) {
	return nil, errors.New("DPS down")
}

func (downDPS) Poll(context.Context, string, string, string) (*dps.Operation, error) {
	return nil, errors.New("DPS down")
}

func (downDPS) ServerTime(context.Context) (time.Time, error) {
	return time.Time{}, errors.New("DPS down")
}

// TestOwnershipTakenAfterInterruptedFirstBoot: with ownership = "take", a
// first boot that created the SRK but could not save owner.auth (a full
// disk, a crash in between) leaves an unowned TPM with an SRK; a later
// attempt must still take ownership.
func TestOwnershipTakenAfterInterruptedFirstBoot(t *testing.T) {
	info := tpmtest.StartSwtpm(t, "")
	cfg := config.Default()
	cfg.Provisioning.IDScope = "0ne00TEST"
	cfg.State.Dir = t.TempDir()
	// A directory where owner.auth's temporary file goes makes the first
	// save fail.
	obstacle := filepath.Join(cfg.State.Dir, state.OwnerAuthFile+".tmp", "x")
	if err := os.MkdirAll(obstacle, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e := provision.New(provision.Options{
		Config:  cfg,
		Store:   &state.Store{Dir: cfg.State.Dir},
		OpenTPM: func() (*tpmdev.Device, error) { return tpmdev.Open(info.Spec(), log) },
		DPS:     downDPS{},
		Log:     log,
		Retry:   provision.Retry{Base: 20 * time.Millisecond, Max: 20 * time.Millisecond, Permanent: 20 * time.Millisecond},
	})
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(ctx) }()

	waitFor(t, "the first failure", func() bool { return e.Status().LastError != nil })
	// Moved away in one step: the engine retries every 20 ms and may
	// create the temporary file again while a RemoveAll walks the tree.
	if err := os.Rename(filepath.Dir(obstacle), filepath.Join(t.TempDir(), "obstacle")); err != nil {
		t.Fatal(err)
	}
	// The next attempts get as far as DPS (which is down).
	waitFor(t, "registration attempts", func() bool { return e.Status().Attempts >= 2 })
	cancel()
	<-done

	dev, err := tpmdev.Open(info.Spec(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	own, err := dev.Ownership(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !own.OwnerAuthSet {
		t.Errorf("ownership = take, yet the owner hierarchy still has no auth (status %+v)", e.Status())
	}
	if _, err := (&state.Store{Dir: cfg.State.Dir}).LoadOwnerAuth(); err != nil {
		t.Errorf("no sealed owner auth saved: %v", err)
	}
}

// waitFor polls cond; the deadline only bounds a broken run.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
