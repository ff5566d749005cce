package dpsemu_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// mqttClient is just enough MQTT 3.1.1 for the tests to play a device
// against the hub (CONNECT, SUBSCRIBE, PUBLISH at QoS 0): the point is to
// see what the hub accepts, not to be a client library.
type mqttClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
const (
	connAccepted      = 0x00
	connNotAuthorized = 0x05
)

// mqttConnect opens TLS to addr, checking the certificate names hub, and
// sends CONNECT as an IoT Hub device (§10). It returns the CONNACK code; the
// client is nil unless the connection was accepted.
func mqttConnect(addr, hub, deviceID, password string, roots *x509.CertPool) (*mqttClient, byte, error) {
	return mqttConnectTLS(addr, hub, deviceID, password, &tls.Config{ServerName: hub, RootCAs: roots})
}

// mqttConnectTLS is mqttConnect with the caller's TLS configuration (a
// client certificate); an empty password is left out of the CONNECT, as an
// X.509 device does.
func mqttConnectTLS(addr, hub, deviceID, password string, cfg *tls.Config) (*mqttClient, byte, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, 0, fmt.Errorf("dialing hub: %w", err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c := &mqttClient{conn: conn, r: bufio.NewReader(conn)}
	var vh []byte
	vh = appendString(vh, "MQTT")
	flags := byte(0xC2) // user name, password, clean session
	if password == "" {
		flags = 0x82
	}
	vh = append(vh, 4, flags, 0, 60) // level 4; keep-alive 60 s
	vh = appendString(vh, deviceID)
	vh = appendString(vh, hub+"/"+deviceID+"/?api-version=2021-04-12")
	if password != "" {
		vh = appendString(vh, password)
	}
	if err := c.send(0x10, vh); err != nil {
		conn.Close()
		return nil, 0, err
	}
	typ, body, err := c.read()
	switch {
	case err != nil:
		conn.Close()
		return nil, 0, fmt.Errorf("reading CONNACK: %w", err)
	case typ != 0x20 || len(body) != 2:
		conn.Close()
		return nil, 0, fmt.Errorf("got packet 0x%02x instead of CONNACK", typ)
	case body[1] != connAccepted:
		conn.Close()
		return nil, body[1], nil
	}
	return c, connAccepted, nil
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

func (c *mqttClient) Close() error { return c.conn.Close() }

func (c *mqttClient) send(header byte, body []byte) error {
	pkt := []byte{header}
	for n := len(body); ; {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	_, err := c.conn.Write(append(pkt, body...))
	return err
}

// read returns the next packet's fixed-header byte and body.
func (c *mqttClient) read() (byte, []byte, error) {
	h, err := c.r.ReadByte()
	if err != nil {
		return 0, nil, err
	}
	n, mult := 0, 1
	for {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, nil, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return 0, nil, err
	}
	return h, body, nil
}

// subscribe subscribes to filter at QoS 0 and waits for the SUBACK.
func (c *mqttClient) subscribe(filter string) error {
	body := appendString([]byte{0, 1}, filter)
	if err := c.send(0x82, append(body, 0)); err != nil {
		return err
	}
	typ, ack, err := c.read()
	if err != nil {
		return err
	}
	if typ != 0x90 || len(ack) != 3 || ack[2] > 2 {
		return fmt.Errorf("subscribe %s refused (packet 0x%02x % x)", filter, typ, ack)
	}
	return nil
}

// nextPublish waits for a PUBLISH and returns its topic and payload.
func (c *mqttClient) nextPublish() (string, []byte, error) {
	for {
		typ, body, err := c.read()
		if err != nil {
			return "", nil, err
		}
		if typ&0xf0 != 0x30 {
			continue
		}
		if len(body) < 2 {
			return "", nil, errors.New("short PUBLISH")
		}
		n := int(binary.BigEndian.Uint16(body))
		topic, rest := string(body[2:2+n]), body[2+n:]
		if typ&0x06 != 0 { // QoS 1 or 2 carries a packet identifier
			rest = rest[2:]
		}
		return topic, rest, nil
	}
}

// publish sends a QoS 0 PUBLISH.
func (c *mqttClient) publish(topic string, payload []byte) error {
	return c.send(0x30, append(appendString(nil, topic), payload...))
}

// answerMethod waits for one direct method request and answers it with
// status and payload; it returns the method name and the request body.
func (c *mqttClient) answerMethod(status int, payload string) (string, []byte, error) {
	topic, req, err := c.nextPublish()
	if err != nil {
		return "", nil, err
	}
	rest, ok := strings.CutPrefix(topic, "$iothub/methods/POST/")
	name, query, ok2 := strings.Cut(rest, "/?$rid=")
	if !ok || !ok2 {
		return "", nil, fmt.Errorf("unexpected topic %q", topic)
	}
	return name, req, c.publish(fmt.Sprintf("$iothub/methods/res/%d/?$rid=%s", status, query), []byte(payload))
}
