package cli

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// serviceUser is the account dpsd.service runs as.
const serviceUser = "dpsd"

// loadConfig reads the config for the standalone paths. A config that does
// not load is reported (check) or refused (enroll-info) by the caller; the
// defaults stand in so that the TPM can still be looked at.
func (e *env) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(e.configPath)
	if err != nil {
		return config.Default(), err
	}
	return cfg, nil
}

// quietLog is the TPM layer's logger for the standalone paths: warnings
// only, on stderr, so that stdout stays the verb's answer.
func (e *env) quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// standaloneCheck runs the checks in this process because the daemon does
// not answer on socket.
func (e *env) standaloneCheck(ctx context.Context, socket string) apitype.CheckReport {
	env := check.Env{ConfigPath: e.configPath, ServiceUser: serviceUser, BuildTime: version.BuildTime(), Now: e.now}
	cfg, err := e.loadConfig()
	if err != nil {
		env.ConfigErr = err
	} else {
		env.Config = cfg
	}
	// Looking only: what others left loaded is reported, not flushed.
	dev, err := tpmdev.OpenInspect(cfg.TPM.Device, e.quietLog())
	if err != nil {
		env.TPMErr = err
	} else {
		defer dev.Close()
		env.TPM = dev
		env.IdentityKey = identityProbe(dev, state.Store{Dir: cfg.State.Dir})
	}
	// An unreadable record leaves the hub unknown; the daemon reports it.
	if rec, found, err := (state.Store{Dir: cfg.State.Dir}).Load(); err == nil && found {
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

// standaloneEnrollInfo reads the EK itself because the daemon is not
// running. It takes no ownership and changes no authorization. A TPM
// without a persistent EK gets one (as at dpsd's first start, and as every
// Azure SDK does) when the owner hierarchy allows it without a password.
func (e *env) standaloneEnrollInfo(ctx context.Context) (apitype.EnrollInfo, error) {
	cfg, err := e.loadConfig()
	if err != nil {
		return apitype.EnrollInfo{}, err
	}
	dev, err := tpmdev.Open(cfg.TPM.Device, e.quietLog())
	if err != nil {
		return apitype.EnrollInfo{}, fmt.Errorf("dpsd is not running and opening the TPM failed: %w (run as root or in group tss)", err)
	}
	defer dev.Close()
	ek, err := dev.ReadEK(ctx)
	if errors.Is(err, tpmdev.ErrNotFound) {
		ek, err = e.createEK(ctx, dev, cfg)
	}
	if err != nil {
		return apitype.EnrollInfo{}, fmt.Errorf("reading the EK: %w", err)
	}
	info := apitype.EnrollInfo{
		RegistrationID: cfg.Provisioning.RegistrationID,
		EndorsementKey: base64.StdEncoding.EncodeToString(ek.Public),
	}
	if info.RegistrationID == "" {
		info.RegistrationID = dps.RegistrationID(ek.Public)
	}
	// The certificate is optional to DPS: without it the enrollment still
	// works, so a certificate that cannot be read is a warning.
	cert, err := dev.EKCertificate(ctx)
	if err != nil {
		fmt.Fprintf(e.stderr, "dpsd enroll-info: the EK certificate could not be read (DPS does not need it): %v\n", err)
	}
	if cert != nil {
		info.EKCertificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}))
	}
	return info, nil
}

// createEK persists the EK of a TPM that has none, as dpsd does at first
// start, when that needs no password. Otherwise only the daemon can: it
// holds the auth values.
func (e *env) createEK(ctx context.Context, dev *tpmdev.Device, cfg *config.Config) (tpmdev.EK, error) {
	own, err := dev.Ownership(ctx)
	if err != nil {
		return tpmdev.EK{}, err
	}
	if own.OwnerAuthSet || own.EndorsementAuthSet {
		return tpmdev.EK{}, errors.New("the TPM has no persistent EK and creating one needs an auth value: " +
			"start dpsd (systemctl start dpsd), which creates it, then run enroll-info again")
	}
	tmpl := tpmdev.EKTemplateTCG
	if cfg.TPM.EKTemplate == config.EKTemplateAzureSDK {
		tmpl = tpmdev.EKTemplateAzureSDK
	}
	ek, err := dev.EnsureEK(ctx, tmpl, nil, nil)
	if err == nil && ek.Created {
		fmt.Fprintln(e.stderr, "dpsd enroll-info: the TPM had no EK: created and persisted it at 0x81010001, as dpsd does at first start")
	}
	return ek, err
}
