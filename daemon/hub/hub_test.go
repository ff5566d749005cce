package hub_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu/hubtest"
	"github.com/dpsd-project/dpsd/daemon/sas"
)

const (
	hubName  = "hub-a.example"
	otherHub = "hub-b.example"
	// wait bounds every wait for an event that must happen; it is a
	// deadlock guard, not a speed requirement.
	wait = 20 * time.Second
)

func logger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func startHub(t testing.TB, opts hubemu.Options) *hubtest.Hub {
	opts.Hubs = []string{hubName, otherHub}
	opts.Log = logger().With("side", "hub")
	return hubtest.Start(t, opts)
}

func config(h *hubtest.Hub, deviceID string, key []byte) hub.Config {
	return hub.Config{
		Hub:      hubName,
		DeviceID: deviceID,
		Endpoint: h.Addr,
		RootCAs:  h.RootCAs,
		Sign:     hubtest.Signer(key),
		Log:      logger().With("side", "device"),
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*wait)
	t.Cleanup(cancel)
	return ctx
}

// token is a device token as §4.2 builds it, signed with key.
func token(t *testing.T, hubHost, deviceID string, key []byte, expiry time.Time) string {
	t.Helper()
	tok, err := sas.New(t.Context(), sas.DeviceResource(hubHost, deviceID), expiry, "", hubtest.Signer(key))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// raw is a plain paho client, as an app on the device would use with a
// token from `dpsd token`.
type raw struct {
	paho.Client
	lost chan error
}

func rawConnect(t *testing.T, h *hubtest.Hub, clientID, username, password string) (*raw, byte, error) {
	t.Helper()
	r := &raw{lost: make(chan error, 1)}
	opts := paho.NewClientOptions().
		AddBroker("tls://" + h.Addr).
		SetClientID(clientID).
		SetUsername(username).
		SetPassword(password).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetOrderMatters(false).
		SetTLSConfig(tlsConfig(h)).
		SetConnectionLostHandler(func(_ paho.Client, err error) { r.lost <- err })
	r.Client = paho.NewClient(opts)
	tok := r.Connect()
	if !tok.WaitTimeout(wait) {
		t.Fatal("no CONNACK")
	}
	if tok.Error() == nil {
		t.Cleanup(func() { r.Disconnect(0) })
	}
	return r, tok.(*paho.ConnectToken).ReturnCode(), tok.Error()
}

func tlsConfig(h *hubtest.Hub) *tls.Config {
	return &tls.Config{ServerName: hubName, RootCAs: h.RootCAs}
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func username(deviceID string) string {
	return hubName + "/" + deviceID + "/?api-version=2021-04-12"
}

func TestCheckReportsTwin(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	reported := map[string]any{"dpsd": map[string]any{"version": "1.0.0", "reason": "first-boot"}}

	took, err := hub.Check(ctxFor(t), config(h, "dev1", key), reported)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if took <= 0 {
		t.Errorf("connect-to-CONNACK time %v, want > 0", took)
	}
	info, ok := h.Device("dev1")
	if !ok {
		t.Fatal("device gone")
	}
	want := `{"dpsd":{"reason":"first-boot","version":"1.0.0"}}`
	if string(info.Reported) != want || info.ReportedVersion != 2 {
		t.Errorf("twin reported = %s version %d, want %s version 2", info.Reported, info.ReportedVersion, want)
	}
}

func TestCheckRefused(t *testing.T) {
	t.Parallel()
	key := hubtest.Key(t)
	tests := []struct {
		name  string
		setup func(h *hubtest.Hub, cfg *hub.Config)
	}{
		{"wrong key", func(h *hubtest.Hub, cfg *hub.Config) {
			cfg.Sign = hubtest.Signer(hubtest.Key(t))
		}},
		{"expired token", func(h *hubtest.Hub, cfg *hub.Config) {
			// Expired 59 min ago: well past the 5 min grace.
			cfg.Now = func() time.Time { return time.Now().Add(-time.Hour) }
			cfg.TokenTTL = time.Minute
		}},
		{"unknown device", func(h *hubtest.Hub, cfg *hub.Config) {
			cfg.DeviceID = "nobody"
		}},
		{"deleted device", func(h *hubtest.Hub, cfg *hub.Config) {
			if !h.DeleteDevice(cfg.DeviceID) {
				t.Fatal("DeleteDevice: not found")
			}
		}},
		{"disabled device", func(h *hubtest.Hub, cfg *hub.Config) {
			if !h.SetDeviceEnabled(cfg.DeviceID, false) {
				t.Fatal("SetDeviceEnabled: not found")
			}
		}},
		{"device moved to another hub", func(h *hubtest.Hub, cfg *hub.Config) {
			h.UpsertDevice(otherHub, cfg.DeviceID, key)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startHub(t, hubemu.Options{})
			h.UpsertDevice(hubName, "dev1", key)
			cfg := config(h, "dev1", key)
			tt.setup(h, &cfg)
			_, err := hub.Check(ctxFor(t), cfg, map[string]any{"x": 1})
			if !errors.Is(err, hub.ErrRejected) {
				t.Fatalf("Check: %v, want ErrRejected", err)
			}
		})
	}
}

func TestCheckNetworkErrorsAreNotRejections(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)

	closedPort := closedPort(t)
	tests := []struct {
		name  string
		setup func(cfg *hub.Config)
	}{
		{"nothing listening", func(cfg *hub.Config) { cfg.Endpoint = closedPort }},
		{"certificate not for the hub's name", func(cfg *hub.Config) { cfg.Hub = "elsewhere.example" }},
		{"unknown CA", func(cfg *hub.Config) { cfg.RootCAs = startHub(t, hubemu.Options{}).RootCAs }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config(h, "dev1", key)
			tt.setup(&cfg)
			_, err := hub.Check(ctxFor(t), cfg, nil)
			if err == nil || errors.Is(err, hub.ErrRejected) {
				t.Fatalf("Check: %v, want a non-rejection error", err)
			}
		})
	}
}

// TestPlainClient connects as an app on the device would, with a token
// from `dpsd token` and any MQTT library: the user names and token
// encodings of the SDKs (§10, §4.2) are accepted, faults refused with
// CONNACK 5.
func TestPlainClient(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	h.UpsertDevice(hubName, "dev2", hubtest.Key(t))
	valid := token(t, hubName, "dev1", key, time.Now().Add(time.Hour))

	tests := []struct {
		name               string
		clientID, username string
		password           string
		want               byte // CONNACK return code
	}{
		{"token accepted", "dev1", username("dev1"), valid, 0},
		{"C SDK user name", "dev1", hubName + "/dev1/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1.11.0", valid, 0},
		{"old user name without ?", "dev1", hubName + "/dev1/api-version=2016-11-14", valid, 0},
		{"hub name in another case", "dev1", strings.ToUpper(hubName) + "/dev1/?api-version=2021-04-12", valid, 0},
		{"sr unencoded, as the C SDK sends it", "dev1", username("dev1"), rawToken(key, hubName+"/devices/dev1", time.Now().Add(time.Hour)), 0},
		{"sr lowercase hex", "dev1", username("dev1"), rawToken(key, strings.ReplaceAll(url.QueryEscape(hubName+"/devices/dev1"), "%2F", "%2f"), time.Now().Add(time.Hour)), 0},
		{"expired within the grace", "dev1", username("dev1"), token(t, hubName, "dev1", key, time.Now().Add(-time.Minute)), 0},
		{"expired beyond the grace", "dev1", username("dev1"), token(t, hubName, "dev1", key, time.Now().Add(-10*time.Minute)), 5},
		{"tampered signature", "dev1", username("dev1"), tamper(valid), 5},
		{"tampered expiry", "dev1", username("dev1"), strings.Replace(valid, "&se=", "&se=1", 1), 5},
		{"token with skn", "dev1", username("dev1"), valid + "&skn=device", 5},
		{"token of another device", "dev2", username("dev2"), valid, 5},
		{"client ID is not the device", "dev2", username("dev1"), valid, 5},
		{"no api-version", "dev1", hubName + "/dev1/", valid, 5},
		{"user name without device", "dev1", hubName, valid, 5},
		{"hub not served", "dev1", "hub-z.example/dev1/?api-version=2021-04-12", valid, 5},
		{"not a token", "dev1", username("dev1"), "hunter2", 5},
		{"no password", "dev1", username("dev1"), "", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, code, err := rawConnect(t, h, tt.clientID, tt.username, tt.password)
			if code != tt.want {
				t.Fatalf("CONNACK %d (%v), want %d", code, err, tt.want)
			}
		})
	}
}

// TestMQTT31Refused: the hub speaks MQTT 3.1.1 only.
func TestMQTT31Refused(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	c := paho.NewClient(paho.NewClientOptions().
		AddBroker("tls://" + h.Addr).
		SetClientID("dev1").
		SetUsername(username("dev1")).
		SetPassword(token(t, hubName, "dev1", key, time.Now().Add(time.Hour))).
		SetProtocolVersion(3).
		SetTLSConfig(tlsConfig(h)))
	tok := c.Connect()
	if !tok.WaitTimeout(wait) {
		t.Fatal("no CONNACK")
	}
	if code := tok.(*paho.ConnectToken).ReturnCode(); code != 1 {
		t.Fatalf("CONNACK %d, want 1 (unacceptable protocol version)", code)
	}
}

// rawToken builds a token with sr exactly as given (§4.2: the HMAC covers
// sr as sent).
func rawToken(key []byte, sr string, expiry time.Time) string {
	se := strconv.FormatInt(expiry.Unix(), 10)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + se))
	sig := url.QueryEscape(base64.StdEncoding.EncodeToString(m.Sum(nil)))
	return "SharedAccessSignature sr=" + sr + "&sig=" + sig + "&se=" + se
}

// tamper flips one character of the signature.
func tamper(tok string) string {
	i := strings.Index(tok, "sig=") + len("sig=")
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}

func TestOneConnectionPerDevice(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	tok := token(t, hubName, "dev1", key, time.Now().Add(time.Hour))

	first, _, err := rawConnect(t, h, "dev1", username("dev1"), tok)
	if err != nil {
		t.Fatal(err)
	}
	second, _, err := rawConnect(t, h, "dev1", username("dev1"), tok)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.lost:
	case <-time.After(wait):
		t.Fatal("the first connection was not dropped by the second CONNECT")
	}
	// The second connection works, and is the device's.
	sub := second.Subscribe("$iothub/twin/res/#", 0, nil)
	if !sub.WaitTimeout(wait) || sub.Error() != nil {
		t.Fatalf("subscribing on the second connection: %v", sub.Error())
	}
	if info, _ := h.Device("dev1"); info.ConnectionState != "Connected" {
		t.Errorf("connection state %q, want Connected", info.ConnectionState)
	}

	// A refused CONNECT for the same device ID does not drop the session.
	if _, code, _ := rawConnect(t, h, "dev1", username("dev1"), tamper(tok)); code != 5 {
		t.Fatalf("tampered token: CONNACK %d, want 5", code)
	}
	sub = second.Subscribe("$iothub/methods/POST/#", 0, nil)
	if !sub.WaitTimeout(wait) || sub.Error() != nil {
		t.Fatalf("session dropped by a refused CONNECT: %v", sub.Error())
	}
	select {
	case err := <-second.lost:
		t.Fatalf("session dropped by a refused CONNECT: %v", err)
	default:
	}
}

func TestSubscribeACL(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	r, _, err := rawConnect(t, h, "dev1", username("dev1"), token(t, hubName, "dev1", key, time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		filter string
		want   byte // SUBACK code
	}{
		{"$iothub/twin/res/#", 0},
		{"$iothub/methods/POST/#", 1},
		{"$iothub/twin/PATCH/properties/desired/#", 1},
		{"devices/dev1/messages/devicebound/#", 1},
		{"devices/dev2/messages/devicebound/#", 0x80},
		{"devices/+/messages/devicebound/#", 0x80},
		{"devices/dev1/messages/events/#", 0x80},
		{"$iothub/#", 0x80},
		{"#", 0x80},
		{"$SYS/#", 0x80},
	}
	for _, tt := range tests {
		t.Run(tt.filter, func(t *testing.T) {
			qos := min(tt.want, 1)
			tok := r.Subscribe(tt.filter, qos, func(paho.Client, paho.Message) {})
			if !tok.WaitTimeout(wait) {
				t.Fatal("no SUBACK")
			}
			if got := tok.(*paho.SubscribeToken).Result()[tt.filter]; got != tt.want {
				t.Errorf("SUBACK %#x, want %#x", got, tt.want)
			}
		})
	}
}

func TestPublishACL(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	tok := token(t, hubName, "dev1", key, time.Now().Add(time.Hour))

	tests := []struct {
		topic   string
		qos     byte
		allowed bool
	}{
		{"devices/dev1/messages/events/", 1, true},
		{"devices/dev1/messages/events/%24.ct=application%2Fjson&%24.ce=utf-8", 1, true},
		{"devices/dev1/messages/events/", 0, true},
		{"devices/dev2/messages/events/", 1, false},
		{"devices/dev2/messages/events/", 0, false},
		{"devices/dev1/messages/devicebound/", 1, false},
		{"$iothub/twin/PATCH/properties/desired/?$rid=1", 1, false},
		{"$iothub/methods/POST/reprovision/?$rid=1", 1, false},
		{"anything", 1, false},
		{"devices/dev1/messages/events/", 2, false}, // QoS 2 closes the connection
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s qos %d", tt.topic, tt.qos), func(t *testing.T) {
			r, _, err := rawConnect(t, h, "dev1", username("dev1"), tok)
			if err != nil {
				t.Fatal(err)
			}
			pub := r.Publish(tt.topic, tt.qos, false, `{"t":1}`)
			pub.WaitTimeout(wait)
			// A ping round trip proves the connection is still up after an
			// allowed QoS 0 publish, which has no acknowledgement.
			if tt.allowed {
				if pub.Error() != nil {
					t.Fatalf("publish: %v", pub.Error())
				}
				sub := r.Subscribe("$iothub/twin/res/#", 0, nil)
				if !sub.WaitTimeout(wait) || sub.Error() != nil {
					t.Fatalf("connection unusable after an allowed publish: %v", sub.Error())
				}
				return
			}
			select {
			case <-r.lost:
			case <-time.After(wait):
				t.Fatal("connection kept after a refused publish")
			}
		})
	}
}

// twinClient is a plain client speaking the twin topics.
type twinClient struct {
	*raw
	answers chan paho.Message
}

func newTwinClient(t *testing.T, h *hubtest.Hub, deviceID string, key []byte) *twinClient {
	r, _, err := rawConnect(t, h, deviceID, username(deviceID), token(t, hubName, deviceID, key, time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	c := &twinClient{raw: r, answers: make(chan paho.Message, 10)}
	sub := r.Subscribe("$iothub/twin/res/#", 0, func(_ paho.Client, m paho.Message) { c.answers <- m })
	if !sub.WaitTimeout(wait) || sub.Error() != nil {
		t.Fatalf("subscribing: %v", sub.Error())
	}
	return c
}

func (c *twinClient) request(t *testing.T, topic, body string) (string, string) {
	t.Helper()
	if pub := c.Publish(topic, 1, false, body); !pub.WaitTimeout(wait) || pub.Error() != nil {
		t.Fatalf("publish %s: %v", topic, pub.Error())
	}
	select {
	case m := <-c.answers:
		return m.Topic(), string(m.Payload())
	case <-time.After(wait):
		t.Fatalf("no answer to %s", topic)
		return "", ""
	}
}

func TestTwin(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	c := newTwinClient(t, h, "dev1", key)

	steps := []struct {
		topic, body         string
		wantTopic, wantBody string
	}{
		{"$iothub/twin/PATCH/properties/reported/?$rid=1", `{"a":1,"b":{"c":2,"e":1.50}}`,
			"$iothub/twin/res/204/?$rid=1&$version=2", ""},
		{"$iothub/twin/PATCH/properties/reported/?$rid=2", `{"b":{"c":null},"d":"x"}`,
			"$iothub/twin/res/204/?$rid=2&$version=3", ""},
		{"$iothub/twin/GET/?$rid=3", "",
			"$iothub/twin/res/200/?$rid=3", `{"desired":{"$version":1},"reported":{"$version":3,"a":1,"b":{"e":1.50},"d":"x"}}`},
		{"$iothub/twin/PATCH/properties/reported/?$rid=4", `[1]`, "$iothub/twin/res/400/?$rid=4", ""},
		{"$iothub/twin/PATCH/properties/reported/?$rid=5", `{"$x":1}`, "$iothub/twin/res/400/?$rid=5", ""},
		{"$iothub/twin/PATCH/properties/reported/?$rid=6", `{"a":`, "$iothub/twin/res/400/?$rid=6", ""},
		{"$iothub/twin/PATCH/properties/reported/?$rid=7", `{"big":"` + strings.Repeat("x", 33<<10) + `"}`,
			"$iothub/twin/res/413/?$rid=7", ""},
	}
	for _, st := range steps {
		topic, body := c.request(t, st.topic, st.body)
		if topic != st.wantTopic {
			t.Errorf("%s: answer on %s, want %s", st.topic, topic, st.wantTopic)
		}
		if st.wantBody != "" && body != st.wantBody {
			t.Errorf("%s: body %s, want %s", st.topic, body, st.wantBody)
		}
	}
	info, _ := h.Device("dev1")
	if want := `{"a":1,"b":{"e":1.50},"d":"x"}`; string(info.Reported) != want || info.ReportedVersion != 3 {
		t.Errorf("Device: reported %s version %d, want %s version 3", info.Reported, info.ReportedVersion, want)
	}
}

// stay runs hub.Stay in the background and reports its state changes.
type stay struct {
	states chan error // nil: connected
	done   chan error // Stay's result
	cancel context.CancelFunc
}

func startStay(t *testing.T, cfg hub.Config, h hub.Handlers) *stay {
	ctx, cancel := context.WithCancel(t.Context())
	s := &stay{states: make(chan error, 100), done: make(chan error, 1), cancel: cancel}
	go func() {
		s.done <- hub.Stay(ctx, cfg, map[string]any{"dpsd": map[string]any{"reason": "first-boot"}}, h,
			func(connected bool, err error) {
				if connected {
					err = nil
				} else if err == nil {
					err = errors.New("disconnected without a reason")
				}
				s.states <- err
			})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-s.done; err != nil && !errors.Is(err, hub.ErrRejected) {
			t.Errorf("Stay: %v", err)
		}
	})
	return s
}

// next returns the next state change: nil when connected.
func (s *stay) next(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.states:
		return err
	case <-time.After(wait):
		t.Fatal("no state change")
		return nil
	}
}

func TestStayMethods(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	reprovisioned := make(chan struct{}, 1)
	s := startStay(t, config(h, "dev1", key), hub.Handlers{
		Reprovision: func(context.Context) error { reprovisioned <- struct{}{}; return nil },
		Status:      func() any { return map[string]string{"state": "provisioned"} },
	})
	if err := s.next(t); err != nil {
		t.Fatalf("Stay did not connect: %v", err)
	}

	tests := []struct {
		method     string
		wantStatus int
		wantBody   string
	}{
		{"status", 200, `{"state":"provisioned"}`},
		{"reprovision", 200, `{}`},
		{"format-disk", 404, `{"message":"unknown method \"format-disk\""}`},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			status, body, err := h.InvokeMethod(ctxFor(t), "dev1", tt.method, json.RawMessage(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			if status != tt.wantStatus || string(body) != tt.wantBody {
				t.Errorf("answer %d %s, want %d %s", status, body, tt.wantStatus, tt.wantBody)
			}
		})
	}
	select {
	case <-reprovisioned:
	case <-time.After(wait):
		t.Fatal("the reprovision handler was not called")
	}
	if info, _ := h.Device("dev1"); info.ConnectionState != "Connected" || string(info.Reported) != `{"dpsd":{"reason":"first-boot"}}` {
		t.Errorf("Device: %+v", info)
	}
}

func TestInvokeMethodErrors(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{MethodTimeout: 200 * time.Millisecond})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "silent", key)
	h.UpsertDevice(hubName, "unsubscribed", key)
	h.UpsertDevice(hubName, "offline", key)

	silent, _, err := rawConnect(t, h, "silent", username("silent"), token(t, hubName, "silent", key, time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	if sub := silent.Subscribe("$iothub/methods/POST/#", 0, func(_ paho.Client, m paho.Message) { got <- m.Topic() }); !sub.WaitTimeout(wait) {
		t.Fatal("no SUBACK")
	}
	unsubscribed, _, err := rawConnect(t, h, "unsubscribed", username("unsubscribed"), token(t, hubName, "unsubscribed", key, time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	// A round trip: the hub has taken the connection as the device's.
	if sub := unsubscribed.Subscribe("$iothub/twin/res/#", 0, nil); !sub.WaitTimeout(wait) {
		t.Fatal("no SUBACK")
	}

	tests := []struct {
		device string
		want   error
	}{
		{"silent", hubemu.ErrMethodTimeout},
		{"unsubscribed", hubemu.ErrDeviceNotConnected},
		{"offline", hubemu.ErrDeviceNotConnected},
		{"nobody", hubemu.ErrDeviceNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.device, func(t *testing.T) {
			_, _, err := h.InvokeMethod(ctxFor(t), tt.device, "reprovision", nil)
			if !errors.Is(err, tt.want) {
				t.Errorf("InvokeMethod: %v, want %v", err, tt.want)
			}
		})
	}
	select {
	case topic := <-got:
		if !strings.HasPrefix(topic, "$iothub/methods/POST/reprovision/?$rid=") {
			t.Errorf("request on %s", topic)
		}
	default:
		t.Error("the silent device received no request")
	}
}

// TestHubDropsExpiredSession: the hub closes a connection when its token
// runs out (plus the grace), so a client must renew.
func TestHubDropsExpiredSession(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{TokenGrace: time.Millisecond})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	r, _, err := rawConnect(t, h, "dev1", username("dev1"), token(t, hubName, "dev1", key, time.Now().Add(2*time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-r.lost:
	case <-time.After(wait):
		t.Fatal("connection kept past its token's expiry")
	}
}

// TestStayRenewsToken: a kept session outlives several token lifetimes.
func TestStayRenewsToken(t *testing.T) {
	t.Parallel()
	// Without renewal the hub would drop the session 4 s at most after
	// it started; the test runs at least 6 s.
	h := startHub(t, hubemu.Options{TokenGrace: time.Second})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	cfg := config(h, "dev1", key)
	cfg.TokenTTL = 3 * time.Second
	s := startStay(t, cfg, hub.Handlers{Status: func() any { return "ok" }})

	start := time.Now()
	for connects := 0; connects < 3 || time.Since(start) < 2*cfg.TokenTTL; connects++ {
		if err := s.next(t); err != nil {
			t.Fatalf("after %d connections: %v", connects, err)
		}
	}
	status, body, err := h.InvokeMethod(ctxFor(t), "dev1", "status", nil)
	if err != nil || status != 200 || string(body) != `"ok"` {
		t.Errorf("status method after renewals: %d %s %v", status, body, err)
	}
}

func TestStayRejectedWhenDeleted(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	s := startStay(t, config(h, "dev1", key), hub.Handlers{})
	if err := s.next(t); err != nil {
		t.Fatalf("Stay did not connect: %v", err)
	}
	h.DeleteDevice("dev1")
	if err := s.next(t); err == nil || errors.Is(err, hub.ErrRejected) {
		t.Fatalf("first state after delete: %v, want the connection lost", err)
	}
	if err := s.next(t); !errors.Is(err, hub.ErrRejected) {
		t.Fatalf("second state after delete: %v, want ErrRejected", err)
	}
	select {
	case err := <-s.done:
		if !errors.Is(err, hub.ErrRejected) {
			t.Fatalf("Stay returned %v, want ErrRejected", err)
		}
		s.done <- err // for the cleanup
	case <-time.After(wait):
		t.Fatal("Stay did not return")
	}
}

func TestStayRetriesUnreachableHub(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	key := hubtest.Key(t)
	h.UpsertDevice(hubName, "dev1", key)
	cfg := config(h, "dev1", key)
	cfg.Endpoint = closedPort(t)
	s := startStay(t, cfg, hub.Handlers{})
	for range 2 {
		if err := s.next(t); err == nil || errors.Is(err, hub.ErrRejected) {
			t.Fatalf("state %v, want a network error", err)
		}
	}
	select {
	case err := <-s.done:
		t.Fatalf("Stay gave up: %v", err)
	default:
	}
}

// TestSignerFailure: a signing error (a TPM key gone) is not a hub
// rejection, and ends a kept session instead of being retried.
func TestSignerFailure(t *testing.T) {
	t.Parallel()
	h := startHub(t, hubemu.Options{})
	h.UpsertDevice(hubName, "dev1", hubtest.Key(t))
	errTPM := errors.New("TPM says no")
	cfg := config(h, "dev1", nil)
	cfg.Sign = func(context.Context, []byte) ([]byte, error) { return nil, errTPM }

	if _, err := hub.Check(ctxFor(t), cfg, nil); !errors.Is(err, errTPM) || errors.Is(err, hub.ErrRejected) {
		t.Errorf("Check: %v, want the signer's error", err)
	}
	if err := hub.Stay(ctxFor(t), cfg, nil, hub.Handlers{}, nil); !errors.Is(err, errTPM) {
		t.Errorf("Stay: %v, want the signer's error", err)
	}
}

// BenchmarkCheck measures connect-to-CONNACK (TCP, TLS, CONNECT with the
// SAS verified) over loopback, with the token signed in software.
func BenchmarkCheck(b *testing.B) {
	h := startHub(b, hubemu.Options{})
	key := make([]byte, 32)
	h.UpsertDevice(hubName, "dev1", key)
	cfg := hub.Config{Hub: hubName, DeviceID: "dev1", Endpoint: h.Addr, RootCAs: h.RootCAs, Sign: hubtest.Signer(key)}
	b.Run("connect", func(b *testing.B) {
		var total time.Duration
		for b.Loop() {
			took, err := hub.Check(b.Context(), cfg, nil)
			if err != nil {
				b.Fatal(err)
			}
			total += took
		}
		b.ReportMetric(float64(total.Microseconds())/float64(b.N)/1000, "ms-to-CONNACK")
	})
	b.Run("connect+twin", func(b *testing.B) {
		for b.Loop() {
			if _, err := hub.Check(b.Context(), cfg, map[string]any{"dpsd": map[string]any{"version": "1"}}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
