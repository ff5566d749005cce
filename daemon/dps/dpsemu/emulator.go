// Package dpsemu is the emulator's DPS side and its wiring: the DPS device
// API over HTTPS with TPM attestation (docs/dps-tpm-protocol.md §4, §5, §8,
// §11), individual TPM enrollments and registrations kept in a state
// directory, the admin API (docs/design.md, "The emulator: dpsemu"), and the
// embedded IoT Hub (package hubemu) that gets a device identity for every
// assignment.
//
// Start runs the whole emulator in-process; cmd/dpsemu is a thin main
// around Run.
package dpsemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
)

// Defaults of Options.
const (
	// DefaultAssignAfterPolls: one poll is answered "assigning", so every
	// client exercises its polling loop.
	DefaultAssignAfterPolls = 1
	// DefaultListen binds a free loopback port.
	DefaultListen = "127.0.0.1:0"

	// shutdownGrace bounds the wait for in-flight requests at Close.
	shutdownGrace = 5 * time.Second
	// readHeaderTimeout bounds a client's request headers (slowloris).
	readHeaderTimeout = 10 * time.Second
	// idleTimeout closes keep-alive connections a client forgot.
	idleTimeout = 2 * time.Minute
)

// Options configures the emulator.
type Options struct {
	// Dir holds ca.pem, ca-key.pem, the device-root and device-ca pairs
	// and registry.json; created if missing.
	Dir string
	// IDScope is the DPS ID scope devices must use.
	IDScope string
	// Hubs are the IoT Hub host names devices are allocated to; at least one.
	Hubs []string
	// DPSListen, HubListen and AdminListen are TCP addresses; empty means
	// DefaultListen. An address without a host (":8443") is refused; the
	// admin API must be on loopback.
	DPSListen, HubListen, AdminListen string
	// AssignAfterPolls is how many polls answer "assigning" before the
	// terminal state; nil means DefaultAssignAfterPolls. PUT /faults
	// overrides it at run time.
	AssignAfterPolls *int
	// RetryAfter is the Retry-After, in seconds, of every 202. Production
	// DPS sends 3; the zero value makes tests fast.
	RetryAfter int
	// MethodTimeout bounds a direct method's wait; 0 is hubemu's default.
	MethodTimeout time.Duration
	// Log receives the emulator's operations; nil discards.
	Log *slog.Logger
}

// Addrs are the bound addresses, as printed on the ready line.
type Addrs struct {
	DPS   string `json:"dps"`
	Hub   string `json:"hub"`
	Admin string `json:"admin"`
}

// Emulator is a running DPS + IoT Hub emulator. Start it with Start; stop
// it with Close.
type Emulator struct {
	addrs       Addrs
	caPath      string
	roots       *x509.CertPool
	deviceRoots *x509.CertPool
	svc         *service
	hub         *hubemu.Server
	dps         *http.Server
	admin       *http.Server

	failed    chan error // the first unexpected Serve error
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Start validates opts, loads or creates the CA and the registry in
// opts.Dir, binds the three listeners and serves until Close.
func Start(opts Options) (*Emulator, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	hubs, err := checkOptions(&opts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	now := time.Now()
	ca, err := loadOrCreateCA(opts.Dir, caFiles{cert: caCertFile, key: caKeyFile, name: "dpsemu test CA"}, now)
	if err != nil {
		return nil, err
	}
	devices, err := loadOrCreateIssuer(opts.Dir, now)
	if err != nil {
		return nil, err
	}
	data, err := loadRegistry(opts.Dir)
	if err != nil {
		return nil, err
	}

	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	for _, l := range []struct {
		what, addr   string
		loopbackOnly bool
	}{
		{"DPS", opts.DPSListen, false},
		{"hub", opts.HubListen, false},
		{"admin", opts.AdminListen, true},
	} {
		ln, err := listen(l.what, l.addr, l.loopbackOnly)
		if err != nil {
			closeAll()
			return nil, err
		}
		lns = append(lns, ln)
	}
	dpsLn, hubLn, adminLn := lns[0], lns[1], lns[2]

	dnsNames, ips := certNames(hubs, opts.DPSListen, opts.HubListen)
	cert, err := ca.serverCert(dnsNames, ips, now)
	if err != nil {
		closeAll()
		return nil, err
	}
	tlsConfig := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	deviceRoots := x509.NewCertPool()
	deviceRoots.AddCert(devices.root.cert)

	// The hub asks every device for a certificate; SAS devices send none,
	// and hubemu, not the handshake, judges those that do.
	hubTLS := tlsConfig.Clone()
	hubTLS.ClientAuth = tls.RequestClientCert
	counts := newStats()
	hub := hubemu.New(hubemu.Options{
		Log:           log.With("side", "hub"),
		Hubs:          hubs,
		TLS:           hubTLS,
		ClientCAs:     deviceRoots,
		MethodTimeout: opts.MethodTimeout,
		OnConnect:     func() { counts.add(statHubConnect) },
	})
	polls := DefaultAssignAfterPolls
	if opts.AssignAfterPolls != nil {
		polls = *opts.AssignAfterPolls
	}
	svc := &service{
		log:              log.With("side", "dps"),
		dir:              opts.Dir,
		idScope:          opts.IDScope,
		hubs:             hubs,
		hub:              hub,
		issuer:           devices,
		faults:           &faultState{},
		stats:            counts,
		assignAfterPolls: polls,
		retryAfter:       opts.RetryAfter,
		data:             data,
		challenges:       map[string]*challenge{},
		ops:              map[string]*operation{},
		pending:          map[string]*Registration{},
	}
	svc.repopulateHub()

	// HTTP/1.1 only: the SDKs speak it, and a dropped-connection fault
	// then really closes the TCP connection.
	dpsTLS := tlsConfig.Clone()
	dpsTLS.NextProtos = []string{"http/1.1"}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelDebug)
	e := &Emulator{
		addrs:       Addrs{DPS: dpsLn.Addr().String(), Hub: hubLn.Addr().String(), Admin: adminLn.Addr().String()},
		caPath:      filepath.Join(opts.Dir, caCertFile),
		roots:       roots,
		deviceRoots: deviceRoots,
		svc:         svc,
		hub:         hub,
		dps: &http.Server{
			Handler:           svc,
			ReadHeaderTimeout: readHeaderTimeout,
			IdleTimeout:       idleTimeout,
			ErrorLog:          errLog,
			TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		},
		admin:  &http.Server{Handler: svc.adminHandler(), ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout, ErrorLog: errLog},
		failed: make(chan error, 3),
	}
	e.serve("DPS", func() error { return e.dps.Serve(tls.NewListener(dpsLn, dpsTLS)) })
	e.serve("hub", func() error { return hub.Serve(hubLn) })
	e.serve("admin", func() error { return e.admin.Serve(adminLn) })
	log.Info("dpsemu ready", "dps", e.addrs.DPS, "hub", e.addrs.Hub, "admin", e.addrs.Admin,
		"idScope", opts.IDScope, "hubs", strings.Join(hubs, ","), "dir", opts.Dir,
		"enrollments", len(data.Enrollments), "devices", len(data.Devices))
	return e, nil
}

// serve runs one server; an error other than a normal close is reported
// on e.failed.
func (e *Emulator) serve(what string, run func() error) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		err := run()
		if err == nil || errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
			return
		}
		select {
		case e.failed <- fmt.Errorf("serving %s: %w", what, err):
		default:
		}
	}()
}

// Addrs returns the bound addresses.
func (e *Emulator) Addrs() Addrs { return e.addrs }

// CAPath returns the path of ca.pem, the trust anchor of both TLS endpoints.
func (e *Emulator) CAPath() string { return e.caPath }

// RootCAs returns a pool holding the emulator's CA, for in-process clients.
func (e *Emulator) RootCAs() *x509.CertPool { return e.roots }

// DeviceRootCAs returns a pool holding the root of the operational
// certificates the emulator issues (GET /certificates/device-root).
func (e *Emulator) DeviceRootCAs() *x509.CertPool { return e.deviceRoots }

// SetFaults replaces the injected faults, as PUT /faults does.
func (e *Emulator) SetFaults(f Faults) error {
	if err := f.DPS.validate(); err != nil {
		return err
	}
	e.svc.faults.set(f.DPS)
	return nil
}

// Stats returns the DPS request counts, as GET /stats does.
func (e *Emulator) Stats() map[string]int { return e.svc.stats.snapshot() }

// Close stops the three servers, waiting briefly for requests in flight.
// The registry needs no flushing: every change was written when it was made.
func (e *Emulator) Close() error {
	e.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		var errs []error
		for _, srv := range []*http.Server{e.dps, e.admin} {
			if err := srv.Shutdown(ctx); err != nil {
				errs = append(errs, err, srv.Close())
			}
		}
		errs = append(errs, e.hub.Close())
		e.wg.Wait()
		e.closeErr = errors.Join(errs...)
		e.svc.log.Info("dpsemu stopped", "stats", e.svc.stats.snapshot())
	})
	return e.closeErr
}

// Run starts the emulator, calls ready with its addresses, and serves until
// ctx ends or a server fails; then it closes the emulator.
func Run(ctx context.Context, opts Options, ready func(Addrs)) error {
	e, err := Start(opts)
	if err != nil {
		return err
	}
	ready(e.Addrs())
	select {
	case <-ctx.Done():
	case err = <-e.failed:
	}
	return errors.Join(err, e.Close())
}

// checkOptions validates opts, fills defaults, and returns the hub names.
func checkOptions(opts *Options) ([]string, error) {
	if opts.Dir == "" {
		return nil, errors.New("a state directory is required (--dir)")
	}
	if opts.IDScope == "" || strings.ContainsAny(opts.IDScope, "/?#% ") {
		return nil, fmt.Errorf("ID scope %q: want a non-empty scope such as 0ne00000A0A (--id-scope)", opts.IDScope)
	}
	var hubs []string
	for _, h := range opts.Hubs {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if strings.ContainsAny(h, "/:?#% ") {
			return nil, fmt.Errorf("hub name %q: want a host name such as contoso.azure-devices.net (--hub)", h)
		}
		for _, seen := range hubs {
			if strings.EqualFold(seen, h) {
				return nil, fmt.Errorf("hub %q given twice", h)
			}
		}
		hubs = append(hubs, h)
	}
	if len(hubs) == 0 {
		return nil, errors.New("at least one hub name is required (--hub)")
	}
	if opts.AssignAfterPolls != nil && *opts.AssignAfterPolls < 0 {
		return nil, fmt.Errorf("assign-after-polls %d must not be negative", *opts.AssignAfterPolls)
	}
	if opts.RetryAfter < 0 {
		return nil, fmt.Errorf("retry-after %d must not be negative", opts.RetryAfter)
	}
	for _, a := range []*string{&opts.DPSListen, &opts.HubListen, &opts.AdminListen} {
		if *a == "" {
			*a = DefaultListen
		}
	}
	return hubs, nil
}

// listen binds addr. Loopback is the default; another address is used
// only when named explicitly (design.md): an empty host, which would
// silently mean every interface, is refused, and the admin API, which has no
// authentication, only ever listens on loopback.
func listen(what, addr string, loopbackOnly bool) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen address %q: %w", what, addr, err)
	}
	if host == "" {
		return nil, fmt.Errorf("%s listen address %q names no host: use 127.0.0.1:PORT, or name the interface to expose", what, addr)
	}
	loopback := host == "localhost"
	if ip := net.ParseIP(host); ip != nil {
		loopback = ip.IsLoopback()
	}
	if loopbackOnly && !loopback {
		return nil, fmt.Errorf("%s listen address %q is not loopback: the admin API has no authentication and listens on loopback only", what, addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening for %s on %s: %w", what, addr, err)
	}
	return ln, nil
}

// certNames lists what the server certificate names: localhost, the
// loopback addresses, every hub, and any other host the listeners were
// given.
func certNames(hubs []string, listens ...string) ([]string, []net.IP) {
	dns := append([]string{"localhost"}, hubs...)
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, a := range listens {
		host, _, err := net.SplitHostPort(a)
		if err != nil || host == "" || host == "localhost" {
			continue
		}
		if ip := net.ParseIP(host); ip != nil {
			if !ip.IsLoopback() && !ip.IsUnspecified() {
				ips = append(ips, ip)
			}
			continue
		}
		dns = append(dns, host)
	}
	return dns, ips
}
