package dpsemu_test

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
)

func (e *env) setFaults(t *testing.T, body string) {
	t.Helper()
	if r := e.admin(http.MethodPut, "/faults", []byte(body)); r.status != http.StatusOK {
		t.Fatalf("PUT /faults %s: %d %s", body, r.status, r.body)
	}
}

// TestFaultThrottleAndServerErrors: each count hits that many requests of
// any kind, with the configured Retry-After, then service resumes.
func TestFaultThrottleAndServerErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f1", d, nil)

	e.setFaults(t, `{"dps":{"throttle":2,"retryAfter":7,"serverErrors":1}}`)
	for i, want := range []int{429, 429, 503} {
		r := e.do(http.MethodPut, e.registerURL("f1"), "", registrationBody("f1", d, ""))
		checkErrorBody(t, r, want)
		if ra := r.header.Get("Retry-After"); want == 429 && ra != "7" {
			t.Errorf("request %d: Retry-After %q, want 7", i, ra)
		}
	}
	e.provision("f1", d, "")
	left := adminJSON(t, e.admin(http.MethodGet, "/faults", nil))["dps"].(map[string]any)
	if left["throttle"] != 0.0 || left["serverErrors"] != 0.0 {
		t.Errorf("faults left: %v", left)
	}
	stats := e.emu.Stats()
	if stats["throttled"] != 2 || stats["server_error"] != 1 || stats["status_429"] != 2 || stats["status_503"] != 1 {
		t.Errorf("stats %v", stats)
	}
}

// TestFaultDropConnections: the connection closes without an answer.
func TestFaultDropConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f2", d, nil)
	e.setFaults(t, `{"dps":{"dropConnections":1}}`)

	// A fresh connection per request, so the transport cannot retry.
	c := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: e.roots, ServerName: "localhost"},
		DisableKeepAlives: true,
	}}
	req, _ := http.NewRequest(http.MethodGet, e.operationURL("f2", "x"), nil)
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("dropped request answered %d", resp.StatusCode)
	}
	e.provision("f2", d, "")
	if s := e.emu.Stats(); s["dropped"] != 1 {
		t.Errorf("stats %v", s)
	}
}

// TestFaultLatency: requests wait; a client that gives up first gets no
// answer, and clearing the fault restores service.
func TestFaultLatency(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f3", d, nil)

	e.setFaults(t, `{"dps":{"latency":"1h"}}`)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.operationURL("f3", "x"), nil)
	if resp, err := e.dps.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			resp.Body.Close()
		}
		t.Fatalf("request under 1h latency: %v, want the client's deadline", err)
	}

	e.setFaults(t, `{"dps":{"latency":"20ms"}}`)
	e.provision("f3", d, "")
	e.setFaults(t, `{}`)
}

// TestFaultAssignAfterPolls: the count applies to new operations; null
// restores the default.
func TestFaultAssignAfterPolls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f4", d, nil)
	for _, tc := range []struct {
		faults string
		want   int
	}{
		{`{"dps":{"assignAfterPolls":3}}`, 3},
		{`{"dps":{"assignAfterPolls":0}}`, 0},
		{`{"dps":{"assignAfterPolls":null}}`, 1},
	} {
		e.setFaults(t, tc.faults)
		key := e.challenge("f4", d)
		auth := dpsToken(key, "f4")
		opID := e.register("f4", d, auth, "")
		r, n := e.pollUntilDone("f4", opID, auth)
		if r.status != http.StatusOK || n != tc.want {
			t.Errorf("%s: %d assigning polls then %d, want %d then 200", tc.faults, n, r.status, tc.want)
		}
	}
}

// TestFaultGarbleKey: blob #2 fails the TPM's integrity check while the
// hub keeps the real key; turning it off restores good blobs.
func TestFaultGarbleKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f5", d, nil)
	e.setFaults(t, `{"dps":{"garbleKey":true}}`)

	key := e.challenge("f5", d) // blob #1 is never garbled
	auth := dpsToken(key, "f5")
	r, _ := e.pollUntilDone("f5", e.register("f5", d, auth, ""), auth)
	op := decodeOperation(t, r)
	if op.Status != "assigned" {
		t.Fatalf("garbled assignment: %s", r.body)
	}
	blob, _ := base64.StdEncoding.DecodeString(op.RegistrationState.TPM.AuthenticationKey)
	if _, _, err := d.Import(blob); !errors.Is(err, softtpm.ErrIntegrity) {
		t.Errorf("importing a garbled blob: %v, want an integrity failure", err)
	}
	if r := e.admin(http.MethodGet, "/devices/f5", nil); r.status != http.StatusOK {
		t.Errorf("hub identity of the garbled assignment: %d", r.status)
	}

	e.setFaults(t, `{"dps":{"garbleKey":false}}`)
	a := e.provision("f5", d, "")
	if code := e.connect(a.hub, a.device, a.key); code != connAccepted {
		t.Errorf("CONNECT after the fault: %d", code)
	}
}

// TestFaultsRejected: the faults body is strict.
func TestFaultsRejected(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, body := range []string{
		`{"dps":{"throtle":1}}`,
		`{"hub":{}}`,
		`{"dps":{"throttle":-1}}`,
		`{"dps":{"assignAfterPolls":-2}}`,
		`{"dps":{"latency":"soon"}}`,
		`{"dps":{"latency":5}}`,
		`{"dps":{}} {}`,
		`not json`,
	} {
		if r := e.admin(http.MethodPut, "/faults", []byte(body)); r.status != http.StatusBadRequest {
			t.Errorf("PUT /faults %s: %d %s", body, r.status, r.body)
		}
	}
}

// TestFaultKeyNameAndPollRetryAfter: omitKeyName leaves keyName out of the
// challenge (skn=registration is still what a token must carry), and
// pollRetryAfter replaces the Retry-After of every 202, however large.
func TestFaultKeyNameAndPollRetryAfter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("f9", d, nil)
	e.setFaults(t, `{"dps":{"omitKeyName":true,"pollRetryAfter":999999999,"assignAfterPolls":1}}`)

	r := e.do(http.MethodPut, e.registerURL("f9"), "", registrationBody("f9", d, ""))
	var ch map[string]any
	if err := json.Unmarshal(r.body, &ch); err != nil || r.status != http.StatusUnauthorized {
		t.Fatalf("challenge: %d %s", r.status, r.body)
	}
	if _, has := ch["keyName"]; has {
		t.Errorf("challenge %s has a keyName", r.body)
	}
	blob, err := base64.StdEncoding.DecodeString(ch["authenticationKey"].(string))
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := d.Import(blob)
	if err != nil {
		t.Fatal(err)
	}
	auth := dpsToken(key, "f9")
	r = e.do(http.MethodPut, e.registerURL("f9"), auth, registrationBody("f9", d, ""))
	if ra := r.header.Get("Retry-After"); r.status != http.StatusAccepted || ra != "999999999" {
		t.Fatalf("register: %d, Retry-After %q", r.status, ra)
	}
	op := decodeOperation(t, r)
	r = e.do(http.MethodGet, e.operationURL("f9", op.OperationID), auth, nil)
	if ra := r.header.Get("Retry-After"); r.status != http.StatusAccepted || ra != "999999999" {
		t.Fatalf("poll: %d, Retry-After %q", r.status, ra)
	}
}
