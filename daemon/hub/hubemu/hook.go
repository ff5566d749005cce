package hubemu

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// hook plugs the hub's behaviour into the broker.
type hook struct {
	mqtt.HookBase
	s *Server
}

func (h *hook) ID() string { return "iothub" }

func (h *hook) Provides(b byte) bool {
	return bytes.IndexByte([]byte{
		mqtt.OnConnect,
		mqtt.OnConnectAuthenticate,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnPacketRead,
		mqtt.OnACLCheck,
		mqtt.OnPublish,
	}, b) >= 0
}

// OnConnect refuses MQTT 5 (the hub speaks 3.1.1) and bounds the
// keep-alive as the hub does.
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	if h.s.onConnect != nil {
		h.s.onConnect()
	}
	if pk.ProtocolVersion != 4 {
		_ = h.s.broker.SendConnack(cl, packets.ErrUnsupportedProtocolVersion, false, nil)
		return packets.ErrUnsupportedProtocolVersion
	}
	if cl.State.Keepalive == 0 || cl.State.Keepalive > maxKeepAlive {
		cl.State.Keepalive = maxKeepAlive
	}
	return nil
}

// OnConnectAuthenticate verifies the SAS; a refusal makes the broker answer
// CONNACK 0x05 (not authorized), as the hub does for any credential fault.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	s := h.s
	s.mu.Lock()
	_, err := s.authenticateLocked(cl.ID, string(pk.Connect.Username), string(pk.Connect.Password), peerCertificates(cl), time.Now())
	s.mu.Unlock()
	if err != nil {
		s.log.Info("CONNECT refused", "client", cl.ID, "remote", cl.Net.Remote, "reason", err.Error())
		return false
	}
	return true
}

// OnSessionEstablished records the connection as the device's live one.
// It authenticates again under the registry lock: a delete, disable or key
// change that raced with the CONNACK either sees this session and closes
// it, or is seen here.
func (h *hook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	g, err := s.authenticateLocked(cl.ID, string(pk.Connect.Username), string(pk.Connect.Password), peerCertificates(cl), time.Now())
	if err != nil {
		cl.Stop(err)
		s.log.Info("device connection closed", "device", cl.ID, "reason", err.Error())
		return
	}
	if old, ok := s.live[g.deviceID]; ok {
		// The broker has already dropped the old connection (same client
		// ID); its timer must not outlive it.
		old.expire.Stop()
	}
	expire := time.AfterFunc(time.Until(g.until), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if sess, ok := s.live[g.deviceID]; ok && sess.client == cl {
			s.dropLocked(g.deviceID, "credential expired")
		}
	})
	s.live[g.deviceID] = &session{client: cl, expire: expire}
	s.log.Info("device connected", "device", g.deviceID, "remote", cl.Net.Remote, "auth", g.by,
		"until", g.until.UTC().Format(time.RFC3339))
}

// peerCertificates is the client certificate chain the connection's TLS
// handshake presented (unverified: the hub requests, not requires, one).
func peerCertificates(cl *mqtt.Client) []*x509.Certificate {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	return tc.ConnectionState().PeerCertificates
}

// OnDisconnect forgets the connection unless a newer one replaced it.
func (h *hook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	s := h.s
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.live[cl.ID]
	if !ok || sess.client != cl {
		return
	}
	sess.expire.Stop()
	delete(s.live, cl.ID)
	attrs := []any{"device", cl.ID}
	if err != nil {
		attrs = append(attrs, "err", err.Error())
	}
	s.log.Info("device disconnected", attrs...)
}

// errRefusedPublish closes a connection that publishes where it may not,
// or with QoS 2: the hub drops such a connection.
var errRefusedPublish = fmt.Errorf("publish refused: %w", packets.ErrRejectPacket)

// OnPacketRead enforces the publish rules before the broker acts.
func (h *hook) OnPacketRead(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Type != packets.Publish {
		return pk, nil
	}
	switch {
	case pk.FixedHeader.Qos > 1:
		h.s.log.Info("closing connection: QoS 2 publish", "device", cl.ID, "topic", pk.TopicName)
		return pk, errRefusedPublish
	case !mayPublish(cl.ID, pk.TopicName):
		h.s.log.Info("closing connection: publish to a topic the device may not use", "device", cl.ID, "topic", pk.TopicName)
		return pk, errRefusedPublish
	}
	return pk, nil
}

// OnACLCheck confines a device to its own topics.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return mayPublish(cl.ID, topic)
	}
	ok := maySubscribe(cl.ID, topic)
	if !ok {
		h.s.log.Info("subscription refused", "device", cl.ID, "filter", topic)
	}
	return ok
}

// OnPublish handles what devices send to the hub. Nothing a device
// publishes is forwarded to other clients, and nothing is retained.
func (h *hook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	pk.FixedHeader.Retain = false
	pk.Ignore = true
	path, query, _ := strings.Cut(pk.TopicName, "?")
	params, _ := url.ParseQuery(query)
	rid := params.Get("$rid")
	switch {
	case path == "$iothub/twin/GET/":
		h.s.twinGet(cl, rid)
	case path == "$iothub/twin/PATCH/properties/reported/":
		h.s.twinPatch(cl, rid, pk.Payload)
	case strings.HasPrefix(path, "$iothub/methods/res/"):
		status, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(path, "$iothub/methods/res/"), "/"))
		if err != nil || rid == "" {
			h.s.log.Info("malformed direct method answer", "device", cl.ID, "topic", pk.TopicName)
			break
		}
		h.s.methodAnswer(cl.ID, rid, status, pk.Payload)
	default:
		// Telemetry (devices/{id}/messages/events/…) is accepted and dropped.
	}
	return pk, nil
}

// Topic rules (§10). The $iothub topics carry no device ID: the connection
// says whose they are.
const (
	twinResponses = "$iothub/twin/res/"
	twinDesired   = "$iothub/twin/PATCH/properties/desired/"
	methodCalls   = "$iothub/methods/POST/"
)

// mayPublish: telemetry under the device's own events topic, twin
// requests, and direct method answers.
func mayPublish(deviceID, topic string) bool {
	events := "devices/" + deviceID + "/messages/events"
	return topic == events ||
		strings.HasPrefix(topic, events+"/") ||
		strings.HasPrefix(topic, "$iothub/twin/GET/") ||
		strings.HasPrefix(topic, "$iothub/twin/PATCH/properties/reported/") ||
		strings.HasPrefix(topic, "$iothub/methods/res/")
}

// maySubscribe: twin responses, desired property updates, direct method
// requests and the device's own cloud-to-device messages, or narrower
// filters within them.
func maySubscribe(deviceID, filter string) bool {
	for _, prefix := range []string{
		twinResponses, twinDesired, methodCalls,
		"devices/" + deviceID + "/messages/devicebound/",
	} {
		if strings.HasPrefix(filter, prefix) {
			return true
		}
	}
	return false
}
