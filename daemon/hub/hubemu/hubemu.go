// Package hubemu is the IoT Hub side of the emulator: an embedded MQTT
// broker (mochi-mqtt) that speaks to devices the way Azure IoT Hub does
// (docs/dps-tpm-protocol.md §4.2 and §10). It authenticates every CONNECT
// with the device's SAS token, or, when the password is empty, with a TLS
// client certificate that chains to Options.ClientCAs and names the device
// (docs/dps-x509-issuance.md §4); it allows one connection per device, confines
// each device to its own topics, answers twin GET and reported PATCH, and
// lets the emulator's admin API invoke direct methods.
//
// Behaviour, where the protocol leaves a choice:
//   - CONNECT: MQTT 3.1.1 only; any api-version, but one must be present;
//     the token's decoded sr must equal "{hub}/devices/{deviceId}"
//     (ignoring case), whatever its encoding. Every refusal is CONNACK 0x05
//     and one log line with the reason.
//   - A token is accepted up to TokenGrace after its expiry, and the
//     connection is closed once that has passed too: MQTT cannot carry a
//     new token, so clients reconnect to renew, as with the real hub. A
//     connection authenticated by certificate is closed at its notAfter.
//   - Deleting or disabling a device, or replacing its hub or key, closes
//     its connection.
//   - A publish outside the device's topics, or at QoS 2, closes the
//     connection; a subscription outside them is refused in the SUBACK
//     (0x80). Telemetry is accepted and dropped; nothing is retained.
//   - Twin: desired is always {"$version":1}; reported starts empty at
//     $version 1. A PATCH is a JSON merge patch (null deletes); 400 for a
//     body that is not an object, names starting with '$' or holding '.'
//     or ' ', or nesting deeper than 10; 413 above 32 KiB.
//   - Answers (twin, methods) reach a device only if it subscribed to them.
//
// The registry is in memory; the DPS side of the emulator fills it with
// UpsertDevice when it assigns a device, and keeps it across restarts.
package hubemu

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// The errors InvokeMethod returns, with the HTTP status the real service
// answers in each case, for the admin API to map.
var (
	// ErrDeviceNotFound: no such device in the registry (404).
	ErrDeviceNotFound = errors.New("device not found")
	// ErrDeviceNotConnected: the device is not connected, or has not
	// subscribed to direct methods (404, "device not online").
	ErrDeviceNotConnected = errors.New("device not connected")
	// ErrMethodTimeout: the device did not answer within the method
	// timeout (504).
	ErrMethodTimeout = errors.New("timed out waiting for the device's answer")
)

// Defaults, as the real service applies them.
const (
	// DefaultTokenGrace is how long after its expiry a SAS token is still
	// accepted, and how long a connection authenticated with it is kept.
	// An SDK maintainer stated 5 minutes for IoT Hub (protocol doc §4.2,
	// UNVERIFIED as a contract); the DPS side uses the same allowance.
	DefaultTokenGrace = 5 * time.Minute
	// DefaultMethodTimeout is the service's default responseTimeoutInSeconds.
	DefaultMethodTimeout = 30 * time.Second

	// maxKeepAlive bounds the keep-alive a device may ask for: the hub
	// closes an idle connection after 1.5 × keep-alive, at most 1767 s.
	maxKeepAlive = 1177
	// handshakeTimeout bounds TLS handshake plus CONNECT of a new connection.
	handshakeTimeout = 10 * time.Second
	// maxPacket is IoT Hub's 256 KiB message limit plus room for the topic.
	maxPacket = 256<<10 + 4<<10
)

// Options configures a Server.
type Options struct {
	// Log receives one line per connection, refusal and method call.
	// Nil discards.
	Log *slog.Logger
	// Hubs are the hub host names served. When not empty, a CONNECT
	// naming another hub is refused.
	Hubs []string
	// TLS is the server's TLS configuration (certificate for every hub
	// name); required, since IoT Hub has no plain-text port. For X.509
	// devices its ClientAuth must request a client certificate without
	// requiring or verifying one (tls.RequestClientCert): SAS devices
	// present none, and the hub, not the handshake, decides (CONNACK 5).
	TLS *tls.Config
	// ClientCAs are the roots a device's client certificate must chain to
	// when it connects with an empty password; nil: SAS only.
	ClientCAs *x509.CertPool
	// MethodTimeout bounds the wait for a direct method's answer;
	// 0 means DefaultMethodTimeout.
	MethodTimeout time.Duration
	// TokenGrace is the allowance after a token's expiry; 0 means
	// DefaultTokenGrace. A connection is closed once its token is expired
	// by more than this, as the hub does, so that clients must renew.
	TokenGrace time.Duration
	// OnConnect, when set, is called for every CONNECT, accepted or not
	// (the emulator counts them).
	OnConnect func()
}

// DeviceInfo is what the hub's registry and twin hold about a device.
type DeviceInfo struct {
	DeviceID string
	Hub      string
	// Status is "enabled" or "disabled".
	Status string
	// ConnectionState is "Connected" or "Disconnected".
	ConnectionState string
	// Reported holds the twin's reported properties (a JSON object,
	// without $version).
	Reported json.RawMessage
	// ReportedVersion is the twin's reported $version: 1 for a new
	// device, plus one per accepted PATCH.
	ReportedVersion int
}

// Server is an emulated IoT Hub. Create it with New.
type Server struct {
	log           *slog.Logger
	hubs          []string
	tls           *tls.Config
	clientCAs     *x509.CertPool
	methodTimeout time.Duration
	grace         time.Duration
	onConnect     func()
	broker        *mqtt.Server
	done          chan struct{} // closed by Close

	mu        sync.Mutex
	devices   map[string]*device  // by device ID
	live      map[string]*session // the one live connection of each device
	calls     map[string]*call    // pending direct methods by $rid
	nextID    uint64              // $rid of the next direct method
	listeners int                 // served so far, for listener IDs
	closed    bool
}

// device is one registry entry and its twin.
type device struct {
	hub             string
	key             []byte
	certCN          string // the CN of its client certificates; "": the device ID
	enabled         bool
	reported        map[string]any
	reportedVersion int
}

// session is a device's authenticated connection.
type session struct {
	client *mqtt.Client
	expire *time.Timer // closes the connection when its token runs out
}

// New returns a Server with an empty registry. Serve starts accepting.
func New(opts Options) *Server {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:           log,
		hubs:          slices.Clone(opts.Hubs),
		tls:           opts.TLS,
		clientCAs:     opts.ClientCAs,
		methodTimeout: cmp.Or(opts.MethodTimeout, DefaultMethodTimeout),
		grace:         cmp.Or(opts.TokenGrace, DefaultTokenGrace),
		onConnect:     opts.OnConnect,
		done:          make(chan struct{}),
		devices:       map[string]*device{},
		live:          map[string]*session{},
		calls:         map[string]*call{},
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MinimumProtocolVersion = 4 // MQTT 3.1.1; 3.1 is refused
	caps.MaximumQos = 1
	caps.RetainAvailable = 0
	caps.MaximumPacketSize = maxPacket
	s.broker = mqtt.New(&mqtt.Options{
		Capabilities: caps,
		// The broker's own chatter (hooks added, listeners) is noise next
		// to our per-connection lines; its warnings are kept.
		Logger:                 slog.New(minLevel{log.Handler(), slog.LevelWarn}),
		SysTopicResendInterval: 3600,
	})
	// Neither call can fail: the hook's Init accepts anything and Serve
	// without listeners only starts the broker's housekeeping loop.
	_ = s.broker.AddHook(&hook{s: s}, nil)
	_ = s.broker.Serve()
	return s
}

// Serve accepts MQTT connections over TLS on ln (a plain TCP listener)
// until Close, then returns nil (also when Close came first); any other
// accept error is returned.
func (s *Server) Serve(ln net.Listener) error {
	if s.tls == nil {
		return errors.New("serving IoT Hub MQTT: no TLS configuration")
	}
	// Registered under the lock that Close takes first, so that Close
	// either sees this listener or Serve sees Close.
	s.mu.Lock()
	s.listeners++
	if s.closed {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	l := &listener{
		id:           "hub" + strconv.Itoa(s.listeners),
		ln:           tls.NewListener(ln, s.tls),
		log:          s.log,
		closeClients: s.closeClients,
		stopped:      make(chan struct{}),
	}
	err := s.broker.AddListener(l)
	if err == nil {
		s.broker.Listeners.Serve(l.id, s.broker.EstablishConnection)
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("adding listener %s: %w", ln.Addr(), err)
	}
	s.log.Info("IoT Hub MQTT listening", "address", ln.Addr().String())
	<-l.stopped
	return l.err
}

// closeClients stops the connections accepted by one listener.
func (s *Server) closeClients(listenerID string) {
	for _, cl := range s.broker.Clients.GetAll() {
		if cl.Net.Listener == listenerID {
			cl.Stop(net.ErrClosed)
		}
	}
}

// Close stops every listener, closes every connection and fails pending
// method calls. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()

	// Outside the lock: closing connections runs hooks that take it.
	_ = s.broker.Close() // always nil; closes the listeners and their clients

	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.live {
		sess.expire.Stop()
	}
	return nil
}

// UpsertDevice creates the device, or replaces its hub and key, leaving it
// enabled. A live connection authenticated with the old hub or key is
// closed, so the device must reconnect with the new credential.
func (s *Server) UpsertDevice(hub, deviceID string, key []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceID]
	if !ok {
		d = &device{reported: map[string]any{}, reportedVersion: 1}
		s.devices[deviceID] = d
	} else if !strings.EqualFold(d.hub, hub) || !slices.Equal(d.key, key) {
		s.dropLocked(deviceID, "credential replaced")
	}
	d.hub = hub
	d.key = slices.Clone(key)
	d.enabled = true
}

// SetCertificateName sets the common name a device's client certificate
// must carry (DPS issues them for the registration ID, which may differ
// from the device ID); by default it is the device ID. It reports whether
// the device exists.
func (s *Server) SetCertificateName(deviceID, commonName string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceID]
	if ok {
		d.certCN = commonName
	}
	return ok
}

// certName is the common name the device's client certificates carry.
func (d *device) certName(deviceID string) string {
	return cmp.Or(d.certCN, deviceID)
}

// DeleteDevice removes the device and its twin and closes its connection.
// It reports whether the device existed.
func (s *Server) DeleteDevice(deviceID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.devices[deviceID]; !ok {
		return false
	}
	delete(s.devices, deviceID)
	s.dropLocked(deviceID, "device deleted")
	return true
}

// SetDeviceEnabled enables or disables the device; disabling closes its
// connection. It reports whether the device exists.
func (s *Server) SetDeviceEnabled(deviceID string, enabled bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceID]
	if !ok {
		return false
	}
	d.enabled = enabled
	if !enabled {
		s.dropLocked(deviceID, "device disabled")
	}
	return true
}

// Device returns the registry entry and twin of a device.
func (s *Server) Device(deviceID string) (DeviceInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.devices[deviceID]
	if !ok {
		return DeviceInfo{}, false
	}
	reported, err := json.Marshal(d.reported)
	if err != nil {
		// Only JSON that was decoded is ever stored, so it re-encodes.
		panic(fmt.Sprintf("hubemu: encoding stored twin: %v", err))
	}
	info := DeviceInfo{
		DeviceID:        deviceID,
		Hub:             d.hub,
		Status:          "enabled",
		ConnectionState: "Disconnected",
		Reported:        reported,
		ReportedVersion: d.reportedVersion,
	}
	if !d.enabled {
		info.Status = "disabled"
	}
	if _, ok := s.live[deviceID]; ok {
		info.ConnectionState = "Connected"
	}
	return info, true
}

// dropLocked closes the device's live connection, if any.
func (s *Server) dropLocked(deviceID, why string) {
	sess, ok := s.live[deviceID]
	if !ok {
		return
	}
	delete(s.live, deviceID)
	sess.expire.Stop()
	sess.client.Stop(errors.New(why))
	s.log.Info("device connection closed", "device", deviceID, "reason", why)
}

// send publishes one message to one device's connection, provided the
// device subscribed to a filter matching topic: the $iothub topics are the
// same for every device, so the broker's fan-out cannot be used.
func (s *Server) send(cl *mqtt.Client, topic string, payload []byte) error {
	if _, ok := s.broker.Topics.Subscribers(topic).Subscriptions[cl.ID]; !ok {
		return fmt.Errorf("device has not subscribed to %s", topic)
	}
	err := cl.WritePacket(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName:   topic,
		Payload:     payload,
	})
	if err != nil {
		return fmt.Errorf("sending %s: %w", topic, err)
	}
	return nil
}

// call is a direct method waiting for the device's answer.
type call struct {
	deviceID string
	result   chan methodResult // buffered: the answer never blocks the reader
}

type methodResult struct {
	status int
	body   []byte
}

// InvokeMethod sends a direct method request to a connected device and
// returns the status and body it answers. payload is sent as is (empty:
// no body). Errors: ErrDeviceNotFound, ErrDeviceNotConnected,
// ErrMethodTimeout, or ctx's error.
func (s *Server) InvokeMethod(ctx context.Context, deviceID, name string, payload json.RawMessage) (int, json.RawMessage, error) {
	if name == "" || strings.ContainsAny(name, "/+#") {
		return 0, nil, fmt.Errorf("invalid method name %q", name)
	}
	if len(payload) > 0 && !json.Valid(payload) {
		return 0, nil, errors.New("method payload is not JSON")
	}

	s.mu.Lock()
	if _, ok := s.devices[deviceID]; !ok {
		s.mu.Unlock()
		return 0, nil, fmt.Errorf("invoking %s on %s: %w", name, deviceID, ErrDeviceNotFound)
	}
	sess, ok := s.live[deviceID]
	if !ok {
		s.mu.Unlock()
		return 0, nil, fmt.Errorf("invoking %s on %s: %w", name, deviceID, ErrDeviceNotConnected)
	}
	s.nextID++
	rid := strconv.FormatUint(s.nextID, 16)
	c := &call{deviceID: deviceID, result: make(chan methodResult, 1)}
	s.calls[rid] = c
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.calls, rid)
		s.mu.Unlock()
	}()

	if err := s.send(sess.client, "$iothub/methods/POST/"+name+"/?$rid="+rid, payload); err != nil {
		return 0, nil, fmt.Errorf("invoking %s on %s: %w: %w", name, deviceID, ErrDeviceNotConnected, err)
	}
	s.log.Info("direct method sent", "device", deviceID, "method", name, "rid", rid)

	timer := time.NewTimer(s.methodTimeout)
	defer timer.Stop()
	select {
	case r := <-c.result:
		s.log.Info("direct method answered", "device", deviceID, "method", name, "status", r.status)
		if len(r.body) > 0 && !json.Valid(r.body) {
			return r.status, nil, fmt.Errorf("device %s answered method %s with a body that is not JSON", deviceID, name)
		}
		return r.status, r.body, nil
	case <-timer.C:
		s.log.Info("direct method timed out", "device", deviceID, "method", name, "timeout", s.methodTimeout)
		return 0, nil, fmt.Errorf("invoking %s on %s after %v: %w", name, deviceID, s.methodTimeout, ErrMethodTimeout)
	case <-ctx.Done():
		return 0, nil, fmt.Errorf("invoking %s on %s: %w", name, deviceID, ctx.Err())
	case <-s.done:
		return 0, nil, fmt.Errorf("invoking %s on %s: %w", name, deviceID, net.ErrClosed)
	}
}

// methodAnswer delivers a device's answer to the call waiting for it; an
// answer to no pending call, or from another device, is dropped.
func (s *Server) methodAnswer(deviceID, rid string, status int, body []byte) {
	s.mu.Lock()
	c, ok := s.calls[rid]
	if ok && c.deviceID == deviceID {
		delete(s.calls, rid)
	}
	s.mu.Unlock()
	if !ok || c.deviceID != deviceID {
		s.log.Info("direct method answer matches no pending call", "device", deviceID, "rid", rid)
		return
	}
	c.result <- methodResult{status: status, body: slices.Clone(body)}
}
