package check

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// hubPort is IoT Hub's MQTT over TLS port.
const hubPort = "8883"

// timeout is the bound of one network probe.
func (r *run) timeout() time.Duration {
	return min(r.cfg.Network.Timeout, netTimeout)
}

func (r *run) resolver() *net.Resolver {
	if r.env.Resolver != nil {
		return r.env.Resolver
	}
	return net.DefaultResolver
}

func (r *run) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if r.env.DialContext != nil {
		return r.env.DialContext(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// proxy is [network] proxy, else HTTPS_PROXY from the environment.
func (r *run) proxy() (func(*http.Request) (*url.URL, error), error) {
	if p := r.cfg.Network.Proxy; p != "" {
		u, err := url.Parse(p)
		if err != nil {
			return nil, fmt.Errorf("parsing [network] proxy: %w", err)
		}
		return http.ProxyURL(u), nil
	}
	return http.ProxyFromEnvironment, nil
}

func (r *run) dpsHost() (string, error) {
	u, err := url.Parse(r.cfg.Provisioning.GlobalEndpoint)
	if err != nil {
		return "", fmt.Errorf("parsing global_endpoint: %w", err)
	}
	return u.Hostname(), nil
}

func (r *run) dpsDNS(ctx context.Context) apitype.Check {
	host, err := r.dpsHost()
	if err != nil {
		return fail(NameDPSDNS, err.Error(), "fix [provisioning] global_endpoint")
	}
	if net.ParseIP(host) != nil {
		return pass(NameDPSDNS, host+" is an IP address")
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	addrs, err := r.resolver().LookupHost(ctx, host)
	if err != nil {
		if r.cfg.Network.Proxy != "" || os.Getenv("HTTPS_PROXY") != "" || os.Getenv("https_proxy") != "" {
			return warn(NameDPSDNS, err.Error(), "the proxy resolves it for dpsd; check the proxy if dps-tls fails too")
		}
		r.dnsFailed = true
		return fail(NameDPSDNS, err.Error(), "check the network and DNS (resolvectl status, /etc/resolv.conf)")
	}
	return pass(NameDPSDNS, fmt.Sprintf("%s resolves to %v", host, addrs))
}

func (r *run) dpsTLS(ctx context.Context) apitype.Check {
	if r.dnsFailed {
		return warn(NameDPSTLS, "not checked: the DPS name does not resolve", "see the dps-dns check")
	}
	endpoint := r.cfg.Provisioning.GlobalEndpoint
	roots, err := r.cfg.Network.RootCAs()
	if err != nil {
		return fail(NameDPSTLS, err.Error(), "fix or empty [network] ca_file")
	}
	proxy, err := r.proxy()
	if err != nil {
		return fail(NameDPSTLS, err.Error(), "fix [network] proxy")
	}
	tr := &http.Transport{
		Proxy:             proxy,
		DialContext:       r.dial,
		TLSClientConfig:   &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
		// As the DPS client: DPS sends about 1 KiB; net/http would take 10 MB.
		MaxResponseHeaderBytes: 64 << 10,
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint+"/", nil)
	if err != nil {
		return fail(NameDPSTLS, err.Error(), "fix [provisioning] global_endpoint")
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fail(NameDPSTLS, err.Error(), tlsFix(err, "443"))
	}
	arrived := r.now()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if date, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		r.dpsSkew, r.dpsReached = arrived.Sub(date), true
	}
	return pass(NameDPSTLS, fmt.Sprintf("TLS to %s verified (HTTP %d)", req.URL.Host, resp.StatusCode))
}

func (r *run) hubTLS(ctx context.Context) apitype.Check {
	hub := r.env.AssignedHub
	if hub == "" {
		return warn(NameHubTLS, "no hub assigned yet", "provisioning assigns one; see dpsd status")
	}
	addr := net.JoinHostPort(hub, hubPort)
	if o := r.cfg.Hub.EndpointOverride; o != "" {
		addr = o
	}
	roots, err := r.cfg.Network.RootCAs()
	if err != nil {
		return fail(NameHubTLS, err.Error(), "fix or empty [network] ca_file")
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout())
	defer cancel()
	raw, err := r.dial(ctx, "tcp", addr)
	if err != nil {
		return fail(NameHubTLS, fmt.Sprintf("connecting to %s: %v", addr, err), tlsFix(err, hubPort))
	}
	defer raw.Close()
	conn := tls.Client(raw, &tls.Config{ServerName: hub, RootCAs: roots, MinVersion: tls.VersionTLS12})
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(NameHubTLS, fmt.Sprintf("TLS to %s: %v", addr, err), tlsFix(err, hubPort))
	}
	return pass(NameHubTLS, fmt.Sprintf("TLS to %s verified as %s", addr, hub))
}

// tlsFix is the advice for a failed connection or handshake.
func tlsFix(err error, port string) string {
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return "a certificate looks expired: check the clock (timedatectl status)"
	case errors.As(err, &unknownAuthority), errors.As(err, &hostname), errors.As(err, &invalid):
		return "the server's certificate is not trusted: if a TLS-inspecting proxy is in the way, add its CA with [network] ca_file"
	}
	return "check the network, the firewall (outbound " + port + ") and [network] proxy"
}
