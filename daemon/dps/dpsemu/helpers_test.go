package dpsemu_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
)

const testScope = "0ne00000A0A"

var testHubs = []string{"hub-a.example", "hub-b.example"}

// env is a running emulator and HTTPS and admin clients for it.
type env struct {
	t     testing.TB
	emu   *dpsemu.Emulator // nil when the emulator runs in another process
	addrs dpsemu.Addrs
	roots *x509.CertPool
	dir   string
	opts  dpsemu.Options
	dps   *http.Client
	// query is the URL query of DPS requests; "" means api-version=2021-06-01.
	query string
}

// newEnv starts an emulator in a fresh directory; mod adjusts its options.
func newEnv(t testing.TB, mod func(*dpsemu.Options)) *env {
	t.Helper()
	opts := dpsemu.Options{Dir: t.TempDir(), IDScope: testScope, Hubs: testHubs}
	if mod != nil {
		mod(&opts)
	}
	return startEnv(t, opts)
}

// startEnv starts an emulator with exactly opts (restart tests reuse Dir).
func startEnv(t testing.TB, opts dpsemu.Options) *env {
	t.Helper()
	emu, err := dpsemu.Start(opts)
	if err != nil {
		t.Fatalf("starting emulator: %v", err)
	}
	t.Cleanup(func() { emu.Close() })
	e := clientEnv(t, emu.Addrs(), emu.RootCAs())
	e.emu, e.dir, e.opts = emu, opts.Dir, opts
	return e
}

// clientEnv is an env for an emulator at addrs whose CA is in roots.
func clientEnv(t testing.TB, addrs dpsemu.Addrs, roots *x509.CertPool) *env {
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	return &env{t: t, addrs: addrs, roots: roots, dps: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

func (e *env) registerURL(regID string) string {
	return "https://" + e.addrs.DPS + "/" + testScope + "/registrations/" + url.PathEscape(regID) + "/register" + e.queryString()
}

func (e *env) operationURL(regID, opID string) string {
	return "https://" + e.addrs.DPS + "/" + testScope + "/registrations/" + url.PathEscape(regID) + "/operations/" + url.PathEscape(opID) + e.queryString()
}

func (e *env) queryString() string {
	switch e.query {
	case "":
		return "?api-version=2021-06-01"
	case "none":
		return ""
	}
	return "?" + e.query
}

// response is one HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request with the headers the C SDK sends (§5.1).
func (e *env) do(method, u, auth string, body []byte) response {
	e.t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	req.Header.Set("Accept", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := e.dps.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("reading answer: %v", err)
	}
	return response{resp.StatusCode, resp.Header, b}
}

// admin sends a request to the admin API; body is marshalled unless it is
// already []byte.
func (e *env) admin(method, path string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://"+e.addrs.Admin+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{resp.StatusCode, resp.Header, b}
}

// enrollment is the admin API's enrollment body as design.md writes it.
func enrollment(regID string, d *softtpm.Device) map[string]any {
	return map[string]any{
		"registrationId": regID,
		"attestation": map[string]any{"type": "tpm", "tpm": map[string]any{
			"endorsementKey": base64.StdEncoding.EncodeToString(d.EKPublic)}},
		"provisioningStatus": "enabled",
	}
}

// enroll puts an enrollment; extra fields override.
func (e *env) enroll(regID string, d *softtpm.Device, extra map[string]any) {
	e.t.Helper()
	body := enrollment(regID, d)
	for k, v := range extra {
		body[k] = v
	}
	if r := e.admin(http.MethodPut, "/enrollments/"+regID, body); r.status != http.StatusOK {
		e.t.Fatalf("enrolling %s: %d %s", regID, r.status, r.body)
	}
}

// registrationBody is the body every SDK sends (§5.1).
func registrationBody(regID string, d *softtpm.Device, payload string) []byte {
	body := map[string]any{
		"registrationId": regID,
		"tpm": map[string]string{
			"endorsementKey": base64.StdEncoding.EncodeToString(d.EKPublic),
			"storageRootKey": base64.StdEncoding.EncodeToString(d.SRKPublic),
		},
	}
	if payload != "" {
		body["payload"] = json.RawMessage(payload)
	}
	b, _ := json.Marshal(body)
	return b
}

// wireChallenge is the 401 body (§5.2), decoded generically to check that
// no "status" member is present.
type wireChallenge map[string]any

// challenge sends the unauthenticated PUT and returns the challenge key
// recovered from blob #1.
func (e *env) challenge(regID string, d *softtpm.Device) []byte {
	e.t.Helper()
	r := e.do(http.MethodPut, e.registerURL(regID), "", registrationBody(regID, d, ""))
	if r.status != http.StatusUnauthorized {
		e.t.Fatalf("challenge: status %d, body %s", r.status, r.body)
	}
	var c wireChallenge
	if err := json.Unmarshal(r.body, &c); err != nil {
		e.t.Fatalf("challenge body: %v", err)
	}
	if _, has := c["status"]; has || c["keyName"] != "registration" {
		e.t.Fatalf("challenge body %s: want keyName registration and no status", r.body)
	}
	blob, err := base64.StdEncoding.DecodeString(c["authenticationKey"].(string))
	if err != nil {
		e.t.Fatalf("authenticationKey: %v", err)
	}
	key, _, err := d.Import(blob)
	if err != nil {
		e.t.Fatalf("importing blob #1: %v", err)
	}
	return key
}

// token builds a SAS with sr exactly as given (§4.1), signed with key.
func token(key []byte, sr string, expiry time.Time, skn string) string {
	se := strconv.FormatInt(expiry.Unix(), 10)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + se))
	t := "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(base64.StdEncoding.EncodeToString(m.Sum(nil))) + "&se=" + se
	if skn != "" {
		t += "&skn=" + skn
	}
	return t
}

// dpsToken is the Node/C# form: sr URL-encoded with uppercase %2F.
func dpsToken(key []byte, regID string) string {
	return token(key, url.QueryEscape(testScope+"/registrations/"+regID), time.Now().Add(time.Hour), "registration")
}

// hubToken is a device token for the hub (§4.2).
func hubToken(key []byte, hub, deviceID string) string {
	return token(key, url.QueryEscape(hub+"/devices/"+deviceID), time.Now().Add(time.Hour), "")
}

// wireOperation is RegistrationOperationStatus as a client reads it.
type wireOperation struct {
	OperationID       string `json:"operationId"`
	Status            string `json:"status"`
	RegistrationState *struct {
		TPM *struct {
			AuthenticationKey string `json:"authenticationKey"`
		} `json:"tpm"`
		RegistrationID         string          `json:"registrationId"`
		CreatedDateTimeUTC     string          `json:"createdDateTimeUtc"`
		AssignedHub            string          `json:"assignedHub"`
		DeviceID               string          `json:"deviceId"`
		Status                 string          `json:"status"`
		Substatus              string          `json:"substatus"`
		ErrorCode              int             `json:"errorCode"`
		ErrorMessage           string          `json:"errorMessage"`
		LastUpdatedDateTimeUTC string          `json:"lastUpdatedDateTimeUtc"`
		ETag                   string          `json:"etag"`
		Payload                json.RawMessage `json:"payload"`
		IssuedCertificateChain []string        `json:"issuedCertificateChain"`
	} `json:"registrationState"`
}

func decodeOperation(t testing.TB, r response) wireOperation {
	t.Helper()
	var op wireOperation
	if err := json.Unmarshal(r.body, &op); err != nil {
		t.Fatalf("operation body %s: %v", r.body, err)
	}
	return op
}

// register sends the authenticated PUT and returns the operation ID.
func (e *env) register(regID string, d *softtpm.Device, auth, payload string) string {
	e.t.Helper()
	r := e.do(http.MethodPut, e.registerURL(regID), auth, registrationBody(regID, d, payload))
	if r.status != http.StatusAccepted {
		e.t.Fatalf("register: status %d, body %s", r.status, r.body)
	}
	op := decodeOperation(e.t, r)
	if op.Status != "assigning" || op.OperationID == "" || r.header.Get("Retry-After") == "" {
		e.t.Fatalf("register answer %s (Retry-After %q)", r.body, r.header.Get("Retry-After"))
	}
	return op.OperationID
}

// pollUntilDone polls until the answer is not 202 and returns it, with the
// number of 202 answers seen.
func (e *env) pollUntilDone(regID, opID, auth string) (response, int) {
	e.t.Helper()
	for n := 0; n < 100; n++ {
		r := e.do(http.MethodGet, e.operationURL(regID, opID), auth, nil)
		if r.status != http.StatusAccepted {
			return r, n
		}
		op := decodeOperation(e.t, r)
		if op.Status != "assigning" || op.RegistrationState == nil || op.RegistrationState.RegistrationID != regID || r.header.Get("Retry-After") == "" {
			e.t.Fatalf("assigning answer %s", r.body)
		}
	}
	e.t.Fatal("still assigning after 100 polls")
	return response{}, 0
}

// assigned is the outcome of a completed registration.
type assigned struct {
	op     wireOperation
	hub    string
	device string
	key    []byte // the hub key from blob #2
}

// provision runs the whole exchange with the software device and returns
// the assignment.
func (e *env) provision(regID string, d *softtpm.Device, payload string) assigned {
	e.t.Helper()
	key := e.challenge(regID, d)
	auth := dpsToken(key, regID)
	opID := e.register(regID, d, auth, payload)
	r, _ := e.pollUntilDone(regID, opID, auth)
	if r.status != http.StatusOK {
		e.t.Fatalf("final poll: %d %s", r.status, r.body)
	}
	op := decodeOperation(e.t, r)
	if op.Status != "assigned" || op.RegistrationState == nil || op.RegistrationState.TPM == nil {
		e.t.Fatalf("final answer %s", r.body)
	}
	blob, err := base64.StdEncoding.DecodeString(op.RegistrationState.TPM.AuthenticationKey)
	if err != nil {
		e.t.Fatalf("blob #2: %v", err)
	}
	hubKey, _, err := d.Import(blob)
	if err != nil {
		e.t.Fatalf("importing blob #2: %v", err)
	}
	return assigned{op: op, hub: op.RegistrationState.AssignedHub, device: op.RegistrationState.DeviceID, key: hubKey}
}

// connect sends MQTT CONNECT for the device with a token signed by key and
// returns the CONNACK code.
func (e *env) connect(hub, deviceID string, key []byte) byte {
	e.t.Helper()
	c, code, err := mqttConnect(e.addrs.Hub, hub, deviceID, hubToken(key, hub, deviceID), e.roots)
	if err != nil {
		e.t.Fatalf("MQTT: %v", err)
	}
	if c != nil {
		c.Close()
	}
	return code
}

// adminJSON decodes an admin answer into a generic map.
func adminJSON(t testing.TB, r response) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("admin body %q: %v", r.body, err)
	}
	return m
}
