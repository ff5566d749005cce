package dpsemu_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
)

// TestEnrollmentCRUD: the design.md shape round-trips; putting the same
// enrollment again keeps its etag.
func TestEnrollmentCRUD(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	body := enrollment("crud-1", d)
	body["deviceId"] = "crud-device"
	body["iotHubHostName"] = "hub-a.example"
	body["initialTwin"] = map[string]any{"tags": map[string]any{"site": "lab"}}

	put := e.admin(http.MethodPut, "/enrollments/crud-1", body)
	if put.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", put.status, put.body)
	}
	got := adminJSON(t, put)
	if got["etag"] == "" || got["createdDateTimeUtc"] == "" || got["provisioningStatus"] != "enabled" || got["deviceId"] != "crud-device" {
		t.Errorf("PUT answer %s", put.body)
	}
	get := e.admin(http.MethodGet, "/enrollments/CRUD-1", nil) // registration IDs ignore case
	if get.status != http.StatusOK || !bytes.Equal(get.body, put.body) {
		t.Errorf("GET: %d %s", get.status, get.body)
	}
	if again := adminJSON(t, e.admin(http.MethodPut, "/enrollments/crud-1", body)); again["etag"] != got["etag"] {
		t.Errorf("etag changed on an identical PUT: %v -> %v", got["etag"], again["etag"])
	}
	body["provisioningStatus"] = "disabled"
	if changed := adminJSON(t, e.admin(http.MethodPut, "/enrollments/crud-1", body)); changed["etag"] == got["etag"] {
		t.Error("etag unchanged after a change")
	}
	if r := e.admin(http.MethodDelete, "/enrollments/crud-1", nil); r.status != http.StatusNoContent {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	for _, m := range []string{http.MethodGet, http.MethodDelete} {
		if r := e.admin(m, "/enrollments/crud-1", nil); r.status != http.StatusNotFound {
			t.Errorf("%s after DELETE: %d", m, r.status)
		}
	}
	if r := e.admin(http.MethodGet, "/registrations/never", nil); r.status != http.StatusNotFound {
		t.Errorf("GET unknown registration: %d", r.status)
	}
}

// TestEnrollmentRejected: every invalid enrollment is a 400 naming the
// problem.
func TestEnrollmentRejected(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	with := func(k string, v any) map[string]any {
		b := enrollment("rej", d)
		b[k] = v
		return b
	}
	for _, tc := range []struct {
		name, path string
		body       any
		mention    string
	}{
		{"registrationId differs", "/enrollments/rej", with("registrationId", "other"), "differs"},
		{"invalid registration ID", "/enrollments/-rej", enrollment("-rej", d), "registration ID"},
		{"x509 attestation", "/enrollments/rej", with("attestation", map[string]any{"type": "x509"}), "attestation"},
		{"EK not base64", "/enrollments/rej", with("attestation", map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": "%%%"}}), "base64"},
		{"EK not an EK", "/enrollments/rej", with("attestation", map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": base64.StdEncoding.EncodeToString([]byte{0, 2, 0, 8})}}), "endorsementKey"},
		{"unserved hub", "/enrollments/rej", with("iotHubHostName", "elsewhere.example"), "served"},
		{"bad status", "/enrollments/rej", with("provisioningStatus", "paused"), "provisioningStatus"},
		{"bad device ID", "/enrollments/rej", with("deviceId", "has space"), "deviceId"},
		{"malformed JSON", "/enrollments/rej", []byte(`{"registrationId":`), "decoding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.admin(http.MethodPut, tc.path, tc.body)
			if r.status != http.StatusBadRequest || !strings.Contains(string(r.body), tc.mention) {
				t.Errorf("%d %s; want 400 mentioning %q", r.status, r.body, tc.mention)
			}
		})
	}
	if r := e.admin(http.MethodGet, "/enrollments/rej", nil); r.status != http.StatusNotFound {
		t.Errorf("a rejected enrollment was stored: %d", r.status)
	}
}

// TestDeleteDevice: the hub refuses a deleted identity; the device's next
// registration creates it again.
func TestDeleteDevice(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("del", d, nil)
	a := e.provision("del", d, "")
	if r := e.admin(http.MethodDelete, "/devices/del", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	if r := e.admin(http.MethodDelete, "/devices/del", nil); r.status != http.StatusNotFound {
		t.Errorf("second DELETE: %d", r.status)
	}
	if code := e.connect(a.hub, a.device, a.key); code != connNotAuthorized {
		t.Errorf("CONNECT of a deleted device: %d", code)
	}
	b := e.provision("del", d, "")
	if code := e.connect(b.hub, b.device, b.key); code != connAccepted {
		t.Errorf("CONNECT after registering again: %d", code)
	}
}

// TestDirectMethod: the admin API invokes a method on a connected device
// and returns its answer; unknown, offline and silent devices get 404, 404
// and 504.
func TestDirectMethod(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("meth", d, nil)
	a := e.provision("meth", d, "")

	if r := e.admin(http.MethodPost, "/devices/nobody/methods/reboot", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown device: %d %s", r.status, r.body)
	}
	if r := e.admin(http.MethodPost, "/devices/meth/methods/reboot", nil); r.status != http.StatusNotFound || !strings.Contains(string(r.body), "404103") {
		t.Errorf("offline device: %d %s", r.status, r.body)
	}

	c, code, err := mqttConnect(e.addrs.Hub, a.hub, a.device, hubToken(a.key, a.hub, a.device), e.roots)
	if err != nil || code != connAccepted {
		t.Fatalf("CONNECT: %v, code %d", err, code)
	}
	defer c.Close()
	if err := c.subscribe("$iothub/methods/POST/#"); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		name string
		req  []byte
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		name, req, err := c.answerMethod(201, `{"rebooting":true}`)
		done <- answer{name, req, err}
	}()
	r := e.admin(http.MethodPost, "/devices/meth/methods/reboot", []byte(`{"delay":5}`))
	got := <-done
	if got.err != nil || got.name != "reboot" || string(got.req) != `{"delay":5}` {
		t.Errorf("device saw %q %s (%v)", got.name, got.req, got.err)
	}
	var res struct {
		Status  int             `json:"status"`
		Payload json.RawMessage `json:"payload"`
	}
	if r.status != http.StatusOK || json.Unmarshal(r.body, &res) != nil || res.Status != 201 || string(res.Payload) != `{"rebooting":true}` {
		t.Errorf("method answer: %d %s", r.status, r.body)
	}

	// The device stays silent this time.
	if r := e.admin(http.MethodPost, "/devices/meth/methods/slow?timeout=200ms", nil); r.status != http.StatusGatewayTimeout {
		t.Errorf("silent device: %d %s", r.status, r.body)
	}
	if r := e.admin(http.MethodPost, "/devices/meth/methods/slow?timeout=soon", nil); r.status != http.StatusBadRequest {
		t.Errorf("bad timeout: %d %s", r.status, r.body)
	}
}

// TestAdminRefusesBrowsers: a request a web page could send is refused.
func TestAdminRefusesBrowsers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	req, _ := http.NewRequest(http.MethodPut, "http://"+e.addrs.Admin+"/faults", strings.NewReader(`{"dps":{"throttle":100}}`))
	req.Header.Set("Origin", "http://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %d, want 403", resp.StatusCode)
	}
	if f := adminJSON(t, e.admin(http.MethodGet, "/faults", nil)); f["dps"].(map[string]any)["throttle"] != 0.0 {
		t.Errorf("faults changed: %v", f)
	}
}

// TestRestartKeepsRegistry: enrollments, registrations, hub identities and
// the CA survive a restart; the hub accepts the old key without a new
// registration.
func TestRestartKeepsRegistry(t *testing.T) {
	t.Parallel()
	first := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	first.enroll("keep", d, nil)
	first.enroll("pinned", d, map[string]any{"iotHubHostName": "hub-a.example"})
	a := first.provision("keep", d, "")
	first.provision("pinned", d, "")
	caBefore, err := os.ReadFile(filepath.Join(first.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := first.emu.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	second := startEnv(t, first.opts)
	caAfter, _ := os.ReadFile(second.emu.CAPath())
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("ca.pem changed across a restart")
	}
	if r := second.admin(http.MethodGet, "/enrollments/keep", nil); r.status != http.StatusOK {
		t.Errorf("enrollment after restart: %d", r.status)
	}
	if reg := adminJSON(t, second.admin(http.MethodGet, "/registrations/keep", nil)); reg["status"] != "assigned" || reg["deviceId"] != a.device {
		t.Errorf("registration after restart: %v", reg)
	}
	if code := second.connect(a.hub, a.device, a.key); code != connAccepted {
		t.Errorf("CONNECT with the pre-restart key: %d", code)
	}
	b := second.provision("keep", d, "")
	if b.device != a.device || b.hub != a.hub || b.op.RegistrationState.Substatus != "reprovisionedToInitialAssignment" {
		t.Errorf("re-registration after restart: %s on %s (%s)", b.device, b.hub, b.op.RegistrationState.Substatus)
	}
	if err := second.emu.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	// Restarted with other hubs: identities on unserved hubs are not
	// loaded, and an enrollment naming one fails its registration.
	opts := first.opts
	opts.Hubs = []string{"hub-c.example"}
	third := startEnv(t, opts)
	if r := third.admin(http.MethodGet, "/devices/pinned", nil); r.status != http.StatusNotFound {
		t.Errorf("identity on an unserved hub loaded: %d", r.status)
	}
	key := third.challenge("pinned", d)
	auth := dpsToken(key, "pinned")
	r, _ := third.pollUntilDone("pinned", third.register("pinned", d, auth, ""), auth)
	if op := decodeOperation(t, r); op.Status != "failed" || op.RegistrationState.ErrorCode != 400208 {
		t.Errorf("registration to an unserved hub: %s", r.body)
	}
	if c := third.provision("keep", d, ""); c.hub != "hub-c.example" || c.op.RegistrationState.Substatus != "deviceDataReset" {
		t.Errorf("hash-allocated device after the hub list changed: %s (%s)", c.hub, c.op.RegistrationState.Substatus)
	}
}

// TestStartRejects: bad options and a damaged state directory stop Start
// with an error that names the problem.
func TestStartRejects(t *testing.T) {
	t.Parallel()
	good := func(t *testing.T) dpsemu.Options {
		return dpsemu.Options{Dir: t.TempDir(), IDScope: testScope, Hubs: testHubs}
	}
	for _, tc := range []struct {
		name    string
		mod     func(t *testing.T, o *dpsemu.Options)
		mention string
	}{
		{"no dir", func(t *testing.T, o *dpsemu.Options) { o.Dir = "" }, "--dir"},
		{"no scope", func(t *testing.T, o *dpsemu.Options) { o.IDScope = "" }, "--id-scope"},
		{"no hubs", func(t *testing.T, o *dpsemu.Options) { o.Hubs = []string{"", " "} }, "--hub"},
		{"hub with a port", func(t *testing.T, o *dpsemu.Options) { o.Hubs = []string{"a.example:8883"} }, "host name"},
		{"hub twice", func(t *testing.T, o *dpsemu.Options) { o.Hubs = []string{"a.example", "A.example"} }, "twice"},
		{"negative polls", func(t *testing.T, o *dpsemu.Options) { n := -1; o.AssignAfterPolls = &n }, "negative"},
		{"listen without host", func(t *testing.T, o *dpsemu.Options) { o.DPSListen = ":0" }, "names no host"},
		{"admin not loopback", func(t *testing.T, o *dpsemu.Options) { o.AdminListen = "192.0.2.1:0" }, "loopback only"},
		{"CA key without certificate", func(t *testing.T, o *dpsemu.Options) {
			os.WriteFile(filepath.Join(o.Dir, "ca-key.pem"), []byte("x"), 0o600)
		}, "both exist"},
		{"damaged registry", func(t *testing.T, o *dpsemu.Options) {
			os.WriteFile(filepath.Join(o.Dir, "registry.json"), []byte("{"), 0o600)
		}, "registry"},
		{"registry from the future", func(t *testing.T, o *dpsemu.Options) {
			os.WriteFile(filepath.Join(o.Dir, "registry.json"), []byte(`{"version":99}`), 0o600)
		}, "version 99"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good(t)
			tc.mod(t, &o)
			emu, err := dpsemu.Start(o)
			if err == nil {
				emu.Close()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// TestRegistryWriteFailure: when the registry cannot be written, the
// request fails with 500 and nothing changes in memory; service resumes
// once the disk is writable again.
func TestRegistryWriteFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("disk", d, nil)
	key := e.challenge("disk", d)
	auth := dpsToken(key, "disk")
	opID := e.register("disk", d, auth, "")
	e.do(http.MethodGet, e.operationURL("disk", opID), auth, nil) // the one "assigning" poll

	// A directory in the registry's place makes the final rename fail.
	blocker := filepath.Join(e.dir, "registry.json")
	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	checkErrorBody(t, e.do(http.MethodGet, e.operationURL("disk", opID), auth, nil), http.StatusInternalServerError)
	if r := e.admin(http.MethodGet, "/devices/disk", nil); r.status != http.StatusNotFound {
		t.Errorf("hub identity created although the registry was not written: %d", r.status)
	}
	if r := e.admin(http.MethodPut, "/enrollments/other", enrollment("other", d)); r.status != http.StatusInternalServerError {
		t.Errorf("PUT enrollment: %d %s", r.status, r.body)
	}
	if r := e.admin(http.MethodGet, "/enrollments/other", nil); r.status != http.StatusNotFound {
		t.Errorf("enrollment kept in memory although not written: %d", r.status)
	}
	if r := e.admin(http.MethodDelete, "/enrollments/disk", nil); r.status != http.StatusInternalServerError {
		t.Errorf("DELETE enrollment: %d %s", r.status, r.body)
	}

	if err := os.RemoveAll(blocker); err != nil {
		t.Fatal(err)
	}
	r := e.do(http.MethodGet, e.operationURL("disk", opID), auth, nil)
	if op := decodeOperation(t, r); r.status != http.StatusOK || op.Status != "assigned" {
		t.Fatalf("poll once the disk is back: %d %s", r.status, r.body)
	}
	var stats map[string]int
	if r := e.admin(http.MethodGet, "/stats", nil); json.Unmarshal(r.body, &stats) != nil || stats["status_500"] != 1 || stats["assigned"] != 1 || stats["total"] < 5 {
		t.Errorf("GET /stats: %s", r.body)
	}
}
