package hubemu

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

func TestParseUsername(t *testing.T) {
	t.Parallel()
	tests := []struct {
		username      string
		hub, deviceID string // empty: refused
	}{
		{"h.example/dev1/?api-version=2021-04-12", "h.example", "dev1"},
		{"h.example/dev1/?api-version=2020-09-30&DeviceClientType=iothubclient%2F1.11.0%20(native)", "h.example", "dev1"},
		{"h.example/dev1/?api-version=2021-04-12&model-id=dtmi:com:example;1", "h.example", "dev1"},
		{"h.example/dev1/api-version=2016-11-14", "h.example", "dev1"},
		{"h.example/dev1/?DeviceClientType=x", "", ""},
		{"h.example/dev1/", "", ""},
		{"h.example/dev1", "", ""},
		{"h.example//?api-version=1", "", ""},
		{"/dev1/?api-version=1", "", ""},
		{"h.example/dev1/?api-version=1;x=%zz", "", ""},
		{"", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.username, func(t *testing.T) {
			hub, id, err := parseUsername(tt.username)
			if tt.hub == "" {
				if err == nil {
					t.Fatalf("accepted as %q %q", hub, id)
				}
				return
			}
			if err != nil || hub != tt.hub || id != tt.deviceID {
				t.Fatalf("= %q %q %v, want %q %q", hub, id, err, tt.hub, tt.deviceID)
			}
		})
	}
}

func TestTopicRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		topic              string
		publish, subscribe bool
	}{
		{"devices/d1/messages/events/", true, false},
		{"devices/d1/messages/events", true, false},
		{"devices/d1/messages/events/a=b", true, false},
		{"devices/d1/messages/eventsX", false, false},
		{"devices/d2/messages/events/", false, false},
		{"devices/d1/messages/devicebound/#", false, true},
		{"devices/d2/messages/devicebound/#", false, false},
		{"devices/+/messages/devicebound/#", false, false},
		{"$iothub/twin/GET/?$rid=1", true, false},
		{"$iothub/twin/PATCH/properties/reported/?$rid=1", true, false},
		{"$iothub/twin/PATCH/properties/desired/#", false, true},
		{"$iothub/twin/res/#", false, true},
		{"$iothub/methods/POST/#", false, true},
		{"$iothub/methods/res/200/?$rid=1", true, false},
		{"$iothub/#", false, false},
		{"#", false, false},
		{"+/+", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.topic, func(t *testing.T) {
			if got := mayPublish("d1", tt.topic); got != tt.publish {
				t.Errorf("mayPublish = %v, want %v", got, tt.publish)
			}
			if got := maySubscribe("d1", tt.topic); got != tt.subscribe {
				t.Errorf("maySubscribe = %v, want %v", got, tt.subscribe)
			}
		})
	}
}

func TestReportedPatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		base, patch string
		want        string // empty: the patch is refused
	}{
		{"add", `{}`, `{"a":1}`, `{"a":1}`},
		{"replace", `{"a":1}`, `{"a":"x"}`, `{"a":"x"}`},
		{"null deletes", `{"a":1,"b":2}`, `{"a":null}`, `{"b":2}`},
		{"objects merge", `{"o":{"x":1,"y":2}}`, `{"o":{"y":null,"z":3}}`, `{"o":{"x":1,"z":3}}`},
		{"object replaces scalar", `{"o":1}`, `{"o":{"x":1}}`, `{"o":{"x":1}}`},
		{"numbers kept exact", `{}`, `{"n":12345678901234567890,"f":1.50}`, `{"f":1.50,"n":12345678901234567890}`},
		{"arrays replace", `{"l":[1,2]}`, `{"l":[3]}`, `{"l":[3]}`},
		{"empty patch", `{"a":1}`, `{}`, `{"a":1}`},
		{"not an object", `{}`, `[1]`, ""},
		{"scalar", `{}`, `1`, ""},
		{"malformed", `{}`, `{"a":`, ""},
		{"trailing data", `{}`, `{} {}`, ""},
		{"empty body", `{}`, ``, ""},
		{"reserved name", `{}`, `{"$version":3}`, ""},
		{"dot in name", `{}`, `{"a.b":1}`, ""},
		{"space in name", `{}`, `{"a b":1}`, ""},
		{"nested reserved name", `{}`, `{"o":{"$x":1}}`, ""},
		{"too deep", `{}`, strings.Repeat(`{"a":`, 11) + "1" + strings.Repeat("}", 11), ""},
		{"deep enough", `{}`, strings.Repeat(`{"a":`, 10) + "1" + strings.Repeat("}", 10), strings.Repeat(`{"a":`, 10) + "1" + strings.Repeat("}", 10)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, err := decodePatch([]byte(tt.base))
			if err != nil {
				t.Fatal(err)
			}
			patch, err := decodePatch([]byte(tt.patch))
			if tt.want == "" {
				if err == nil {
					t.Fatalf("patch %s accepted", tt.patch)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(mergePatch(base, patch))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("= %s, want %s", got, tt.want)
			}
			if again, _ := json.Marshal(base); string(again) != tt.base && tt.base != `{}` {
				t.Errorf("base modified: %s", again)
			}
		})
	}
}

func TestRegistry(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	defer s.Close()
	if _, ok := s.Device("d1"); ok {
		t.Fatal("unknown device found")
	}
	s.UpsertDevice("h.example", "d1", []byte("k"))
	want := DeviceInfo{DeviceID: "d1", Hub: "h.example", Status: "enabled", ConnectionState: "Disconnected", Reported: json.RawMessage(`{}`), ReportedVersion: 1}
	check := func(step string, want DeviceInfo) {
		t.Helper()
		got, ok := s.Device("d1")
		if !ok || got.DeviceID != want.DeviceID || got.Hub != want.Hub || got.Status != want.Status ||
			got.ConnectionState != want.ConnectionState || string(got.Reported) != string(want.Reported) ||
			got.ReportedVersion != want.ReportedVersion {
			t.Errorf("%s: Device = %+v (found %v), want %+v", step, got, ok, want)
		}
	}
	check("created", want)
	if !s.SetDeviceEnabled("d1", false) {
		t.Fatal("SetDeviceEnabled: not found")
	}
	want.Status = "disabled"
	check("disabled", want)
	s.UpsertDevice("h2.example", "d1", []byte("k2"))
	want.Status, want.Hub = "enabled", "h2.example"
	check("re-assigned", want)
	if !s.DeleteDevice("d1") || s.DeleteDevice("d1") || s.SetDeviceEnabled("d1", true) {
		t.Error("DeleteDevice/SetDeviceEnabled report the wrong existence")
	}
}

func TestServeNeedsTLS(t *testing.T) {
	t.Parallel()
	s := New(Options{})
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := s.Serve(ln); err == nil {
		t.Fatal("Serve without TLS returned nil")
	}
}
