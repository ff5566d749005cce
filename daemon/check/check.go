// Package check is `dpsd check`: named diagnostics, each pass, warn or fail
// with a one-line fix, over what a technician can repair on the device
// (config, TPM device and permissions, objects left loaded in the TPM,
// keys, ownership, lockout, clock, network, state directory). The daemon runs it for GET /v1/check with its
// own TPM; the CLI runs it standalone when the daemon is down. Everything
// it looks at is handed in through Env, so tests can point it at a
// simulator and loopback servers.
package check

import (
	"context"
	"net"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// The checks, in the order they run and are reported.
const (
	// NameDaemon is added by the CLI when it checks without the daemon.
	NameDaemon          = "daemon"
	NameConfig          = "config"
	NameTPMDevice       = "tpm-device"
	NameResourceManager = "tpm-resource-manager"
	NameTransients      = "tpm-transients"
	NameTPMBus          = "tpm-bus"
	NameEK              = "ek"
	NameEKCertificate   = "ek-certificate"
	NameSRK             = "srk"
	NameOwnership       = "ownership"
	NameLockout         = "lockout"
	NameIdentityKey     = "identity-key"
	NameStateDir        = "state-dir"
	NameDPSDNS          = "dps-dns"
	NameDPSTLS          = "dps-tls"
	NameClock           = "clock"
	NameHubTLS          = "hub-tls"
)

// TPM is what the checks ask of the TPM; *tpmdev.Device implements it.
// Every method only reads: a check creates no key and changes no
// authorization.
type TPM interface {
	Path() string
	// ReadEK and ReadSRK return errors matching tpmdev.ErrNotFound when the
	// handle is empty and tpmdev.ErrForeignObject when it holds something
	// else.
	ReadEK(ctx context.Context) (tpmdev.EK, error)
	ReadSRK(ctx context.Context) (tpmdev.SRK, error)
	EKCertificate(ctx context.Context) ([]byte, error)
	Ownership(ctx context.Context) (tpmdev.Ownership, error)
	// Transients lists the transient objects and sessions left loaded.
	Transients(ctx context.Context) (tpmdev.Transients, error)
}

// Env is what the checks look at.
type Env struct {
	// ConfigPath is the config file reported on.
	ConfigPath string
	// Config is the loaded config; nil when loading failed with ConfigErr.
	// Without a config the other checks use the defaults.
	Config    *config.Config
	ConfigErr error
	// TPM is the opened TPM; nil when opening failed with TPMErr.
	TPM    TPM
	TPMErr error
	// IdentityKey proves that the hub credential still loads in the TPM.
	// Its error wraps fs.ErrNotExist when the device has no credential yet
	// and tpmdev.ErrKeyInvalidated when the TPM was cleared. Nil: the
	// identity-key check says it was not run.
	IdentityKey func(ctx context.Context) error
	// AssignedHub is the hub's host name (from the status or state.json);
	// empty before the first provisioning.
	AssignedHub string
	// OwnerAuthSealed: the record says dpsd set the TPM's owner auth and
	// keeps it sealed in owner.auth (state.State.OwnerAuthSealed).
	OwnerAuthSealed bool
	// ServiceUser is the account dpsd.service runs as ("dpsd").
	ServiceUser string
	// BuildTime is a floor for a sane clock (version.BuildTime).
	BuildTime time.Time
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Resolver and DialContext reach the network; nil: the defaults.
	Resolver    *net.Resolver
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// netTimeout caps each network probe, below the API's check timeout even
// when the config's network timeout is longer.
const netTimeout = 15 * time.Second

// Run runs every check and returns them in order. It never fails as a
// whole: what cannot be checked is reported as a check.
func Run(ctx context.Context, env Env) apitype.CheckReport {
	r := newRun(env)
	steps := []func(context.Context) apitype.Check{
		r.config,
		r.tpmDevice,
		r.resourceManager,
		r.transients,
		r.tpmBus,
		r.ek,
		r.ekCertificate,
		r.srk,
		r.ownership,
		r.lockout,
		r.identityKey,
		r.stateDir,
		r.dpsDNS,
		r.dpsTLS,
		r.clock,
		r.hubTLS,
	}
	rep := apitype.CheckReport{Checks: make([]apitype.Check, 0, len(steps))}
	for _, step := range steps {
		rep.Checks = append(rep.Checks, step(ctx))
	}
	return rep
}

func pass(name, detail string) apitype.Check {
	return apitype.Check{Name: name, Status: apitype.CheckPass, Detail: detail}
}

func warn(name, detail, fix string) apitype.Check {
	return apitype.Check{Name: name, Status: apitype.CheckWarn, Detail: detail, Fix: fix}
}

func fail(name, detail, fix string) apitype.Check {
	return apitype.Check{Name: name, Status: apitype.CheckFail, Detail: detail, Fix: fix}
}
