package localapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// The policy of the unit tests uses numeric IDs, so that it does not
// depend on the machine's user database.
var testOptions = localapi.Options{SocketGroup: "4242", TokenAllow: []string{"1500", "@4343"}, MaxTTL: 24 * time.Hour}

var (
	rootPeer       = localapi.Peer{UID: 0, GID: 0, PID: 1, Groups: []int{0}}
	readerPeer     = localapi.Peer{UID: 1000, GID: 1000, PID: 2, Groups: []int{1000, 4242}}
	tokenUserPeer  = localapi.Peer{UID: 1500, GID: 1500, PID: 3, Groups: []int{1500}}
	tokenGroupPeer = localapi.Peer{UID: 1600, GID: 1600, PID: 4, Groups: []int{1600, 4343}}
	strangerPeer   = localapi.Peer{UID: 1700, GID: 1700, PID: 5, Groups: []int{1700}}
	noCredsPeer    = localapi.Peer{UID: -1, GID: -1, Err: errors.New("SO_PEERCRED failed")}
)

func TestPolicyAuthorize(t *testing.T) {
	t.Parallel()
	p := localapi.Policy{SocketGroup: testOptions.SocketGroup, TokenAllow: testOptions.TokenAllow}
	tests := []struct {
		name string
		peer localapi.Peer
		want localapi.Perms
	}{
		{"root", rootPeer, localapi.Perms{Read: true, Token: true, Admin: true}},
		{"socket group member", readerPeer, localapi.Perms{Read: true}},
		{"allowed user", tokenUserPeer, localapi.Perms{Token: true}},
		{"member of an allowed group", tokenGroupPeer, localapi.Perms{Token: true}},
		{"stranger", strangerPeer, localapi.Perms{}},
		{"unreadable credentials", noCredsPeer, localapi.Perms{}},
		{"primary group is the socket group", localapi.Peer{UID: 1800, GID: 4242, Groups: []int{4242}}, localapi.Perms{Read: true}},
		{"root with unreadable credentials", localapi.Peer{UID: 0, Err: errors.New("x")}, localapi.Perms{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Authorize(tt.peer); got != tt.want {
				t.Errorf("Authorize(%+v) = %+v, want %+v", tt.peer, got, tt.want)
			}
		})
	}
}

func TestPolicyNames(t *testing.T) {
	t.Parallel()
	// root and its group exist everywhere.
	p := localapi.Policy{SocketGroup: "root", TokenAllow: []string{"root"}}
	got := p.Authorize(localapi.Peer{UID: 4000, GID: 0, Groups: []int{0}})
	if !got.Read || got.Token {
		t.Errorf("member of group root: %+v, want read only", got)
	}
	p = localapi.Policy{SocketGroup: "no-such-group-dpsd", TokenAllow: []string{"no-such-user-dpsd", "@no-such-group-dpsd"}}
	if got := p.Authorize(strangerPeer); got != (localapi.Perms{}) {
		t.Errorf("unknown names granted %+v", got)
	}
}

type handlerCase struct {
	name       string
	peer       localapi.Peer
	method     string
	target     string
	header     map[string]string
	host       string
	bodyLen    int64
	tokenErr   error
	enrollErr  error
	wantCode   int
	wantInBody string
	// wantRefusal: the refusal is logged with uid and reason.
	wantRefusal bool
}

func TestHandler(t *testing.T) {
	t.Parallel()
	tests := []handlerCase{
		{name: "status as root", peer: rootPeer, method: "GET", target: "/v1/status", wantCode: 200, wantInBody: `"state": "provisioned"`},
		{name: "status as group member", peer: readerPeer, method: "GET", target: "/v1/status", wantCode: 200, wantInBody: `"deviceId": "dev-1"`},
		{name: "status as stranger", peer: strangerPeer, method: "GET", target: "/v1/status", wantCode: 403, wantInBody: "join group 4242", wantRefusal: true},
		{name: "status as token user", peer: tokenUserPeer, method: "GET", target: "/v1/status", wantCode: 403, wantInBody: "may not read", wantRefusal: true},
		{name: "status without credentials", peer: noCredsPeer, method: "GET", target: "/v1/status", wantCode: 403, wantInBody: "could not be read", wantRefusal: true},
		{name: "enroll-info", peer: readerPeer, method: "GET", target: "/v1/enroll-info", wantCode: 200, wantInBody: `"registrationId"`},
		{name: "enroll-info failing", peer: readerPeer, method: "GET", target: "/v1/enroll-info", enrollErr: errors.New("TPM gone"), wantCode: 500, wantInBody: "TPM gone"},
		{name: "check", peer: readerPeer, method: "GET", target: "/v1/check", wantCode: 200, wantInBody: `"checks"`},
		{name: "check as stranger", peer: strangerPeer, method: "GET", target: "/v1/check", wantCode: 403, wantRefusal: true},
		{name: "reprovision as root", peer: rootPeer, method: "POST", target: "/v1/reprovision", wantCode: 202, wantInBody: `"reason": "requested"`},
		{name: "reprovision as group member", peer: readerPeer, method: "POST", target: "/v1/reprovision", wantCode: 403, wantInBody: "only root", wantRefusal: true},
		{name: "reprovision as token user", peer: tokenGroupPeer, method: "POST", target: "/v1/reprovision", wantCode: 403, wantRefusal: true},
		{name: "token as allowed user", peer: tokenUserPeer, method: "POST", target: "/v1/token?ttl=2h", wantCode: 200, wantInBody: "SharedAccessSignature"},
		{name: "token as allowed group", peer: tokenGroupPeer, method: "POST", target: "/v1/token", wantCode: 200, wantInBody: `"deviceId": "dev-1"`},
		{name: "token in seconds", peer: rootPeer, method: "POST", target: "/v1/token?ttl=600", wantCode: 200},
		{name: "token as group member", peer: readerPeer, method: "POST", target: "/v1/token", wantCode: 403, wantInBody: "[token] allow", wantRefusal: true},
		{name: "token as stranger", peer: strangerPeer, method: "POST", target: "/v1/token", wantCode: 403, wantRefusal: true},
		{name: "token over max ttl", peer: rootPeer, method: "POST", target: "/v1/token?ttl=25h", wantCode: 400, wantInBody: "over the maximum"},
		{name: "token ttl zero", peer: rootPeer, method: "POST", target: "/v1/token?ttl=0s", wantCode: 400, wantInBody: "not positive"},
		{name: "token ttl negative", peer: rootPeer, method: "POST", target: "/v1/token?ttl=-5m", wantCode: 400},
		{name: "token ttl garbage", peer: rootPeer, method: "POST", target: "/v1/token?ttl=soon", wantCode: 400, wantInBody: "bad ttl"},
		{name: "token ttl huge seconds", peer: rootPeer, method: "POST", target: "/v1/token?ttl=99999999999999999999", wantCode: 400},
		{name: "token before provisioning", peer: tokenUserPeer, method: "POST", target: "/v1/token",
			tokenErr: fmt.Errorf("state registering: %w", localapi.ErrNotProvisioned), wantCode: 409, wantInBody: "dpsd wait"},
		{name: "token before provisioning, as the daemon wraps it", peer: tokenUserPeer, method: "POST", target: "/v1/token",
			tokenErr: engineWords{errors.New("the device is not provisioned yet")}, wantCode: 409,
			wantInBody: `"the device is not provisioned yet (state provisioned)"`},
		{name: "token from a device with a certificate", peer: tokenUserPeer, method: "POST", target: "/v1/token",
			tokenErr: localapi.ErrCertificateAuth, wantCode: 409, wantInBody: "this device authenticates with a certificate"},
		{name: "token with a lost key, in the engine's words", peer: tokenUserPeer, method: "POST", target: "/v1/token",
			tokenErr: engineWords{errors.New("the device's hub key no longer works: the SRK changed")}, wantCode: 409,
			wantInBody: `"the device's hub key no longer works: the SRK changed"`},
		{name: "token failing", peer: rootPeer, method: "POST", target: "/v1/token", tokenErr: errors.New("TPM_RC_INTEGRITY"), wantCode: 500},
		{name: "wrong method", peer: rootPeer, method: "POST", target: "/v1/status", wantCode: 405},
		{name: "unknown path", peer: rootPeer, method: "GET", target: "/v1/secrets", wantCode: 404},
		{name: "path outside v1", peer: rootPeer, method: "GET", target: "/", wantCode: 404},
		{name: "Origin refused", peer: rootPeer, method: "GET", target: "/v1/status", header: map[string]string{"Origin": "http://evil.example"}, wantCode: 403, wantInBody: "Origin", wantRefusal: true},
		{name: "Referer refused", peer: rootPeer, method: "GET", target: "/v1/status", header: map[string]string{"Referer": "http://evil.example/"}, wantCode: 403, wantRefusal: true},
		{name: "Sec-Fetch refused", peer: rootPeer, method: "GET", target: "/v1/status", header: map[string]string{"Sec-Fetch-Mode": "no-cors"}, wantCode: 403, wantRefusal: true},
		{name: "foreign Host refused", peer: rootPeer, method: "GET", target: "/v1/status", host: "localhost:8080", wantCode: 403, wantInBody: "foreign Host", wantRefusal: true},
		{name: "huge body refused", peer: rootPeer, method: "POST", target: "/v1/token", bodyLen: localapi.MaxBodyBytes + 1, wantCode: 413, wantRefusal: true},
		{name: "small body accepted", peer: rootPeer, method: "POST", target: "/v1/reprovision", bodyLen: 10, wantCode: 202},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runHandlerCase(t, tt) })
	}
}

func provisionedStatus() apitype.Status {
	at := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	return apitype.Status{State: apitype.PhaseProvisioned, Reason: apitype.ReasonFirstBoot, DeviceID: "dev-1",
		AssignedHub: "hub.example", ProvisionedAt: &at, Attempts: 1}
}

func runHandlerCase(t *testing.T, tt handlerCase) {
	var logs bytes.Buffer
	b := localapitest.NewBackend(provisionedStatus())
	b.SetTokenErr(tt.tokenErr)
	b.SetEnrollErr(tt.enrollErr)
	o := testOptions
	o.Log = slog.New(slog.NewTextHandler(&logs, nil))
	srv := localapi.New(b, o)

	var body *bytes.Reader
	if tt.bodyLen > 0 {
		body = bytes.NewReader(make([]byte, tt.bodyLen))
	} else {
		body = bytes.NewReader(nil)
	}
	r := httptest.NewRequest(tt.method, tt.target, body)
	r.Host = apitype.SocketHost
	if tt.host != "" {
		r.Host = tt.host
	}
	for k, v := range tt.header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	srv.ServeHTTP(w, srv.RequestAs(r, tt.peer))

	if w.Code != tt.wantCode {
		t.Errorf("code %d, want %d; body %s", w.Code, tt.wantCode, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.Contains(w.Body.String(), tt.wantInBody) {
		t.Errorf("body %s does not contain %q", w.Body, tt.wantInBody)
	}
	if w.Code >= 400 {
		var e apitype.Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
			t.Errorf("error body %s is not an apitype.Error (%v)", w.Body, err)
		}
		if w.Code == 403 && tt.peer.Err == nil && e.Fix == "" {
			t.Errorf("403 without a fix: %s", w.Body)
		}
	}
	refusal := strings.Contains(logs.String(), "refused request")
	if refusal != tt.wantRefusal {
		t.Errorf("refusal logged: %t, want %t; log:\n%s", refusal, tt.wantRefusal, &logs)
	}
	if refusal && (!strings.Contains(logs.String(), "uid="+strconv.Itoa(tt.peer.UID)) || !strings.Contains(logs.String(), "reason=")) {
		t.Errorf("refusal logged without uid or reason:\n%s", &logs)
	}
	wantReprovisions := 0
	if tt.target == "/v1/reprovision" && tt.wantCode == 202 {
		wantReprovisions = 1
	}
	if n := b.Reprovisions(); n != wantReprovisions {
		t.Errorf("backend Reprovision called %d times, want %d", n, wantReprovisions)
	}
}

// The token's ttl reaches the backend as asked, and defaults to an hour
// capped by the maximum.
func TestTokenTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		maxTTL time.Duration
		query  string
		want   time.Duration
	}{
		{24 * time.Hour, "", time.Hour},
		{30 * time.Minute, "", 30 * time.Minute},
		{24 * time.Hour, "?ttl=90m", 90 * time.Minute},
		{24 * time.Hour, "?ttl=24h", 24 * time.Hour},
		{0, "?ttl=24h", 24 * time.Hour},
		{24 * time.Hour, "?ttl=3600", time.Hour},
	}
	for _, tt := range tests {
		b := localapitest.NewBackend(provisionedStatus())
		o := testOptions
		o.MaxTTL = tt.maxTTL
		srv := localapi.New(b, o)
		r := httptest.NewRequest("POST", "/v1/token"+tt.query, nil)
		r.Host = apitype.SocketHost
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, srv.RequestAs(r, rootPeer))
		if w.Code != 200 || b.LastTTL() != tt.want {
			t.Errorf("max %s, query %q: code %d, ttl %s, want %s", tt.maxTTL, tt.query, w.Code, b.LastTTL(), tt.want)
		}
	}
}

// A round trip over a real socket: the peer credentials of this (root or
// not) process decide, and the client gets the backend's status.
func TestServeOverSocket(t *testing.T) {
	t.Parallel()
	b := localapitest.NewBackend(provisionedStatus())
	o := testOptions
	o.Log = localapitest.Logger(t)
	o.SocketGroup = strconv.Itoa(os.Getegid())
	path := localapitest.Serve(t, localapi.New(b, o), 0o660, strconv.Itoa(os.Getegid()))

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	c := client.New(path, "dpsd")
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.DeviceID != "dev-1" {
		t.Errorf("status %+v", st)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "status.sock")
	// A socket file nobody listens on, as a crash leaves it.
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("the stale socket is not there: %v", err)
	}
	ln, err = localapi.Listen(path, "", 0o660)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
}

func TestListenRefusesLiveSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "status.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, err = localapi.Listen(path, "", 0o660)
	if !errors.Is(err, localapi.ErrSocketInUse) {
		t.Fatalf("Listen over a live socket: %v, want ErrSocketInUse", err)
	}
	// The live socket is untouched.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the live socket was damaged: %v", err)
	}
	c.Close()
}

func TestListenRefusesNonSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "status.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := localapi.Listen(path, "", 0o660); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Fatalf("the file was touched: %q, %v", b, err)
	}
}

func TestListenUnknownGroup(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "status.sock")
	_, err := localapi.Listen(path, "no-such-group-dpsd", 0o660)
	if err == nil || !strings.Contains(err.Error(), "groupadd") {
		t.Fatalf("Listen with an unknown group: %v", err)
	}
}

func TestSocketMode(t *testing.T) {
	t.Parallel()
	if m := localapi.SocketMode(nil); m != 0o660 {
		t.Errorf("no token users: %o", m)
	}
	if m := localapi.SocketMode([]string{"@apps"}); m != 0o666 {
		t.Errorf("token users: %o", m)
	}
}

// Serve returns nil when its context ends, even with a client connected.
func TestServeStopsOnCancel(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "status.sock")
	ln, err := localapi.Listen(path, "", 0o660)
	if err != nil {
		t.Fatal(err)
	}
	srv := localapi.New(localapitest.NewBackend(provisionedStatus()), localapi.Options{Log: localapitest.Logger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	idle, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestMain(m *testing.M) {
	if helper := os.Getenv(helperEnv); helper != "" {
		os.Exit(runHelper(helper))
	}
	os.Exit(m.Run())
}

func ExampleSocketMode() {
	fmt.Printf("%o %o\n", localapi.SocketMode(nil), localapi.SocketMode([]string{"@apps"}))
	// Output: 660 666
}

var _ http.Handler = (*localapi.Server)(nil)

// TestAnswersWaitForStart: a daemon that has not settled its start (as one
// that socket activation started for this very request) answers nothing
// until it has, then answers what it found; a request whose time runs out
// first gets 503 with the state, never a wrong answer.
func TestAnswersWaitForStart(t *testing.T) {
	t.Parallel()
	tests := []struct {
		method, target string
		want           string
	}{
		{"GET", "/v1/status", `"state": "provisioned"`},
		{"GET", "/v1/enroll-info", `"registrationId"`},
		{"GET", "/v1/check", `"checks"`},
		{"POST", "/v1/token", "SharedAccessSignature"},
	}
	b := localapitest.NewBackend(apitype.Status{State: apitype.PhaseStarting})
	settle := b.HoldStart()
	srv := localapi.New(b, testOptions)
	request := func(ctx context.Context, method, target string) *httptest.ResponseRecorder {
		r := httptest.NewRequestWithContext(ctx, method, target, nil)
		r.Host = apitype.SocketHost
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, srv.RequestAs(r, rootPeer))
		return w
	}

	// Out of time before the start settles: 503 naming the state.
	for _, tt := range tests[1:] {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if w := request(ctx, tt.method, tt.target); w.Code != 503 || !strings.Contains(w.Body.String(), "still starting (state starting)") {
			t.Errorf("%s with no time left: %d %s", tt.target, w.Code, w.Body)
		}
	}

	answers := make(chan string, len(tests))
	for _, tt := range tests {
		go func() {
			w := request(context.Background(), tt.method, tt.target)
			answers <- fmt.Sprintf("%s %d %s", tt.target, w.Code, w.Body)
		}()
	}
	select {
	case a := <-answers:
		t.Fatalf("answered before the start settled: %s", a)
	default:
	}
	settle()
	b.SetStatus(provisionedStatus())
	for range tests {
		a := <-answers
		ok := false
		for _, tt := range tests {
			ok = ok || strings.HasPrefix(a, tt.target+" 200 ") && strings.Contains(a, tt.want)
		}
		if !ok {
			t.Errorf("after the start: %s", a)
		}
	}
}

// TestRefusalsRateLimited: a user knocking in a loop gets every 403 but
// does not fill the journal: one line per uid per window.
func TestRefusalsRateLimited(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	o := testOptions
	o.Log = slog.New(slog.NewTextHandler(&logs, nil))
	srv := localapi.New(localapitest.NewBackend(provisionedStatus()), o)
	for range 20 {
		for _, peer := range []localapi.Peer{strangerPeer, tokenUserPeer} {
			r := httptest.NewRequest("GET", "/v1/status", nil)
			r.Host = apitype.SocketHost
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, srv.RequestAs(r, peer))
			if w.Code != 403 {
				t.Fatalf("uid %d: %d, want 403", peer.UID, w.Code)
			}
		}
	}
	for _, peer := range []localapi.Peer{strangerPeer, tokenUserPeer} {
		if n := strings.Count(logs.String(), "uid="+strconv.Itoa(peer.UID)+" "); n != 1 {
			t.Errorf("uid %d: %d refusal lines for 20 refusals, want 1:\n%s", peer.UID, n, &logs)
		}
	}
}

// TestListenRefusesUnsafeDir: dpsd does not create its socket where
// another user could swap it for a symlink or take the path.
func TestListenRefusesUnsafeDir(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t, "give a directory to another uid")
	tests := []struct {
		name  string
		mode  os.FileMode
		owner int
		want  string // in the error; "" means Listen succeeds
	}{
		{"private", 0o755, 0, ""},
		{"sticky and world-writable, like /tmp", 0o777 | os.ModeSticky, 0, ""},
		{"world-writable", 0o777, 0, "may be written by other users"},
		{"group-writable", 0o775, 0, "may be written by other users"},
		{"another user's", 0o755, 2001, "belongs to uid 2001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, tt.owner, tt.owner); err != nil {
				t.Fatal(err)
			}
			ln, err := localapi.Listen(filepath.Join(dir, "status.sock"), "", 0o660)
			if err == nil {
				ln.Close()
			}
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Listen: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Listen: %v, want an error with %q", err, tt.want)
			}
		})
	}
}

// TestListenDoesNotFollowSwappedSocket: a socket replaced by a symlink
// between bind and chmod is refused, and the symlink's target keeps its
// owner and mode.
func TestListenDoesNotFollowSwappedSocket(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	if err := os.WriteFile(target, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	localapi.SetAfterBind(t, func(path string) {
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	})
	ln, err := localapi.Listen(filepath.Join(dir, "status.sock"), strconv.Itoa(os.Getegid()), 0o666)
	if err == nil {
		ln.Close()
		t.Error("Listen accepted a socket swapped for a symlink")
	}
	fi, statErr := os.Stat(target)
	if statErr != nil {
		t.Fatal(statErr)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("the symlink's target got mode %04o", fi.Mode().Perm())
	}
	t.Logf("Listen: %v", err)
}

// engineWords is a token refusal as the daemon passes it on: the engine's
// own words, matching the socket's ErrNotProvisioned.
type engineWords struct{ error }

func (engineWords) Is(target error) bool { return target == localapi.ErrNotProvisioned }
