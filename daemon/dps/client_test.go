package dps

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	testScope = "0ne00000A0A"
	testRegID = "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq"
	testSAS   = "SharedAccessSignature sr=0ne00000A0A%2Fregistrations%2Frglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq&sig=HWWFujMbxyUm4jmquys%2BPaCy5GGXYmT7%2B2RAkATRLv4%3D&se=1700000000&skn=registration"
	testOpID  = "4.65f62b2644c85bb1.331ffb1b-35e2-4b5a-9e68-f1fa7d5efc33"
)

// The EK and SRK publics only travel through the client, so their first
// bytes (§2.4, §2.5) are enough.
var (
	testEK  = mustB64("AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEA")
	testSRK = mustB64("ARoAAQALAAMEcgAAAAYAgABDABAIAAAAAAAB")
)

func mustB64(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// recorded is one response kept under testdata/dps/responses.
type recorded struct {
	Status   int               `json:"status"`
	Header   map[string]string `json:"header"`
	Body     json.RawMessage   `json:"body"`
	BodyText string            `json:"bodyText"`
}

func (r recorded) body() []byte {
	if r.Body != nil {
		return r.Body
	}
	return []byte(r.BodyText)
}

func loadRecorded(t testing.TB, name string) recorded {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "testdata", "dps", "responses", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var r recorded
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return r
}

// exchange is one request the replay server expects and its answer.
type exchange struct {
	method, path string // path as sent (escaped)
	auth         bool   // Authorization expected
	reply        recorded
}

// replay serves exchanges in order over TLS and fails the test on any
// request that differs from the next expected one.
type replay struct {
	t    *testing.T
	mu   sync.Mutex
	next []exchange
	srv  *httptest.Server
}

func newReplay(t *testing.T, exchanges ...exchange) *replay {
	r := &replay{t: t, next: exchanges}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	return r
}

func (r *replay) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.next) == 0 {
		r.t.Errorf("unexpected %s %s", req.Method, req.URL)
		w.WriteHeader(http.StatusTeapot)
		return
	}
	x := r.next[0]
	r.next = r.next[1:]
	if req.Method != x.method || req.URL.EscapedPath() != x.path {
		r.t.Errorf("got %s %s, want %s %s", req.Method, req.URL.EscapedPath(), x.method, x.path)
	}
	if v := req.URL.Query()["api-version"]; len(v) != 1 || v[0] != DefaultAPIVersion {
		r.t.Errorf("api-version %q", v)
	}
	if got := req.Header.Get("Content-Type"); got != "application/json; charset=utf-8" {
		r.t.Errorf("Content-Type %q", got)
	}
	if got := req.Header.Get("Accept"); got != "application/json" {
		r.t.Errorf("Accept %q", got)
	}
	if got := req.Header.Get("Authorization"); (got != "") != x.auth || (x.auth && got != testSAS) {
		r.t.Errorf("Authorization %q, want present=%t", got, x.auth)
	}
	body, _ := io.ReadAll(req.Body)
	if req.Method == http.MethodPut {
		checkRegisterBody(r.t, body)
	} else if len(body) != 0 {
		r.t.Errorf("GET with a body: %q", body)
	}
	for k, v := range x.reply.Header {
		w.Header().Set(k, v)
	}
	w.WriteHeader(x.reply.Status)
	w.Write(x.reply.body())
}

// checkRegisterBody: registrationId, tpm.endorsementKey and
// tpm.storageRootKey in standard base64, the payload as given (§5.1).
func checkRegisterBody(t *testing.T, body []byte) {
	var got struct {
		RegistrationID string `json:"registrationId"`
		TPM            struct {
			EndorsementKey string `json:"endorsementKey"`
			StorageRootKey string `json:"storageRootKey"`
		} `json:"tpm"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Errorf("body %q: %v", body, err)
		return
	}
	if got.RegistrationID != testRegID ||
		got.TPM.EndorsementKey != base64.StdEncoding.EncodeToString(testEK) ||
		got.TPM.StorageRootKey != base64.StdEncoding.EncodeToString(testSRK) ||
		string(got.Payload) != `{"site":"a"}` {
		t.Errorf("body %s", body)
	}
}

// client returns a Client that trusts the replay server.
func (r *replay) client(t *testing.T, mod func(*ClientConfig)) *Client {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(r.srv.Certificate())
	cfg := ClientConfig{Endpoint: r.srv.URL, IDScope: testScope, RootCAs: pool, Log: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&cfg)
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *replay) done(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.next) != 0 {
		t.Errorf("%d expected requests never came", len(r.next))
	}
}

var (
	registerPath = "/" + testScope + "/registrations/" + testRegID + "/register"
	pollPath     = "/" + testScope + "/registrations/" + testRegID + "/operations/" + testOpID
	testPayload  = json.RawMessage(`{"site":"a"}`)
)

// TestRegistration replays a whole registration: challenge, authenticated
// PUT, a poll while assigning, the assignment.
func TestRegistration(t *testing.T) {
	t.Parallel()
	r := newReplay(t,
		exchange{http.MethodPut, registerPath, false, loadRecorded(t, "challenge-401")},
		exchange{http.MethodPut, registerPath, true, loadRecorded(t, "register-202")},
		exchange{http.MethodGet, pollPath, true, loadRecorded(t, "poll-202-assigning")},
		exchange{http.MethodGet, pollPath, true, loadRecorded(t, "poll-200-assigned")},
	)
	c := r.client(t, nil)
	ctx := t.Context()
	wantDate := time.Date(2023, 2, 23, 23, 42, 27, 0, time.UTC)

	ch, err := c.Challenge(ctx, testRegID, testEK, testSRK, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.AuthenticationKey) != 920 || ch.KeyName != "registration" || !ch.ServerDate.Equal(wantDate) {
		t.Errorf("challenge: %d-byte key, keyName %q, date %v", len(ch.AuthenticationKey), ch.KeyName, ch.ServerDate)
	}

	op, err := c.Register(ctx, testRegID, testEK, testSRK, testPayload, testSAS)
	if err != nil {
		t.Fatal(err)
	}
	if op.ID != testOpID || op.Status != StatusAssigning || op.RetryAfter != 3*time.Second || op.State != nil || !op.ServerDate.Equal(wantDate) {
		t.Errorf("register: %+v", op)
	}

	op, err = c.Poll(ctx, testRegID, op.ID, testSAS)
	if err != nil {
		t.Fatal(err)
	}
	if op.Status != StatusAssigning || op.RetryAfter != 3*time.Second || op.State == nil || op.State.RegistrationID != testRegID {
		t.Errorf("poll while assigning: %+v", op)
	}

	op, err = c.Poll(ctx, testRegID, op.ID, testSAS)
	if err != nil {
		t.Fatal(err)
	}
	st := op.State
	if op.Status != StatusAssigned || op.RetryAfter != 0 || st == nil {
		t.Fatalf("assigned: %+v", op)
	}
	if st.AssignedHub != "contoso.azure-devices.net" || st.DeviceID != testRegID || st.Substatus != "initialAssignment" ||
		len(st.TPM.AuthenticationKey) != 874 || compact(t, st.Payload) != `{"returned":"by custom allocation, optional"}` ||
		!st.CreatedAt.Equal(time.Date(2023, 2, 23, 23, 42, 29, 882867400, time.UTC)) || st.ETag == "" {
		t.Errorf("registrationState: hub %q device %q substatus %q blob %d bytes payload %s created %v etag %q",
			st.AssignedHub, st.DeviceID, st.Substatus, len(st.TPM.AuthenticationKey), st.Payload, st.CreatedAt, st.ETag)
	}
	r.done(t)
}

func compact(t *testing.T, raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestFinalStatuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		reply     string
		status    Status
		errorCode int
	}{
		{"poll-200-failed", StatusFailed, 400209},
		{"poll-200-disabled", StatusDisabled, 0},
	}
	for _, tc := range tests {
		t.Run(tc.reply, func(t *testing.T) {
			rec := loadRecorded(t, tc.reply)
			var body struct{ OperationID string }
			json.Unmarshal(rec.Body, &body)
			r := newReplay(t, exchange{http.MethodGet, "/" + testScope + "/registrations/" + testRegID + "/operations/" + body.OperationID, true, rec})
			op, err := r.client(t, nil).Poll(t.Context(), testRegID, body.OperationID, testSAS)
			if err != nil {
				t.Fatal(err)
			}
			if op.Status != tc.status || op.State == nil || op.State.ErrorCode != tc.errorCode {
				t.Errorf("%+v %+v", op, op.State)
			}
		})
	}
}

// TestErrors: every recorded error becomes a *Error that says whether to
// retry soon, never, or later.
func TestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		reply      string
		code       int
		message    string
		retryAfter time.Duration
		temporary  bool
		permanent  bool
	}{
		{"error-401", 401002, "Unauthorized", 0, false, true},
		{"error-429", 429001, "Operations are being throttled for this tenant.", 7 * time.Second, true, false},
		// Retry-After as an HTTP-date one minute after the server's Date.
		{"error-503-proxy", 0, "", time.Minute, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.reply, func(t *testing.T) {
			rec := loadRecorded(t, tc.reply)
			r := newReplay(t, exchange{http.MethodPut, registerPath, true, rec})
			_, err := r.client(t, nil).Register(t.Context(), testRegID, testEK, testSRK, testPayload, testSAS)
			var de *Error
			if !errors.As(err, &de) {
				t.Fatalf("error %v, want *Error", err)
			}
			if de.HTTPStatus != rec.Status || de.Code != tc.code || de.Message != tc.message || de.RetryAfter != tc.retryAfter ||
				de.Temporary() != tc.temporary || de.Permanent() != tc.permanent || de.ServerDate.IsZero() {
				t.Errorf("%+v temporary=%t permanent=%t", de, de.Temporary(), de.Permanent())
			}
		})
	}
}

// TestChallengeAnswers: only a 401 of the §5.2 shape is a challenge.
func TestChallengeAnswers(t *testing.T) {
	t.Parallel()
	blob := loadRecorded(t, "challenge-401")
	body := func(s string) recorded { return recorded{Status: http.StatusUnauthorized, BodyText: s} }
	tests := []struct {
		name     string
		reply    recorded
		wantHTTP int  // a *Error with this status
		protocol bool // ErrProtocol
	}{
		{"plain 401: unknown enrollment", loadRecorded(t, "error-401"), 401, false},
		{"401 not JSON", body("Unauthorized"), 401, false},
		{"200 instead of a challenge", recorded{Status: 200, Body: blob.Body}, 0, true},
		{"404", recorded{Status: 404, BodyText: `{"errorCode":404001,"message":"no such scope"}`}, 404, false},
		{"status member", body(`{"status":"assigning","authenticationKey":"ADQA","keyName":"registration"}`), 0, true},
		{"key not a string", body(`{"authenticationKey":123,"keyName":"registration"}`), 0, true},
		{"key empty", body(`{"authenticationKey":"","keyName":"registration"}`), 0, true},
		{"key not base64", body(`{"authenticationKey":"AD*A","keyName":"registration"}`), 0, true},
		{"keyName not a string", body(`{"authenticationKey":"ADQA","keyName":1}`), 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReplay(t, exchange{http.MethodPut, registerPath, false, tc.reply})
			_, err := r.client(t, nil).Challenge(t.Context(), testRegID, testEK, testSRK, testPayload)
			var de *Error
			switch {
			case tc.protocol && !errors.Is(err, ErrProtocol):
				t.Errorf("error %v, want ErrProtocol", err)
			case tc.wantHTTP != 0 && (!errors.As(err, &de) || de.HTTPStatus != tc.wantHTTP || !de.Permanent()):
				t.Errorf("error %v, want a permanent *Error %d", err, tc.wantHTTP)
			}
		})
	}
}

// TestChallengeKeyName: production DPS names the key "registration"; a
// challenge that leaves keyName out (or null, or empty) means the same, as
// Microsoft's Node SDK takes it. A keyName of the wrong type or size is
// still refused.
func TestChallengeKeyName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, body string
		want       string // "" when refused
	}{
		{"present", `{"authenticationKey":"ADQA","keyName":"registration"}`, "registration"},
		{"another name", `{"authenticationKey":"ADQA","keyName":"other"}`, "other"},
		{"absent", `{"authenticationKey":"ADQA"}`, "registration"},
		{"null", `{"authenticationKey":"ADQA","keyName":null}`, "registration"},
		{"empty", `{"authenticationKey":"ADQA","keyName":""}`, "registration"},
		{"not a string", `{"authenticationKey":"ADQA","keyName":1}`, ""},
		{"too long", `{"authenticationKey":"ADQA","keyName":"` + strings.Repeat("k", 65) + `"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, ok, err := parseChallenge([]byte(tc.body))
			switch {
			case !ok:
				t.Fatalf("not taken for a challenge")
			case tc.want == "" && !errors.Is(err, ErrProtocol):
				t.Errorf("keyName accepted (%+v, %v), want ErrProtocol", ch, err)
			case tc.want != "" && (err != nil || ch.KeyName != tc.want):
				t.Errorf("challenge %+v, %v; want keyName %q", ch, err, tc.want)
			}
		})
	}
}

func TestChallengeStatusNull(t *testing.T) {
	t.Parallel()
	ch, ok, err := parseChallenge([]byte(`{"status":null,"authenticationKey":"ADQA","keyName":"registration","unencryptedAuthenticationKey":null}`))
	if err != nil || !ok || ch.KeyName != "registration" {
		t.Errorf("%+v %t %v", ch, ok, err)
	}
}

func TestParseOperationRejects(t *testing.T) {
	t.Parallel()
	assigned := string(loadRecorded(t, "poll-200-assigned").Body)
	tests := []struct {
		name, body string
		assigned   bool // ErrBadAssignment: DPS replaced the hub key, unusably
	}{
		{"not JSON", `<html>`, false},
		{"array", `[]`, false},
		{"trailing data", `{"operationId":"1","status":"assigning"} {}`, false},
		{"no operationId", `{"status":"assigning"}`, false},
		{"operationId too long", `{"operationId":"` + strings.Repeat("x", maxOperationID+1) + `","status":"assigning"}`, false},
		{"unknown status", `{"operationId":"1","status":"blacklisted"}`, false},
		{"status wrong type", `{"operationId":"1","status":1}`, false},
		{"assigned without state", `{"operationId":"1","status":"assigned"}`, true},
		{"assigned without blob", strings.Replace(assigned, `"tpm"`, `"x509"`, 1), true},
		{"assigned without hub", strings.Replace(assigned, `"assignedHub"`, `"hub"`, 1), true},
		{"hub not a host name", strings.Replace(assigned, `contoso.azure-devices.net`, `contoso/x`, 1), true},
		{"device ID with a slash", strings.Replace(assigned, `"deviceId": "`+testRegID, `"deviceId": "a/b`, 1), true},
		{"device ID with a wildcard", strings.Replace(assigned, `"deviceId": "`+testRegID, `"deviceId": "a#`, 1), true},
		{"blob not base64", strings.Replace(assigned, `"authenticationKey": "ADQA`, `"authenticationKey": "*DQA`, 1), true},
		{"errorCode wrong type", `{"operationId":"1","status":"failed","registrationState":{"errorCode":"x"}}`, false},
		{"chain element not base64", strings.Replace(assigned, `"etag"`, `"issuedCertificateChain": ["*x"], "etag"`, 1), true},
		{"chain element empty", strings.Replace(assigned, `"etag"`, `"issuedCertificateChain": [""], "etag"`, 1), true},
		{"chain too long", strings.Replace(assigned, `"etag"`, `"issuedCertificateChain": [`+strings.Repeat(`"AA==",`, maxChain)+`"AA=="], "etag"`, 1), true},
		{"chain not an array", strings.Replace(assigned, `"etag"`, `"issuedCertificateChain": "AA==", "etag"`, 1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			op, err := parseOperation([]byte(tc.body))
			if !errors.Is(err, ErrProtocol) || errors.Is(err, ErrBadAssignment) != tc.assigned {
				t.Errorf("got %+v, %v; want ErrProtocol, ErrBadAssignment %t", op, err, tc.assigned)
			}
		})
	}
}

func TestBodyBound(t *testing.T) {
	t.Parallel()
	big := recorded{Status: 202, BodyText: `{"operationId":"1","status":"assigning","x":"` + strings.Repeat("a", maxBody) + `"}`}
	r := newReplay(t, exchange{http.MethodGet, pollPath, true, big})
	if _, err := r.client(t, nil).Poll(t.Context(), testRegID, testOpID, testSAS); !errors.Is(err, ErrProtocol) {
		t.Errorf("error %v, want ErrProtocol for an oversized body", err)
	}
}

// TestPathEscaping: every path segment is percent-encoded and a base path
// in the endpoint is kept.
func TestPathEscaping(t *testing.T) {
	t.Parallel()
	const opID = "a/b?c#d e"
	r := newReplay(t, exchange{http.MethodGet, "/dps/" + testScope + "/registrations/" + testRegID + "/operations/a%2Fb%3Fc%23d%20e", true, loadRecorded(t, "poll-202-assigning")})
	c := r.client(t, func(cfg *ClientConfig) { cfg.Endpoint = r.srv.URL + "/dps/" })
	if _, err := c.Poll(t.Context(), testRegID, opID, testSAS); err != nil {
		t.Fatal(err)
	}
	r.done(t)
}

func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	r := newReplay(t, exchange{http.MethodGet, pollPath, true, recorded{Status: 307, Header: map[string]string{"Location": "https://elsewhere.example/"}}})
	_, err := r.client(t, nil).Poll(t.Context(), testRegID, testOpID, testSAS)
	var de *Error
	if !errors.As(err, &de) || de.HTTPStatus != 307 {
		t.Errorf("error %v, want *Error 307", err)
	}
}

func TestUntrustedServer(t *testing.T) {
	t.Parallel()
	r := newReplay(t)
	c := r.client(t, func(cfg *ClientConfig) { cfg.RootCAs = x509.NewCertPool() })
	_, err := c.Poll(t.Context(), testRegID, testOpID, testSAS)
	var de *Error
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &de) || de.HTTPStatus != 0 || !errors.As(err, &unknown) {
		t.Errorf("error %v, want a TLS verification failure", err)
	}
}

// TestTimeoutAndCancel: a server that never answers is a temporary network
// error once Timeout passes; a cancelled caller gets its own cause back.
func TestTimeoutAndCancel(t *testing.T) {
	t.Parallel()
	c, _ := hangingClient(t, 50*time.Millisecond)
	_, err := c.Poll(t.Context(), testRegID, testOpID, testSAS)
	var de *Error
	if !errors.As(err, &de) || !de.Temporary() || de.HTTPStatus != 0 {
		t.Errorf("timeout: %v, want a temporary *Error", err)
	}

	// Cancelled while the request is with the server.
	c, arrived := hangingClient(t, 0)
	ctx, cancel := context.WithCancel(t.Context())
	go func() { <-arrived; cancel() }()
	_, err = c.Poll(ctx, testRegID, testOpID, testSAS)
	if !errors.Is(err, context.Canceled) || errors.As(err, &de) {
		t.Errorf("cancel: %v, want context.Canceled and no *Error", err)
	}
}

// hangingClient is a client (with timeout; 0: the default) of a DPS that
// never answers; arrived receives once per request the server gets.
func hangingClient(t *testing.T, timeout time.Duration) (c *Client, arrived <-chan struct{}) {
	t.Helper()
	release, got := make(chan struct{}), make(chan struct{}, 8)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		select {
		case got <- struct{}{}:
		default:
		}
		<-release
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	c, err := NewClient(ClientConfig{Endpoint: srv.URL, IDScope: testScope, RootCAs: pool, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c, got
}

// TestProxy: with Proxy set, the exchange goes through an HTTP CONNECT
// proxy (TLS end to end with DPS).
func TestProxy(t *testing.T) {
	t.Parallel()
	r := newReplay(t, exchange{http.MethodGet, pollPath, true, loadRecorded(t, "poll-202-assigning")})
	var tunnels atomic.Int32
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodConnect {
			http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
			return
		}
		tunnels.Add(1)
		upstream, err := net.Dial("tcp", req.Host)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			upstream.Close()
			return
		}
		conn.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		go func() { io.Copy(upstream, buf); upstream.Close() }()
		io.Copy(conn, bufio.NewReader(upstream))
		conn.Close()
	}))
	t.Cleanup(proxy.Close)

	c := r.client(t, func(cfg *ClientConfig) { cfg.Proxy = proxy.URL })
	if _, err := c.Poll(t.Context(), testRegID, testOpID, testSAS); err != nil {
		t.Fatal(err)
	}
	if tunnels.Load() != 1 {
		t.Errorf("%d tunnels through the proxy, want 1", tunnels.Load())
	}
	r.done(t)
}

func TestNewClientRejects(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  ClientConfig
	}{
		{"http endpoint", ClientConfig{Endpoint: "http://dps.example", IDScope: testScope}},
		{"endpoint with query", ClientConfig{Endpoint: "https://dps.example/?a=b", IDScope: testScope}},
		{"endpoint with credentials", ClientConfig{Endpoint: "https://u:p@dps.example", IDScope: testScope}},
		{"no host", ClientConfig{Endpoint: "https:///x", IDScope: testScope}},
		{"no scope", ClientConfig{}},
		{"scope with slash", ClientConfig{IDScope: "a/b"}},
		{"proxy without scheme", ClientConfig{IDScope: testScope, Proxy: "proxy.example:3128"}},
		{"socks proxy", ClientConfig{IDScope: testScope, Proxy: "socks5://proxy.example:1080"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewClient(tc.cfg); err == nil {
				t.Error("accepted")
			}
		})
	}
	if _, err := NewClient(ClientConfig{IDScope: testScope}); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestRequestArguments(t *testing.T) {
	t.Parallel()
	r := newReplay(t) // nothing may reach the server
	c := r.client(t, nil)
	ctx := t.Context()
	tests := []struct {
		name string
		call func() error
	}{
		{"bad registration ID", func() error { _, err := c.Challenge(ctx, "-x", testEK, testSRK, nil); return err }},
		{"no EK", func() error { _, err := c.Challenge(ctx, testRegID, nil, testSRK, nil); return err }},
		{"payload not JSON", func() error { _, err := c.Challenge(ctx, testRegID, testEK, testSRK, json.RawMessage("{")); return err }},
		{"register without token", func() error { _, err := c.Register(ctx, testRegID, testEK, testSRK, nil, ""); return err }},
		{"poll without operation", func() error { _, err := c.Poll(ctx, testRegID, "", testSAS); return err }},
		{"poll without token", func() error { _, err := c.Poll(ctx, testRegID, testOpID, ""); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	date := time.Date(2023, 2, 23, 23, 42, 27, 0, time.UTC)
	now := date.Add(time.Hour) // a device clock that is wrong
	tests := []struct {
		v          string
		serverDate time.Time
		want       time.Duration
	}{
		{"", date, 0},
		{"3", date, 3 * time.Second},
		{" 3 ", date, 3 * time.Second},
		{"0", date, time.Second},
		{"601", date, 10 * time.Minute},
		{"99999999999999999999", date, 10 * time.Minute},
		{"-1", date, 0},
		{"1.5", date, 0},
		{"soon", date, 0},
		{"Thu, 23 Feb 2023 23:43:27 GMT", date, time.Minute},
		{"Thu, 23 Feb 2023 23:43:27 GMT", time.Time{}, time.Second}, // measured from the wrong clock: in the past
		{"Thu, 23 Feb 2023 23:42:20 GMT", date, time.Second},
		{"Fri, 24 Feb 2023 23:42:27 GMT", date, 10 * time.Minute},
	}
	for _, tc := range tests {
		if got := retryAfter(tc.v, tc.serverDate, now); got != tc.want {
			t.Errorf("retryAfter(%q, %v) = %v, want %v", tc.v, tc.serverDate, got, tc.want)
		}
	}
}

func BenchmarkParseOperationAssigned(b *testing.B) {
	body := []byte(loadRecorded(b, "poll-200-assigned").Body)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := parseOperation(body); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseChallenge(b *testing.B) {
	body := []byte(loadRecorded(b, "challenge-401").Body)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, ok, err := parseChallenge(body); err != nil || !ok {
			b.Fatal(err)
		}
	}
}

func TestServerTime(t *testing.T) {
	t.Parallel()
	date := time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		header string
		ok     bool
	}{
		{"any status carries the server's Date", date.Format(http.TimeFormat), true},
		{"no Date", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodHead {
					t.Errorf("method %s, want HEAD", r.Method)
				}
				// Go's server adds a Date unless the handler sets it, even empty.
				w.Header()["Date"] = []string{tc.header}
				w.WriteHeader(http.StatusNotFound)
			}))
			defer srv.Close()
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			c, err := NewClient(ClientConfig{Endpoint: srv.URL, IDScope: testScope, RootCAs: pool, Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.ServerTime(context.Background())
			if tc.ok && (err != nil || !got.Equal(date)) {
				t.Errorf("ServerTime = %v, %v; want %v", got, err, date)
			}
			if !tc.ok && !errors.Is(err, ErrProtocol) {
				t.Errorf("ServerTime without a Date: %v, want ErrProtocol", err)
			}
		})
	}
}

// TestCSRAndChain: WithCSR puts the DER request, base64, into both
// registration bodies, leaves the original client's bodies alone, and an
// issued chain comes back decoded, leaf first.
func TestCSRAndChain(t *testing.T) {
	t.Parallel()
	csr := []byte{0x30, 0x82, 0x01, 0x02}
	for _, tc := range []struct {
		name    string
		withCSR bool
		want    any
	}{
		{"with csr", true, base64.StdEncoding.EncodeToString(csr)},
		{"without", false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bodies []map[string]any
			srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var b map[string]any
				if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
					t.Errorf("body: %v", err)
				}
				bodies = append(bodies, b)
				if r.Header.Get("Authorization") == "" {
					w.WriteHeader(http.StatusUnauthorized)
					w.Write(loadRecorded(t, "challenge-401").body())
					return
				}
				w.WriteHeader(http.StatusOK)
				w.Write([]byte(strings.Replace(string(loadRecorded(t, "poll-200-assigned").Body), `"etag"`, `"issuedCertificateChain": ["AQI=", "AwQ="], "etag"`, 1)))
			}))
			defer srv.Close()
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			base, err := NewClient(ClientConfig{Endpoint: srv.URL, IDScope: testScope, APIVersion: APIVersionCertificates, RootCAs: pool})
			if err != nil {
				t.Fatal(err)
			}
			c := base
			if tc.withCSR {
				c = base.WithCSR(csr)
			}
			if _, err := c.Challenge(t.Context(), testRegID, testEK, testSRK, nil); err != nil {
				t.Fatal(err)
			}
			op, err := c.Register(t.Context(), testRegID, testEK, testSRK, nil, testSAS)
			if err != nil {
				t.Fatal(err)
			}
			for i, b := range bodies {
				if b["csr"] != tc.want {
					t.Errorf("body %d: csr %v, want %v", i, b["csr"], tc.want)
				}
			}
			if got := op.State.IssuedCertificateChain; len(got) != 2 || !bytes.Equal(got[0], []byte{1, 2}) || !bytes.Equal(got[1], []byte{3, 4}) {
				t.Errorf("chain %x, want [0102 0304]", got)
			}
			// The client WithCSR came from still sends none.
			if _, err := base.Challenge(t.Context(), testRegID, testEK, testSRK, nil); err != nil {
				t.Fatal(err)
			}
			if last := bodies[len(bodies)-1]; last["csr"] != nil {
				t.Errorf("the original client sent csr %v", last["csr"])
			}
		})
	}
}
