// Package standalone answers enroll-info and check in the command line's
// own process when the daemon is not running. It holds the TPM side of
// those verbs so that daemon/cli stays a client that imports no TPM code:
// cmd/dpsd injects it as cli.App's Standalone.
package standalone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/enroll"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// Local does the work in this process; its methods implement
// cli.Standalone.
type Local struct{}

// loadConfig reads the config. A config that does not load is reported
// (check) or refused (enroll-info) by the caller; the defaults stand in so
// that the TPM can still be looked at.
func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return config.Default(), err
	}
	return cfg, nil
}

// quietLog is the TPM layer's logger: warnings only, on stderr, so that
// stdout stays the verb's answer.
func quietLog(stderr io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Check runs the checks because the daemon does not answer on socket.
func (Local) Check(ctx context.Context, configPath, socket string, stderr io.Writer) apitype.CheckReport {
	env := check.Env{ConfigPath: configPath, ServiceUser: apitype.ServiceUser, BuildTime: version.BuildTime(), Now: time.Now}
	cfg, err := loadConfig(configPath)
	if err != nil {
		env.ConfigErr = err
	} else {
		env.Config = cfg
	}
	store := state.Store{Dir: cfg.State.Dir}
	// Looking only: what others left loaded is reported, not flushed.
	dev, err := tpmdev.OpenInspect(cfg.TPM.Device, quietLog(stderr))
	if err != nil {
		env.TPMErr = err
	} else {
		defer dev.Close()
		env.TPM = dev
		env.IdentityKey = identityProbe(dev, store)
	}
	// An unreadable record leaves the hub unknown; the daemon reports it.
	if rec, found, err := store.Load(); err == nil && found {
		env.AssignedHub = rec.AssignedHub
		env.OwnerAuthSealed = rec.OwnerAuthSealed
	}
	rep := check.Run(ctx, env)
	daemon := apitype.Check{
		Name:   check.NameDaemon,
		Status: apitype.CheckWarn,
		Detail: "dpsd is not running (nothing answers on " + socket + "); these checks ran without it",
		Fix:    "systemctl start dpsd; systemctl status dpsd",
	}
	rep.Checks = append([]apitype.Check{daemon}, rep.Checks...)
	return rep
}

// identityProbe proves that the identity key in the store still loads in
// the TPM, as the daemon does at start.
func identityProbe(dev *tpmdev.Device, store state.Store) func(context.Context) error {
	return func(ctx context.Context) error {
		b, err := store.LoadIdentity()
		if err != nil {
			return err
		}
		var k tpmdev.WrappedKey
		if err := k.UnmarshalBinary(b); err != nil {
			return fmt.Errorf("%s is corrupt: %w", state.IdentityFile, err)
		}
		return dev.LoadCheck(ctx, &k)
	}
}

// EnrollInfo reads the EK itself because the daemon is not running. It
// takes no ownership and changes no authorization. A TPM without a
// persistent EK gets one (as at dpsd's first start, and as every Azure SDK
// does) when the owner hierarchy allows it without a password. Warnings go
// to stderr.
func (Local) EnrollInfo(ctx context.Context, configPath string, stderr io.Writer) (apitype.EnrollInfo, error) {
	cfg, err := config.LoadUnscoped(configPath)
	if err != nil {
		return apitype.EnrollInfo{}, err
	}
	dev, err := tpmdev.Open(cfg.TPM.Device, quietLog(stderr))
	if err != nil {
		return apitype.EnrollInfo{}, fmt.Errorf("dpsd is not running and opening the TPM failed: %w (run as root or in group tss)", err)
	}
	defer dev.Close()
	ek, err := dev.ReadEK(ctx)
	if errors.Is(err, tpmdev.ErrNotFound) {
		ek, err = createEK(ctx, dev, enroll.Template(cfg.TPM.EKTemplate), stderr)
	}
	if err != nil {
		return apitype.EnrollInfo{}, fmt.Errorf("reading the EK: %w", err)
	}
	info, err := enroll.Info(ctx, cfg.Provisioning.RegistrationID, ek.Public, dev)
	if err != nil {
		fmt.Fprintf(stderr, "dpsd enroll-info: %v; DPS does not need the certificate\n", err)
	}
	return info, nil
}

// createEK persists the EK of a TPM that has none, as dpsd does at first
// start, when that needs no password. Otherwise only the daemon can: it
// holds the auth values.
func createEK(ctx context.Context, dev *tpmdev.Device, tmpl tpmdev.EKTemplate, stderr io.Writer) (tpmdev.EK, error) {
	own, err := dev.Ownership(ctx)
	if err != nil {
		return tpmdev.EK{}, err
	}
	if own.OwnerAuthSet || own.EndorsementAuthSet {
		return tpmdev.EK{}, errors.New("the TPM has no persistent EK and creating one needs an auth value: " +
			"start dpsd (systemctl start dpsd), which creates it, then run enroll-info again")
	}
	ek, err := dev.EnsureEK(ctx, tmpl, nil, nil)
	if err == nil && ek.Created {
		fmt.Fprintf(stderr, "dpsd enroll-info: the TPM had no EK: created and persisted it at %s, as dpsd does at first start\n", tpmhandle.EK)
	}
	return ek, err
}
