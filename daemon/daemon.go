// Package daemon wires `dpsd run`: config, state, TPM, the DPS client, the
// phase machine, the hub client and the status socket, with systemd told
// what happens (READY once the TPM and the socket are up, STATUS on every
// phase, STOPPING on shutdown).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/provision"
	"github.com/dpsd-project/dpsd/daemon/sdnotify"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/version"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// Run is `dpsd run`: it serves until ctx is cancelled (SIGTERM) and returns
// nil then. It returns an error only for what a restart cannot fix by
// itself: a bad config or a status socket it cannot create.
func Run(ctx context.Context, configPath string, log *slog.Logger) error {
	cfg, err := config.Load(configPath)
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrUnusable, err)
	}
	roots, err := cfg.Network.RootCAs()
	if err != nil {
		return fmt.Errorf("%w: %w", config.ErrUnusable, err)
	}
	client, err := dps.NewClient(dps.ClientConfig{
		Endpoint:   cfg.Provisioning.GlobalEndpoint,
		IDScope:    cfg.Provisioning.IDScope,
		APIVersion: cfg.Provisioning.APIVersion,
		RootCAs:    roots,
		Proxy:      cfg.Network.Proxy,
		Timeout:    cfg.Network.Timeout,
		Log:        log,
	})
	if err != nil {
		return fmt.Errorf("setting up the DPS client: %w", err)
	}
	notify := sdnotify.New(log)
	store := &state.Store{Dir: cfg.State.Dir}

	ln, err := localapi.Listen(cfg.Status.Socket, cfg.Status.Group, localapi.SocketMode(cfg.Token.Allow))
	if err != nil {
		return fmt.Errorf("opening the status socket: %w", err)
	}

	be := &backend{cfg: cfg, configPath: configPath, started: make(chan struct{})}
	engine := provision.New(provision.Options{
		Config:  cfg,
		Store:   store,
		OpenTPM: func() (*tpmdev.Device, error) { return openTPM(cfg, log) },
		DPS:     client,
		DPSWithCSR: func(csr []byte) provision.DPS {
			return client.WithCSR(csr)
		},
		Hub:     &provision.HubOptions{Endpoint: cfg.Hub.EndpointOverride, RootCAs: roots},
		OnPhase: notify.Status,
		// READY is also when the daemon's answers become right: the TPM is
		// open (or found unusable) and the identity loaded or found missing.
		OnReady: func() {
			close(be.started)
			notify.Ready()
			go afterReady(ctx, be, cfg, log)
		},
		OnChange: be.changes.Notify,
		Log:      log,
	})
	be.Engine = engine
	srv := localapi.New(be, localapi.Options{
		SocketGroup: cfg.Status.Group,
		TokenAllow:  cfg.Token.Allow,
		MaxTTL:      cfg.Token.MaxTTL,
		Log:         log,
	})

	log.Info("dpsd starting", "config", configPath, "tpm", cfg.TPM.Device, "state_dir", cfg.State.Dir, "socket", cfg.Status.Socket)
	// A dead status socket stops everything: systemd restarts the service
	// rather than keep a daemon nobody can ask.
	return runTasks(ctx,
		func() {
			notify.Stopping()
			log.Info("dpsd stopping")
		},
		func(ctx context.Context) error {
			if err := srv.Serve(ctx, ln); err != nil {
				return fmt.Errorf("serving the status socket: %w", err)
			}
			return nil
		},
		engine.Run,
		func(ctx context.Context) error {
			notify.Watchdog(ctx, engine.Healthy)
			return nil
		},
	)
}

// runTasks runs the daemon's tasks under one context until ctx ends or a
// task fails: the first failure cancels the others and is returned;
// cancellation is not an error. A task that returns nil early (the
// watchdog, when systemd wants none) leaves the others running. stopping
// runs once, when the shutdown starts, before the tasks are waited for.
func runTasks(ctx context.Context, stopping func(), tasks ...func(context.Context) error) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, task := range tasks {
		g.Go(func() error { return task(gctx) })
	}
	<-gctx.Done()
	stopping()
	if err := g.Wait(); !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// backend is what the status socket serves: the engine plus the
// diagnostics.
type backend struct {
	*provision.Engine
	cfg        *config.Config
	configPath string
	// started is closed when the engine is READY (called once).
	started chan struct{}
	changes localapi.Signal
}

var _ localapi.Backend = (*backend)(nil)

// Started is closed once the engine has settled its start.
func (b *backend) Started() <-chan struct{} { return b.started }

// Changed is closed at the engine's next status change.
func (b *backend) Changed() <-chan struct{} { return b.changes.C() }

// Reprovision is a technician's request (POST /v1/reprovision).
func (b *backend) Reprovision(context.Context) error {
	b.Engine.Reprovision(apitype.ReasonRequested)
	return nil
}

// Token signs a hub token for an app on the device.
func (b *backend) Token(ctx context.Context, ttl time.Duration) (apitype.Token, error) {
	tok, err := b.Engine.Token(ctx, ttl)
	switch {
	case errors.Is(err, provision.ErrNotProvisioned):
		err = notProvisioned{err}
	case errors.Is(err, provision.ErrCertificateAuth):
		err = localapi.ErrCertificateAuth
	}
	return tok, err
}

// notProvisioned is the engine's error, in its own words (a device never
// provisioned, or one whose key was invalidated), as the socket's
// ErrNotProvisioned.
type notProvisioned struct{ error }

func (notProvisioned) Is(target error) bool { return target == localapi.ErrNotProvisioned }

func (n notProvisioned) Unwrap() error { return n.error }

// Check runs the diagnostics on the daemon's own TPM connection (a second
// opener could not share swtpm, and would race the engine on a device).
func (b *backend) Check(ctx context.Context) apitype.CheckReport {
	st := b.Engine.Status()
	env := check.Env{
		ConfigPath:  b.configPath,
		Config:      b.cfg,
		IdentityKey: b.Engine.CheckIdentity,
		AssignedHub: st.AssignedHub,
		ServiceUser: apitype.ServiceUser,
		BuildTime:   version.BuildTime(),
	}
	if rec, found, err := (state.Store{Dir: b.cfg.State.Dir}).Load(); err == nil && found {
		env.OwnerAuthSealed = rec.OwnerAuthSealed
	}
	if dev := b.Engine.TPM(); dev != nil {
		env.TPM = dev
	} else {
		env.TPMErr = errors.New("the daemon has not opened the TPM yet")
		if st.LastError != nil {
			env.TPMErr = fmt.Errorf("the daemon has not opened the TPM yet: %s", *st.LastError)
		}
	}
	return check.Run(ctx, env)
}

// openTPM opens the configured TPM with the configured bus protection.
func openTPM(cfg *config.Config, log *slog.Logger) (*tpmdev.Device, error) {
	dev, err := tpmdev.Open(cfg.TPM.Device, log)
	if err == nil && cfg.TPM.BusProtection == config.BusOff {
		dev.SetBusProtection(tpmdev.BusOff)
	}
	return dev, err
}

// afterReady does the TPM housekeeping that READY need not wait for. It
// is not waited for: a daemon that stops closes the TPM, and a closed
// Device runs nothing.
// Without a resource manager it flushes what was left in the TPM (until
// then a full TPM is flushed on demand). With apps allowed tokens it starts
// their session: on a restart nothing else signs before the first app asks,
// which would otherwise wait for a salted session's setup (an RSA
// decryption in the TPM, ~150 ms on a discrete one).
func afterReady(ctx context.Context, be *backend, cfg *config.Config, log *slog.Logger) {
	dev := be.Engine.TPM()
	if dev == nil {
		return
	}
	if err := dev.FlushLeftovers(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, tpmdev.ErrClosed) {
		log.Warn("flushing what was left in the TPM failed; a full TPM is flushed when a command finds it full", "err", err)
	}
	if len(cfg.Token.Allow) == 0 || be.Engine.Status().State != apitype.PhaseProvisioned {
		return
	}
	if err := dev.PrepareTokens(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, tpmdev.ErrClosed) {
		log.Warn("preparing the TPM for tokens failed; the first token will do it", "err", err)
	}
}
