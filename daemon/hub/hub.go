// Package hub is the device's side of Azure IoT Hub over MQTT
// (docs/dps-tpm-protocol.md §4.2 and §10): it proves a provisioned
// credential by connecting with a SAS token signed inside the TPM, reports
// the twin's reported properties, and optionally keeps a session that
// answers the direct methods the daemon serves.
//
// It is the project's only importer of paho.mqtt.golang.
package hub

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"github.com/dpsd-project/dpsd/daemon/sas"
)

// ErrRejected: the hub refused the credentials (CONNACK 0x02, 0x04 or
// 0x05: device unknown, deleted, disabled or moved, or a bad token). The
// caller re-registers with DPS; retrying the same credential is useless.
var ErrRejected = errors.New("hub refused the device's credentials")

// APIVersion is the api-version sent in the MQTT user name.
const APIVersion = "2021-04-12"

// Defaults and bounds of a session.
const (
	// DefaultTokenTTL is the lifetime of a hub token when Config.TokenTTL
	// is zero (the Node SDK's choice).
	DefaultTokenTTL = time.Hour
	// keepAlive is the C SDK's; the hub closes after 1.5 × keep-alive.
	keepAlive = 240 * time.Second
	// connectTimeout bounds TCP, TLS and CONNECT/CONNACK together.
	connectTimeout = 30 * time.Second
	// opTimeout bounds a wait for SUBACK, PUBACK or a twin answer.
	opTimeout = 30 * time.Second
	// quiesce is how long a clean disconnect waits for work in flight (ms).
	quiesce = 250
)

// Config says which hub and device to connect as, and how to sign.
type Config struct {
	// Hub is the assigned hub's host name; TLS always verifies this name.
	Hub string
	// DeviceID is the device ID DPS assigned.
	DeviceID string
	// Endpoint is HOST:PORT to dial instead of Hub:8883 (gateways, tests);
	// "" dials the hub.
	Endpoint string
	// RootCAs verifies the hub's certificate; nil uses the system roots.
	RootCAs *x509.CertPool
	// Sign computes HMAC-SHA256 with the device's identity key (in the TPM).
	Sign sas.Signer
	// Certificate, when set, authenticates the device by TLS client
	// certificate (an operational certificate DPS issued, its key in the
	// TPM) with an empty password instead of a SAS token; Sign and
	// TokenTTL are then unused. A session lives until its notAfter.
	Certificate *tls.Certificate
	// TokenTTL is the lifetime of each token; 0 means DefaultTokenTTL.
	TokenTTL time.Duration
	// Now is the clock tokens are dated by; nil means time.Now.
	Now func() time.Time
	// Log receives connects, disconnects and method calls; nil discards.
	Log *slog.Logger
}

// Check connects, reports the twin's reported properties (waiting for the
// hub's 204) unless reported is nil, and disconnects. It returns the time
// from dialling to CONNACK. A refusal of the credentials wraps ErrRejected;
// a signing error wraps the signer's error; any other error (network, TLS,
// timeout) is transient.
func Check(ctx context.Context, cfg Config, reported map[string]any) (time.Duration, error) {
	c, took, err := connect(ctx, cfg, nil)
	if err != nil {
		return took, err
	}
	defer c.close()
	if reported != nil {
		if err := c.report(ctx, reported); err != nil {
			return took, err
		}
	}
	return took, nil
}

func (cfg Config) validate() error {
	if cfg.Hub == "" || cfg.DeviceID == "" || (cfg.Sign == nil && cfg.Certificate == nil) {
		return errors.New("hub config: hub, device ID and a signer or certificate are required")
	}
	if cfg.Certificate != nil && cfg.Certificate.Leaf == nil {
		return errors.New("hub config: the client certificate has no parsed Leaf")
	}
	return nil
}

// signError is a failure of the signer (the TPM), which no retry of the
// hub can fix; it wraps the signer's error for the caller to inspect.
type signError struct{ err error }

func (e signError) Error() string { return "signing the hub token: " + e.err.Error() }
func (e signError) Unwrap() error { return e.err }

func (cfg Config) now() time.Time {
	if cfg.Now != nil {
		return cfg.Now()
	}
	return time.Now()
}

func (cfg Config) logger() *slog.Logger {
	if cfg.Log != nil {
		return cfg.Log
	}
	return slog.New(slog.DiscardHandler)
}

// conn is one MQTT connection to the hub.
type conn struct {
	log    *slog.Logger
	client paho.Client
	expiry time.Time     // of the token this connection authenticated with
	lost   chan struct{} // closed when the connection drops
	err    error         // why it dropped; read after lost is closed

	mu      sync.Mutex
	nextRID uint64
	twin    map[string]chan twinAnswer // pending twin requests by $rid
}

type twinAnswer struct {
	status  int
	version string
	body    []byte
}

// connect dials the hub, authenticates with a fresh token, and subscribes
// to twin answers and, when methods is not nil, to direct methods, served
// until ctx ends.
func connect(ctx context.Context, cfg Config, methods *Handlers) (*conn, time.Duration, error) {
	if err := cfg.validate(); err != nil {
		return nil, 0, err
	}
	ttl := cfg.TokenTTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	log := cfg.logger().With("hub", cfg.Hub, "device", cfg.DeviceID)

	// se has whole seconds; renewal is planned from what the hub will see.
	expiry := cfg.now().Add(ttl).Truncate(time.Second)
	var token string
	tlsConf := &tls.Config{ServerName: cfg.Hub, RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}
	if cfg.Certificate != nil {
		// The handshake proves the key; the hub closes the connection
		// when the certificate expires.
		tlsConf.Certificates = []tls.Certificate{*cfg.Certificate}
		expiry = cfg.Certificate.Leaf.NotAfter
	} else {
		var err error
		if token, err = sas.New(ctx, sas.DeviceResource(cfg.Hub, cfg.DeviceID), expiry, "", cfg.Sign); err != nil {
			return nil, 0, signError{err}
		}
	}

	c := &conn{log: log, expiry: expiry, lost: make(chan struct{}), twin: map[string]chan twinAnswer{}}
	addr := cfg.Endpoint
	if addr == "" {
		addr = net.JoinHostPort(cfg.Hub, "8883")
	}
	opts := paho.NewClientOptions().
		AddBroker("tls://" + addr).
		SetClientID(cfg.DeviceID).
		SetUsername(cfg.Hub + "/" + cfg.DeviceID + "/?api-version=" + APIVersion).
		SetPassword(token). // empty with a certificate: no password at all
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false). // method handlers may take time (re-provisioning)
		SetKeepAlive(keepAlive).
		SetConnectTimeout(connectTimeout).
		SetTLSConfig(tlsConf).
		SetCustomOpenConnectionFn(func(*url.URL, paho.ClientOptions) (net.Conn, error) {
			// Dial the endpoint, verify the hub's name, and honour ctx.
			d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: connectTimeout}, Config: tlsConf}
			return d.DialContext(ctx, "tcp", addr)
		}).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			c.err = err
			close(c.lost)
		})
	c.client = paho.NewClient(opts)

	start := time.Now()
	tok := c.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		go func() { // the attempt ends within connectTimeout; do not leak it
			<-tok.Done()
			if tok.Error() == nil {
				c.client.Disconnect(0)
			}
		}()
		return nil, 0, fmt.Errorf("connecting to hub %s: %w", cfg.Hub, ctx.Err())
	}
	took := time.Since(start)
	if err := tok.Error(); err != nil {
		switch rc := tok.(*paho.ConnectToken).ReturnCode(); rc {
		case packets.ErrRefusedIDRejected, packets.ErrRefusedBadUsernameOrPassword, packets.ErrRefusedNotAuthorised:
			log.Info("hub refused the credentials", "connack", rc)
			return nil, took, fmt.Errorf("connecting to hub %s as %s: %w (CONNACK %d: %v)", cfg.Hub, cfg.DeviceID, ErrRejected, rc, err)
		}
		return nil, took, fmt.Errorf("connecting to hub %s at %s: %w", cfg.Hub, addr, err)
	}
	expiryKey := "tokenExpiry"
	if cfg.Certificate != nil {
		expiryKey = "certificateExpiry"
	}
	log.Info("connected to hub", "took", took, expiryKey, expiry.UTC().Format(time.RFC3339))

	subs := map[string]paho.MessageHandler{"$iothub/twin/res/#": c.onTwinAnswer}
	if methods != nil {
		subs["$iothub/methods/POST/#"] = func(_ paho.Client, m paho.Message) { c.onMethod(ctx, *methods, m) }
	}
	for filter, handler := range subs {
		if err := c.subscribe(ctx, filter, handler); err != nil {
			c.close()
			return nil, took, err
		}
	}
	return c, took, nil
}

// subscribe subscribes at QoS 0 and checks the hub granted it.
func (c *conn) subscribe(ctx context.Context, filter string, handler paho.MessageHandler) error {
	tok := c.client.Subscribe(filter, 0, handler)
	if err := c.wait(ctx, tok); err != nil {
		return fmt.Errorf("subscribing to %s: %w", filter, err)
	}
	if code := tok.(*paho.SubscribeToken).Result()[filter]; code == 0x80 {
		return fmt.Errorf("subscribing to %s: refused by the hub", filter)
	}
	return nil
}

// report sends the reported properties as a twin PATCH and waits for 204.
func (c *conn) report(ctx context.Context, reported map[string]any) error {
	body, err := json.Marshal(reported)
	if err != nil {
		return fmt.Errorf("encoding reported properties: %w", err)
	}
	c.mu.Lock()
	c.nextRID++
	rid := strconv.FormatUint(c.nextRID, 10)
	answer := make(chan twinAnswer, 1)
	c.twin[rid] = answer
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.twin, rid)
		c.mu.Unlock()
	}()

	tok := c.client.Publish("$iothub/twin/PATCH/properties/reported/?$rid="+rid, 1, false, body)
	if err := c.wait(ctx, tok); err != nil {
		return fmt.Errorf("sending reported properties: %w", err)
	}
	timer := time.NewTimer(opTimeout)
	defer timer.Stop()
	select {
	case a := <-answer:
		if a.status != 204 {
			return fmt.Errorf("reporting properties: hub answered %d: %s", a.status, a.body)
		}
		c.log.Info("twin reported properties updated", "version", a.version)
		return nil
	case <-c.lost:
		return fmt.Errorf("reporting properties: connection lost: %w", c.err)
	case <-timer.C:
		return fmt.Errorf("reporting properties: no answer from the hub in %v", opTimeout)
	case <-ctx.Done():
		return fmt.Errorf("reporting properties: %w", ctx.Err())
	}
}

// onTwinAnswer routes $iothub/twin/res/{status}/?$rid={rid}[&$version=n].
func (c *conn) onTwinAnswer(_ paho.Client, m paho.Message) {
	path, query, _ := strings.Cut(m.Topic(), "?")
	status, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(path, "$iothub/twin/res/"), "/"))
	params, qerr := url.ParseQuery(query)
	if err != nil || qerr != nil {
		c.log.Warn("malformed twin answer from the hub", "topic", m.Topic())
		return
	}
	c.mu.Lock()
	answer, ok := c.twin[params.Get("$rid")]
	delete(c.twin, params.Get("$rid"))
	c.mu.Unlock()
	if ok {
		answer <- twinAnswer{status: status, version: params.Get("$version"), body: m.Payload()}
	}
}

// wait waits for a paho token, bounded by opTimeout, ctx and the connection.
func (c *conn) wait(ctx context.Context, tok paho.Token) error {
	timer := time.NewTimer(opTimeout)
	defer timer.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-c.lost:
		return fmt.Errorf("connection lost: %w", c.err)
	case <-timer.C:
		return fmt.Errorf("no answer from the hub in %v", opTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// close disconnects cleanly (a no-op when the connection already dropped).
func (c *conn) close() {
	c.client.Disconnect(quiesce)
}
