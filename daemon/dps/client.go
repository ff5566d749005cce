// Package dps is the device side of Azure IoT Hub Device Provisioning
// Service registration with TPM attestation over HTTPS
// (docs/dps-tpm-protocol.md §3, §5): the registration ID derived from the
// EK, and a client for the challenge, the authenticated registration and
// the polls. It never touches the TPM: callers pass the EK and SRK publics
// and a SAS token signed elsewhere.
package dps

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/version"
)

// Defaults for the zero values of ClientConfig.
const (
	DefaultEndpoint   = "https://global.azure-devices-provisioning.net"
	DefaultAPIVersion = "2021-06-01"
	// APIVersionCertificates is the first generally available api-version
	// whose registration carries a csr and answers an
	// issuedCertificateChain (docs/dps-x509-issuance.md).
	APIVersionCertificates = "2026-11-01"
	DefaultTimeout         = 30 * time.Second
)

// ClientConfig says where and how to reach DPS.
type ClientConfig struct {
	// Endpoint is the base URL, https only; empty: DefaultEndpoint.
	Endpoint string
	// IDScope is the DPS instance's ID scope; required.
	IDScope string
	// APIVersion is the api-version query value; empty: DefaultAPIVersion.
	APIVersion string
	// RootCAs verifies the server; nil: the system roots.
	RootCAs *x509.CertPool
	// Proxy is an HTTP(S) proxy URL; empty: HTTPS_PROXY / NO_PROXY from the
	// environment.
	Proxy string
	// Timeout bounds each exchange, body included; 0: DefaultTimeout.
	Timeout time.Duration
	// Log receives one debug line per exchange; nil: discarded.
	Log *slog.Logger
}

// Client talks to one DPS instance. It is safe for concurrent use.
type Client struct {
	base       *url.URL
	idScope    string
	apiVersion string
	timeout    time.Duration
	http       *http.Client
	log        *slog.Logger
	csr        []byte // DER; sent as csr when not nil (WithCSR)
}

// NewClient checks cfg and builds a client with verified TLS (1.2 or
// later), the proxy, and timeouts on every step of an exchange.
func NewClient(cfg ClientConfig) (*Client, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = DefaultEndpoint
	}
	base, err := url.Parse(cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("DPS endpoint %q: %w", cfg.Endpoint, err)
	}
	if base.Scheme != "https" || base.Host == "" || base.RawQuery != "" || base.Fragment != "" || base.User != nil {
		return nil, fmt.Errorf("DPS endpoint %q: want https://host[:port][/path], without query or credentials", cfg.Endpoint)
	}
	base.Path = strings.TrimSuffix(base.Path, "/")
	base.RawPath = ""
	if cfg.IDScope == "" || strings.ContainsAny(cfg.IDScope, "/?#") {
		return nil, fmt.Errorf("DPS ID scope %q: want a non-empty scope such as 0ne00000A0A", cfg.IDScope)
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	proxy := http.ProxyFromEnvironment
	if cfg.Proxy != "" {
		u, err := url.Parse(cfg.Proxy)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("proxy %q: want http://host:port or https://host:port", cfg.Proxy)
		}
		proxy = http.ProxyURL(u)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	transport := &http.Transport{
		Proxy:                 proxy,
		DialContext:           (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		// DPS sends well under 2 KiB of headers; net/http's default (10 MB)
		// lets a hostile server or proxy make the daemon hold megabytes.
		MaxResponseHeaderBytes: maxHeaderBytes,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           2,
		IdleConnTimeout:        90 * time.Second,
	}
	return &Client{
		base:       base,
		idScope:    cfg.IDScope,
		apiVersion: cfg.APIVersion,
		timeout:    cfg.Timeout,
		http: &http.Client{
			Transport: transport,
			// DPS never redirects; following one would send the token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log: cfg.Log,
	}, nil
}

// WithCSR returns a client like c whose registration bodies (challenge
// and register) carry a certificate signing request (DER PKCS #10, subject
// CN = the registration ID) as csr, so that an enrollment with a credential
// policy issues an operational certificate
// (Operation.State.IssuedCertificateChain). It needs APIVersionCertificates
// or later. DPS's handling of csr on the challenge is undocumented; sending
// it on both requests is safe. c itself is unchanged.
func (c *Client) WithCSR(der []byte) *Client {
	cc := *c
	cc.csr = bytes.Clone(der)
	return &cc
}

// Challenge sends the first PUT, without Authorization (§5.1), and returns
// the 401 challenge. payload, when not nil, is the custom allocation JSON.
func (c *Client) Challenge(ctx context.Context, regID string, ek, srk []byte, payload json.RawMessage) (*Challenge, error) {
	body, err := registerBody(regID, ek, srk, payload, c.csr)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, "challenge", http.MethodPut, c.registerPath(regID), body, "")
	if err != nil {
		return nil, err
	}
	if resp.status == http.StatusUnauthorized {
		ch, ok, err := parseChallenge(resp.body)
		if err != nil {
			return nil, err
		}
		if ok {
			ch.ServerDate = resp.date
			return ch, nil
		}
	}
	if resp.status >= 200 && resp.status < 300 {
		return nil, fmt.Errorf("%w: %d to the unauthenticated registration, want a 401 challenge", ErrProtocol, resp.status)
	}
	return nil, resp.err()
}

// ServerTime asks DPS for its clock: the Date header of a HEAD request to
// the endpoint, whatever its status. The daemon uses it only when the system
// clock is certainly wrong and no registration is due to bring a Date.
func (c *Client) ServerTime(ctx context.Context) (time.Time, error) {
	resp, err := c.do(ctx, "time", http.MethodHead, "/", nil, "")
	if err != nil {
		return time.Time{}, err
	}
	if resp.date.IsZero() {
		return time.Time{}, fmt.Errorf("%w: no Date header in the answer", ErrProtocol)
	}
	return resp.date, nil
}

// Register sends the authenticated PUT with the same body as the challenge
// request and returns the operation DPS started (or finished).
func (c *Client) Register(ctx context.Context, regID string, ek, srk []byte, payload json.RawMessage, sas string) (*Operation, error) {
	body, err := registerBody(regID, ek, srk, payload, c.csr)
	if err != nil {
		return nil, err
	}
	if sas == "" {
		return nil, errors.New("registering: empty SAS token")
	}
	resp, err := c.do(ctx, "register", http.MethodPut, c.registerPath(regID), body, sas)
	if err != nil {
		return nil, err
	}
	return resp.operation()
}

// Poll asks for the status of an operation.
func (c *Client) Poll(ctx context.Context, regID, operationID, sas string) (*Operation, error) {
	if err := ValidRegistrationID(regID); err != nil {
		return nil, err
	}
	if operationID == "" || len(operationID) > maxOperationID {
		return nil, fmt.Errorf("polling: operation ID of %d bytes", len(operationID))
	}
	if sas == "" {
		return nil, errors.New("polling: empty SAS token")
	}
	path := "/" + url.PathEscape(c.idScope) + "/registrations/" + url.PathEscape(regID) + "/operations/" + url.PathEscape(operationID)
	resp, err := c.do(ctx, "poll", http.MethodGet, path, nil, sas)
	if err != nil {
		return nil, err
	}
	return resp.operation()
}

func (c *Client) registerPath(regID string) string {
	return "/" + url.PathEscape(c.idScope) + "/registrations/" + url.PathEscape(regID) + "/register"
}

// registerBody is DeviceRegistration with the TPM attestation (§5.1): both
// publics as standard base64 of the marshalled TPM2B_PUBLIC; the csr, when
// asked for, as standard base64 of the DER request.
func registerBody(regID string, ek, srk []byte, payload json.RawMessage, csrDER []byte) ([]byte, error) {
	if err := ValidRegistrationID(regID); err != nil {
		return nil, err
	}
	if len(ek) == 0 || len(srk) == 0 {
		return nil, errors.New("registering: EK and SRK publics are required")
	}
	if len(payload) != 0 && !json.Valid(payload) {
		return nil, errors.New("registering: payload is not valid JSON")
	}
	var csr string
	if csrDER != nil {
		csr = base64.StdEncoding.EncodeToString(csrDER)
	}
	type tpmAttestation struct {
		EndorsementKey string `json:"endorsementKey"`
		StorageRootKey string `json:"storageRootKey"`
	}
	return json.Marshal(struct {
		RegistrationID string          `json:"registrationId"`
		TPM            tpmAttestation  `json:"tpm"`
		Payload        json.RawMessage `json:"payload,omitempty"`
		CSR            string          `json:"csr,omitempty"`
	}{
		RegistrationID: regID,
		TPM: tpmAttestation{
			EndorsementKey: base64.StdEncoding.EncodeToString(ek),
			StorageRootKey: base64.StdEncoding.EncodeToString(srk),
		},
		Payload: payload,
		CSR:     csr,
	})
}

// response is what do keeps of an HTTP answer.
type response struct {
	status     int
	header     http.Header
	body       []byte
	date       time.Time
	retryAfter time.Duration
}

// err is the *Error for a response that is not a success.
func (r *response) err() error {
	e := parseError(r.status, r.header, r.body)
	e.RetryAfter, e.ServerDate = r.retryAfter, r.date
	return e
}

// operation reads a 200/202 operation status, or returns the error.
func (r *response) operation() (*Operation, error) {
	if r.status != http.StatusOK && r.status != http.StatusAccepted {
		if r.status >= 200 && r.status < 300 {
			return nil, fmt.Errorf("%w: status %d, want 200 or 202", ErrProtocol, r.status)
		}
		return nil, r.err()
	}
	op, err := parseOperation(r.body)
	if err != nil {
		return nil, err
	}
	op.RetryAfter, op.ServerDate = r.retryAfter, r.date
	return op, nil
}

// do performs one exchange within the client's timeout. Network failures
// come back as *Error with HTTPStatus 0; a cancelled ctx as ctx's error.
func (c *Client) do(ctx context.Context, op, method, path string, body []byte, sas string) (*response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := *c.base
	u.RawPath = c.base.EscapedPath() + path
	u.Path, _ = url.PathUnescape(u.RawPath) // path was built with PathEscape
	u.RawQuery = url.Values{"api-version": {c.apiVersion}}.Encode()

	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("DPS %s request: %w", op, err)
	}
	if body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "dpsd/"+version.Version)
	if sas != "" {
		req.Header.Set("Authorization", sas)
	}

	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.networkError(ctx, op, start, err)
	}
	defer resp.Body.Close()
	data, err := readBody(resp.Body)
	if err != nil {
		if errors.Is(err, ErrProtocol) {
			return nil, err
		}
		return nil, c.networkError(ctx, op, start, err)
	}
	r := &response{status: resp.StatusCode, header: resp.Header, body: data, date: serverDate(resp.Header)}
	r.retryAfter = retryAfter(resp.Header.Get("Retry-After"), r.date, time.Now())
	c.log.Debug("DPS exchange", "op", op, "method", method, "path", path, "status", resp.StatusCode,
		"bytes", len(data), "retryAfter", r.retryAfter, "took", time.Since(start).Round(time.Millisecond))
	return r, nil
}

// networkError tells a cancelled caller from a failed network.
func (c *Client) networkError(ctx context.Context, op string, start time.Time, err error) error {
	c.log.Debug("DPS exchange failed", "op", op, "error", err, "took", time.Since(start).Round(time.Millisecond))
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.DeadlineExceeded) {
		return fmt.Errorf("DPS %s: %w", op, cause)
	}
	return &Error{Err: fmt.Errorf("%s: %w", op, err)}
}
