package dpsemu_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
)

// TestAnyAPIVersion: the SDKs send 2019-03-31, 2021-06-01 or 2021-10-01,
// Node adds forceRegistration; DPS serves them all (§2.1), and so must the
// emulator, even without an api-version.
func TestAnyAPIVersion(t *testing.T) {
	t.Parallel()
	for _, q := range []string{"api-version=2019-03-31", "api-version=2021-10-01", "api-version=2019-03-31&forceRegistration=true", "none"} {
		t.Run(q, func(t *testing.T) {
			e := newEnv(t, nil)
			e.query = q
			d := newSoftDevice(t, 0)
			const regID = "device-api"
			e.enroll(regID, d, nil)
			auth := dpsToken(e.challenge(regID, d), regID)
			opID := e.register(regID, d, auth, "")
			if r, _ := e.pollUntilDone(regID, opID, auth); r.status != http.StatusOK {
				t.Fatalf("final poll %d: %s", r.status, r.body)
			}
		})
	}
}

// TestRegisterAssigned walks the whole §1 sequence with a software TPM and
// checks every answer's shape, then the hub's view of the new identity.
func TestRegisterAssigned(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	const regID = "device-01"
	e.enroll(regID, d, nil)

	key := e.challenge(regID, d)
	auth := dpsToken(key, regID)
	opID := e.register(regID, d, auth, `{"site":"lab"}`)
	r, assigning := e.pollUntilDone(regID, opID, auth)
	if r.status != http.StatusOK || assigning != dpsemu.DefaultAssignAfterPolls {
		t.Fatalf("final poll %d after %d assigning answers: %s", r.status, assigning, r.body)
	}
	op := decodeOperation(t, r)
	st := op.RegistrationState
	if op.OperationID != opID || op.Status != "assigned" || st == nil {
		t.Fatalf("final answer %s", r.body)
	}
	if st.DeviceID != regID || !slices.Contains(testHubs, st.AssignedHub) || st.Status != "assigned" ||
		st.Substatus != "initialAssignment" || st.RegistrationID != regID || st.ETag == "" {
		t.Errorf("registrationState %s", r.body)
	}
	for _, ts := range []string{st.CreatedDateTimeUTC, st.LastUpdatedDateTimeUTC} {
		if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
			t.Errorf("timestamp %q: %v", ts, err)
		}
	}
	if string(st.Payload) != `{"site":"lab"}` {
		t.Errorf("payload %s, want it echoed", st.Payload)
	}
	blob, _ := base64.StdEncoding.DecodeString(st.TPM.AuthenticationKey)
	hubKey, _, err := d.Import(blob)
	if err != nil {
		t.Fatalf("blob #2: %v", err)
	}
	if bytes.Equal(hubKey, key) {
		t.Error("blob #2 carries the challenge key; want a separate hub key")
	}

	// A later poll of the finished operation repeats the answer.
	if again := e.do(http.MethodGet, e.operationURL(regID, opID), auth, nil); again.status != http.StatusOK || !bytes.Equal(again.body, r.body) {
		t.Errorf("repeated poll: %d %s", again.status, again.body)
	}

	// The hub takes the blob #2 key, and nothing else.
	if code := e.connect(st.AssignedHub, regID, hubKey); code != connAccepted {
		t.Errorf("CONNECT with the hub key: code %d", code)
	}
	if code := e.connect(st.AssignedHub, regID, key); code != connNotAuthorized {
		t.Errorf("CONNECT with the challenge key: code %d, want not authorized", code)
	}
	if n := e.emu.Stats()["hub_connect"]; n != 2 {
		t.Errorf("stats count %d hub CONNECTs, want 2 (accepted and refused)", n)
	}

	reg := adminJSON(t, e.admin(http.MethodGet, "/registrations/"+regID, nil))
	if reg["status"] != "assigned" || reg["deviceId"] != regID || reg["assignedHub"] != st.AssignedHub || reg["attempts"] != 1.0 {
		t.Errorf("GET /registrations: %v", reg)
	}
	dev := adminJSON(t, e.admin(http.MethodGet, "/devices/"+regID, nil))
	if dev["status"] != "enabled" || dev["hub"] != st.AssignedHub {
		t.Errorf("GET /devices: %v", dev)
	}
	stats := e.emu.Stats()
	for k, want := range map[string]int{"register_challenge": 1, "register": 1, "poll": 3, "assigned": 1, "total": 5, "status_401": 1, "status_202": 2, "status_200": 2} {
		if stats[k] != want {
			t.Errorf("stats[%s] = %d, want %d (all: %v)", k, stats[k], want, stats)
		}
	}
}

// TestSASEncodings checks the §4.1 rule: the HMAC covers sr as sent, so all
// three encodings real clients use are accepted, with or without the body's
// tpm member.
func TestSASEncodings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	const regID = "rglxnrtotazgdj2nzc7pamznnj2hzkuxm6tkqsckf6vjfc36kypq"
	e.enroll(regID, d, nil)
	exp := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name, sr string
		withTPM  bool
	}{
		{"C SDK lowercase hex", "0ne00000A0A%2fregistrations%2f" + regID, true},
		{"Node and C# uppercase hex", "0ne00000A0A%2Fregistrations%2F" + regID, true},
		{"IoT Identity Service lowercase, unencoded", "0ne00000a0a/registrations/" + regID, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := e.challenge(regID, d)
			body := []byte(`{"registrationId":"` + regID + `"}`)
			if tc.withTPM {
				body = registrationBody(regID, d, "")
			}
			r := e.do(http.MethodPut, e.registerURL(regID), token(key, tc.sr, exp, "registration"), body)
			if r.status != http.StatusAccepted {
				t.Errorf("register: %d %s", r.status, r.body)
			}
		})
	}
}

// errorBody checks a §5.2 error body and that no challenge leaked into it.
func checkErrorBody(t *testing.T, r response, status int) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("error body %q: %v", r.body, err)
	}
	code, _ := m["errorCode"].(float64)
	if int(code)/1000 != status || m["message"] == "" || m["trackingId"] == "" || m["timestampUtc"] == "" {
		t.Errorf("error body %s", r.body)
	}
	if _, ok := m["authenticationKey"]; ok {
		t.Errorf("error body carries an authenticationKey: %s", r.body)
	}
	if got := r.header.Get("Content-Type"); !strings.HasPrefix(got, "application/json") {
		t.Errorf("Content-Type %q", got)
	}
	return m
}

// TestDPSErrors sends every malformed or unauthorized request the brief
// lists and checks status and body; the emulator must stay up throughout.
func TestDPSErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d, other := newSoftDevice(t, 0), newSoftDevice(t, 1)
	const regID = "dev-err"
	e.enroll(regID, d, nil)
	key := e.challenge(regID, d)
	good := dpsToken(key, regID)
	opID := e.register(regID, d, good, "")
	base := "https://" + e.addrs.DPS
	sr := url.QueryEscape(testScope + "/registrations/" + regID)

	type req struct {
		method, url, auth, ctype string
		body                     []byte
	}
	put := func(auth string, body []byte) req {
		return req{http.MethodPut, e.registerURL(regID), auth, "application/json", body}
	}
	for _, tc := range []struct {
		name   string
		req    req
		status int
	}{
		{"unknown registration", req{http.MethodPut, e.registerURL("nobody"), "", "application/json", registrationBody("nobody", d, "")}, 401},
		{"EK mismatch", put("", registrationBody(regID, other, "")), 401},
		{"no tpm on the challenge", put("", []byte(`{"registrationId":"dev-err"}`)), 400},
		{"EK not base64", put("", []byte(`{"tpm":{"endorsementKey":"!!","storageRootKey":"AA=="}}`)), 400},
		{"SRK is no storage key", put("", []byte(`{"tpm":{"endorsementKey":"`+base64.StdEncoding.EncodeToString(d.EKPublic)+`","storageRootKey":"AAIAAQ=="}}`)), 400},
		{"SRK with an even modulus", put("", evenSRK(regID, d)), 400},
		{"SAS signed with another key", put(dpsToken(bytes.Repeat([]byte{1}, 32), regID), registrationBody(regID, d, "")), 401},
		{"SAS expired beyond the allowance", put(token(key, sr, time.Now().Add(-10*time.Minute), "registration"), registrationBody(regID, d, "")), 401},
		{"SAS for another registration", put(token(key, url.QueryEscape(testScope+"/registrations/other"), time.Now().Add(time.Hour), "registration"), registrationBody(regID, d, "")), 401},
		{"SAS with the wrong skn", put(token(key, sr, time.Now().Add(time.Hour), "owner"), registrationBody(regID, d, "")), 401},
		{"SAS garbage", put("SharedAccessSignature garbage", registrationBody(regID, d, "")), 401},
		{"SAS for keys other than the challenged ones", put(good, registrationBody(regID, other, "")), 401},
		{"malformed JSON", put("", []byte(`{"registrationId":`)), 400},
		{"JSON of the wrong shape", put("", []byte(`{"tpm":"yes"}`)), 400},
		{"registrationId differs from the path", put("", registrationBody("someone-else", d, "")), 400},
		{"oversized body", put("", append([]byte(`{"payload":"`), bytes.Repeat([]byte("x"), 70<<10)...)), 413},
		{"wrong content type", req{http.MethodPut, e.registerURL(regID), "", "text/plain", registrationBody(regID, d, "")}, 415},
		{"no content type", req{http.MethodPut, e.registerURL(regID), "", "", registrationBody(regID, d, "")}, 415},
		{"unknown operation", req{http.MethodGet, e.operationURL(regID, "4.0000000000000000.nope"), good, "", nil}, 404},
		{"poll without Authorization", req{http.MethodGet, e.operationURL(regID, opID), "", "", nil}, 401},
		{"operation of another registration", req{http.MethodGet, e.operationURL("nobody", opID), good, "", nil}, 401},
		{"unknown ID scope", req{http.MethodPut, base + "/0ne999/registrations/" + regID + "/register", "", "application/json", registrationBody(regID, d, "")}, 404},
		{"invalid registration ID", req{http.MethodPut, base + "/" + testScope + "/registrations/-bad-/register", "", "application/json", nil}, 400},
		{"unknown path", req{http.MethodGet, base + "/", "", "", nil}, 404},
		{"GET on register", req{http.MethodGet, e.registerURL(regID), "", "", nil}, 405},
		{"POST on an operation", req{http.MethodPost, e.operationURL(regID, opID), good, "application/json", nil}, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hr, err := http.NewRequest(tc.req.method, tc.req.url, bytes.NewReader(tc.req.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.req.ctype != "" {
				hr.Header.Set("Content-Type", tc.req.ctype)
			}
			if tc.req.auth != "" {
				hr.Header.Set("Authorization", tc.req.auth)
			}
			resp, err := e.dps.Do(hr)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var buf bytes.Buffer
			buf.ReadFrom(resp.Body)
			checkErrorBody(t, response{resp.StatusCode, resp.Header, buf.Bytes()}, tc.status)
		})
	}

	// After all that, the operation still completes with the good token.
	if r, _ := e.pollUntilDone(regID, opID, good); r.status != http.StatusOK {
		t.Errorf("poll after the error cases: %d %s", r.status, r.body)
	}
}

// TestSASSkew: a token expired within the allowance (5 minutes) is still
// accepted.
func TestSASSkew(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("skew", d, nil)
	key := e.challenge("skew", d)
	sr := url.QueryEscape(testScope + "/registrations/skew")
	e.register("skew", d, token(key, sr, time.Now().Add(-time.Minute), "registration"), "")
}

// TestChallengeReplaced: a new challenge replaces the old key; tokens
// signed with the old one are refused.
func TestChallengeReplaced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("twice", d, nil)
	old := e.challenge("twice", d)
	e.challenge("twice", d)
	r := e.do(http.MethodPut, e.registerURL("twice"), dpsToken(old, "twice"), registrationBody("twice", d, ""))
	checkErrorBody(t, r, http.StatusUnauthorized)
}

// TestDisabledEnrollment: a disabled enrollment still gets its challenge,
// then its operation ends "disabled"; disabling after assignment also
// disables the hub identity, and enabling restores it.
func TestDisabledEnrollment(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("dis", d, nil)
	a := e.provision("dis", d, "")

	e.enroll("dis", d, map[string]any{"provisioningStatus": "disabled"})
	if dev := adminJSON(t, e.admin(http.MethodGet, "/devices/dis", nil)); dev["status"] != "disabled" {
		t.Errorf("hub identity after disabling the enrollment: %v", dev)
	}
	if code := e.connect(a.hub, a.device, a.key); code != connNotAuthorized {
		t.Errorf("CONNECT of a disabled device: code %d", code)
	}

	key := e.challenge("dis", d)
	auth := dpsToken(key, "dis")
	opID := e.register("dis", d, auth, "")
	r, _ := e.pollUntilDone("dis", opID, auth)
	op := decodeOperation(t, r)
	if r.status != http.StatusOK || op.Status != "disabled" || op.RegistrationState.Status != "disabled" || op.RegistrationState.TPM != nil {
		t.Errorf("disabled registration: %d %s", r.status, r.body)
	}
	if reg := adminJSON(t, e.admin(http.MethodGet, "/registrations/dis", nil)); reg["status"] != "disabled" {
		t.Errorf("GET /registrations: %v", reg)
	}

	e.enroll("dis", d, nil)
	if code := e.connect(a.hub, a.device, a.key); code != connAccepted {
		t.Errorf("CONNECT after enabling again: code %d", code)
	}
}

// TestAllocation: hashing spreads devices over the hubs and is stable, an
// enrollment's hub wins, a re-registration keeps device ID and hub but
// rotates the key, and an enrollment change moves the identity.
func TestAllocation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)

	seen := map[string]bool{}
	for _, id := range []string{"spread-1", "spread-2", "spread-3", "spread-4", "spread-5", "spread-6"} {
		e.enroll(id, d, nil)
		seen[e.provision(id, d, "").hub] = true
	}
	if len(seen) != len(testHubs) {
		t.Errorf("six devices landed on %v; want both hubs used", seen)
	}

	e.enroll("pinned", d, map[string]any{"iotHubHostName": "HUB-B.example", "deviceId": "pinned-dev"})
	first := e.provision("pinned", d, "")
	if first.hub != "hub-b.example" || first.device != "pinned-dev" {
		t.Fatalf("pinned: hub %s device %s", first.hub, first.device)
	}

	again := e.provision("pinned", d, "")
	if again.hub != first.hub || again.device != first.device || again.op.RegistrationState.Substatus != "reprovisionedToInitialAssignment" {
		t.Errorf("re-registration: hub %s device %s substatus %s", again.hub, again.device, again.op.RegistrationState.Substatus)
	}
	if bytes.Equal(again.key, first.key) {
		t.Error("re-registration kept the hub key; want a fresh one")
	}
	if code := e.connect(first.hub, first.device, first.key); code != connNotAuthorized {
		t.Errorf("CONNECT with the replaced key: code %d", code)
	}
	if code := e.connect(again.hub, again.device, again.key); code != connAccepted {
		t.Errorf("CONNECT with the new key: code %d", code)
	}
	if reg := adminJSON(t, e.admin(http.MethodGet, "/registrations/pinned", nil)); reg["attempts"] != 2.0 {
		t.Errorf("attempts: %v", reg)
	}

	e.enroll("pinned", d, map[string]any{"iotHubHostName": "hub-a.example", "deviceId": "pinned-dev-2"})
	moved := e.provision("pinned", d, "")
	if moved.hub != "hub-a.example" || moved.device != "pinned-dev-2" || moved.op.RegistrationState.Substatus != "deviceDataReset" {
		t.Errorf("after the enrollment changed: hub %s device %s substatus %s", moved.hub, moved.device, moved.op.RegistrationState.Substatus)
	}
	if r := e.admin(http.MethodGet, "/devices/pinned-dev", nil); r.status != http.StatusNotFound {
		t.Errorf("old identity still there: %d %s", r.status, r.body)
	}
}

// TestEnrollmentDeletedMidOperation: the operation ends "failed".
func TestEnrollmentDeletedMidOperation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	e.enroll("gone", d, nil)
	key := e.challenge("gone", d)
	auth := dpsToken(key, "gone")
	opID := e.register("gone", d, auth, "")
	if r := e.admin(http.MethodDelete, "/enrollments/gone", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	r, _ := e.pollUntilDone("gone", opID, auth)
	op := decodeOperation(t, r)
	if r.status != http.StatusOK || op.Status != "failed" || op.RegistrationState.ErrorCode != 401002 || op.RegistrationState.ErrorMessage == "" {
		t.Errorf("operation after the enrollment was deleted: %d %s", r.status, r.body)
	}
	// A new registration is refused outright.
	checkErrorBody(t, e.do(http.MethodPut, e.registerURL("gone"), "", registrationBody("gone", d, "")), http.StatusUnauthorized)
}

// evenSRK is a registration body whose SRK passes the structure checks but
// has an even RSA modulus, which no RSA key has.
func evenSRK(regID string, d *softtpm.Device) []byte {
	srk := bytes.Clone(d.SRKPublic)
	srk[len(srk)-1] &^= 1
	return []byte(`{"registrationId":"` + regID + `","tpm":{"endorsementKey":"` + base64.StdEncoding.EncodeToString(d.EKPublic) +
		`","storageRootKey":"` + base64.StdEncoding.EncodeToString(srk) + `"}}`)
}
