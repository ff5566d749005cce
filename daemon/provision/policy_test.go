package provision

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

const (
	firstBoot     = apitype.ReasonFirstBoot
	cleared       = apitype.ReasonTPMCleared
	rejected      = apitype.ReasonHubRejected
	configChanged = apitype.ReasonConfigChanged
	requested     = apitype.ReasonRequested
)

// The policy under test: the daemon's defaults.
var (
	testRetry  = DefaultRetry
	checkEvery = 5 * time.Minute
)

// step is one event of a scenario: it moves the policy and returns what
// the policy decided.
type step func(policy) (policy, any)

// play runs a scenario from a start with record rec and returns the last
// decision.
func play(rec state.Record, steps ...step) any {
	p := newPolicy(rec, testRetry, checkEvery)
	var got any
	for _, s := range steps {
		p, got = s(p)
	}
	return got
}

var (
	begin         step = func(p policy) (policy, any) { return p.begin(false) }
	beginAccepted step = func(p policy) (policy, any) { return p.begin(true) }
	succeed            = after(outcome{})
	hubRefuses         = after(outcome{hubRejected: true})
)

func after(o outcome) step { return func(p policy) (policy, any) { return p.after(o) } }
func fail(err error) step  { return after(outcome{err: err}) }
func saveFails() step {
	return after(outcome{unsaved: true, saveErr: errors.New("no space left on device")})
}
func wake(r apitype.Reason) step {
	return func(p policy) (policy, any) { p = p.woken(r); return p, p.reason }
}

// between matches a jittered wait after a failure: lo ≤ wait ≤ hi.
type between struct {
	lo, hi time.Duration
	state  apitype.Phase
}

func (b between) match(got any) bool {
	n, ok := got.(next)
	return ok && !n.again && n.backingOff && n.state == b.state && n.wait >= b.lo && n.wait <= b.hi
}

// saveSoon matches the decision after a failed save of the identity in
// use: a quick retry, the device still provisioned.
type saveSoon struct{}

// failed is the decision after a failure whose wait has no jitter.
func failed(wait time.Duration, st apitype.Phase) next {
	return next{wait: wait, backingOff: true, state: st}
}

// Facts the cases share.
var (
	provisioned = state.Record{RegistrationID: "reg", EKDigest: "ek", SRKName: "srk", ConfigFingerprint: "cfg"}
	testKey     = &tpmdev.WrappedKey{Public: []byte("public")}
	testID      = &identity{key: testKey, hub: "hub.example", deviceID: "dev"}
	acc         = &state.HubAcceptance{KeyDigest: keyDigest(testKey), Hub: "hub.example", DeviceID: "dev"}
	otherKey    = &state.HubAcceptance{KeyDigest: "other", Hub: "hub.example", DeviceID: "dev"}
	staged      = []byte("staged key")
	naming      = state.Record{RegistrationID: "reg", IdentityDigest: digest(staged)}
	dpsDown     = &dps.Error{Err: errors.New("connection refused")}
	// A hub rejection, its registration, and the hub refusing the new key.
	rejectedTwice = []step{begin, hubRefuses, begin, succeed, hubRefuses}
)

const perm = 30 * time.Minute

func facts(srk, cfg string, key keyCheck) tpmFacts {
	return tpmFacts{rec: provisioned, srkName: srk, configFP: cfg, key: key}
}

func need(f tpmFacts) any { r, try := registrationNeeded(f); return fmt.Sprint(r, "/", try) }

func pending(r apitype.Reason) state.Record { s := provisioned; s.PendingReason = r; return s }

// policyCase is one rule at work: what the policy decided, and what it
// should have.
type policyCase struct {
	name string
	got  any
	want any
}

func casesStart() []policyCase {
	return []policyCase{
		// First boot.
		{"first boot registers", need(tpmFacts{srkName: "srk", configFP: "cfg"}), "first-boot/false"},
		{"first boot's round is the first", play(state.Record{}, begin), round{first: true}},
		{"provisioned: check_interval until the next look", play(state.Record{}, begin, succeed), next{wait: checkEvery}},

		// Warm start: nothing to do, nothing to connect to.
		{"warm start tries the recorded key", need(facts("srk", "cfg", keyUntried)), "/true"},
		{"warm start: the key loads", need(facts("srk", "cfg", keyLoads)), "/false"},
		{"a key proven in this process is not loaded again", need(facts("srk", "cfg", keyProven)), "/false"},
		{"a key the TPM could not try fails the round, registers nothing", need(facts("srk", "cfg", keyLoadFailed)), "/false"},
		{"warm start with the hub's acceptance recorded connects nowhere", hubPlan(true, false, true, acc, testID), hubRecorded},
		{"an acceptance of another key: connect once", hubPlan(true, false, true, otherKey, testID), hubConnect},
		{"never accepted: connect once", hubPlan(true, false, true, nil, testID), hubConnect},
		{"stay_connected keeps a session", hubPlan(true, true, false, acc, testID), hubSession},
		{"verify = false never connects", hubPlan(true, false, false, nil, testID), hubSkip},
		{"no identity, no hub check", hubPlan(true, false, true, nil, nil), hubSkip},
		{"no hub configured", hubPlan(false, true, true, nil, testID), hubSkip},
	}
}

func casesClear() []policyCase {
	return []policyCase{
		// The identity key on disk.
		{"key file missing or unreadable", need(facts("srk", "cfg", keyUnreadable)), "first-boot/false"},
		{"key file not the one the record names", need(facts("srk", "cfg", keyNotRecorded)), "first-boot/false"},
		{"key file corrupt", need(facts("srk", "cfg", keyCorrupt)), "first-boot/false"},

		// TPM clears.
		{"cleared while stopped: the SRK changed", need(facts("new srk", "cfg", keyUntried)), "tpm-cleared/false"},
		{"cleared while running: the key no longer loads", need(facts("srk", "cfg", keyInvalidated)), "tpm-cleared/false"},
		{"cleared while running: the signer's re-check ends the wait", cutsWait("", false), true},
		{"a re-check does not cut a backoff short", cutsWait("", true), false},
		{"a request cuts a backoff short", cutsWait(requested, true), true},
		{"a re-check forces nothing", play(provisioned, begin, succeed, wake(""), begin), round{}},

		// Replaced TPM.
		{"a replaced TPM fails slowly", play(provisioned, begin, fail(ErrTPMReplaced)), failed(perm, apitype.PhaseFailed)},
		{"the recorded EK is expected", expectedEK(provisioned, ""), "ek"},
		{"a technician's request accepts a new EK", expectedEK(provisioned, requested), ""},
		{"a resumed tpm-cleared does not", expectedEK(provisioned, cleared), "ek"},
		{"nor does a hub rejection", expectedEK(provisioned, rejected), "ek"},
	}
}

func casesHub() []policyCase {
	return []policyCase{
		// Hub rejections: one registration per rejection, then slowly.
		{"a rejection starts the next round at once", play(provisioned, begin, hubRefuses), next{again: true}},
		{"the first rejection earns a registration", play(provisioned, begin, hubRefuses, begin), round{reason: rejected}},
		{"a second rejection without an acceptance fails slowly",
			play(provisioned, append(rejectedTwice, begin)...), round{reason: rejected, refuse: errHubStillRejects}},
		{"the hub still rejecting waits the permanent delay",
			play(provisioned, append(rejectedTwice, begin, fail(errHubStillRejects))...), failed(perm, apitype.PhaseFailed)},
		{"after that wait the round forces nothing",
			play(provisioned, append(rejectedTwice, begin, fail(errHubStillRejects), begin)...), round{}},
		{"after that wait a rejection earns one more registration",
			play(provisioned, append(rejectedTwice, begin, fail(errHubStillRejects), begin, hubRefuses, begin)...), round{reason: rejected}},
		{"an acceptance in between earns another registration",
			play(provisioned, append(rejectedTwice, beginAccepted)...), round{reason: rejected}},
		{"a rejection's registration retried after a DPS failure is not gated again",
			play(provisioned, begin, hubRefuses, begin, fail(dpsDown), begin, fail(dpsDown), begin), round{reason: rejected}},
		{"the session's rejection (stay_connected) earns a registration",
			play(provisioned, begin, succeed, wake(rejected), begin), round{reason: rejected}},
	}
}

func casesRequests() []policyCase {
	return []policyCase{
		// A technician's request.
		{"a request forces a registration", play(provisioned, begin, succeed, wake(requested), begin), round{reason: requested}},
		{"a pending request is resumed after a restart", play(pending(requested), begin), round{reason: requested, first: true}},
		{"a registration sent to DPS is resumed after a restart", play(pending(cleared), begin), round{reason: cleared, first: true}},
		{"a request survives a failure", play(provisioned, begin, succeed, wake(requested), begin, fail(dpsDown), begin), round{reason: requested}},
		{"a hub rejection does not replace a request", play(provisioned, wake(requested), wake(rejected)), requested},
		{"a request replaces a hub rejection", play(provisioned, wake(rejected), wake(requested)), requested},
		{"a re-check keeps the pending reason", play(pending(requested), wake("")), requested},
		{"a request replacing a rejection is not gated",
			play(provisioned, append(rejectedTwice, begin, wake(requested), begin)...), round{reason: requested}},
		{"requested outranks hub-rejected", stronger(requested, rejected), requested},
		{"hub-rejected does not replace requested", stronger(rejected, requested), requested},
		{"any reason outranks none", stronger("", cleared), cleared},
		{"a request that came during the registration stays pending", pendingAfterCommit(requested, true), requested},
		{"a rejection that came during it was the old key's", pendingAfterCommit(rejected, true), apitype.Reason("")},
		{"nothing came", pendingAfterCommit("", false), apitype.Reason("")},
		{"a success clears the forced reason", play(pending(requested), begin, succeed, begin), round{}},

		// Config change.
		{"a changed provisioning config registers", need(facts("srk", "new cfg", keyUntried)), "config-changed/false"},
		{"a clear outranks a config change", need(facts("new srk", "new cfg", keyUntried)), "tpm-cleared/false"},
	}
}

func casesFailures() []policyCase {
	return []policyCase{
		// DPS down, throttling, server errors.
		{"DPS down: a quick first retry", play(state.Record{}, begin, fail(dpsDown)), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},
		{"DPS down: the backoff doubles",
			play(state.Record{}, begin, fail(dpsDown), begin, fail(dpsDown), begin, fail(dpsDown)), between{4 * time.Second, 8 * time.Second, apitype.PhaseFailed}},
		{"DPS down: the backoff stops at ten minutes",
			play(state.Record{}, failTimes(dpsDown, 20)...), between{5 * time.Minute, 10 * time.Minute, apitype.PhaseFailed}},
		{"429 waits its Retry-After",
			play(state.Record{}, begin, fail(&dps.Error{HTTPStatus: 429, RetryAfter: 42 * time.Second})), failed(42*time.Second, apitype.PhaseFailed)},
		{"503's Retry-After is capped at ten minutes",
			play(state.Record{}, begin, fail(&dps.Error{HTTPStatus: 503, RetryAfter: time.Hour})), failed(10*time.Minute, apitype.PhaseFailed)},
		{"500 without Retry-After backs off",
			play(state.Record{}, begin, fail(&dps.Error{HTTPStatus: 500})), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},
		{"a success resets the backoff",
			play(state.Record{}, append(failTimes(dpsDown, 20), begin, succeed, begin, fail(dpsDown))...), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},

		// Permanent errors.
		{"an unknown enrollment (401) waits half an hour", play(state.Record{}, begin, fail(&dps.Error{HTTPStatus: 401})), failed(perm, apitype.PhaseFailed)},
		{"a disabled enrollment shows disabled", play(state.Record{}, begin, fail(ErrDisabled)), failed(perm, apitype.PhaseDisabled)},
		{"not DPS's protocol (a captive portal)", play(state.Record{}, begin, fail(fmt.Errorf("x: %w", dps.ErrProtocol))), failed(perm, apitype.PhaseFailed)},
		{"DPS failing the registration", play(state.Record{}, begin, fail(permanent{errors.New("failed")})), failed(perm, apitype.PhaseFailed)},
		{"a wrong hierarchy auth", play(state.Record{}, begin, fail(tpmdev.ErrAuthFail)), failed(perm, apitype.PhaseFailed)},
		{"a refused poll (lost operation) starts over soon",
			play(state.Record{}, begin, fail(restart{&dps.Error{HTTPStatus: 404}})), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},
		{"NV full waits half an hour", play(state.Record{}, begin, fail(tpmdev.ErrNVFull)), failed(perm, apitype.PhaseFailed)},

		// Permanent failures a technician fixes on the device: looked at every check_interval.
		{"owned by someone else", play(state.Record{}, begin, fail(ErrOwnedByOther)), failed(checkEvery, apitype.PhaseFailed)},
		{"a foreign key at dpsd's handle",
			play(state.Record{}, begin, fail(permanent{fmt.Errorf("x: %w", tpmdev.ErrForeignObject)})), failed(checkEvery, apitype.PhaseFailed)},
		{"owner.auth deleted", play(provisioned, begin, fail(fmt.Errorf("x: %w", errOwnerAuthMissing))), failed(checkEvery, apitype.PhaseFailed)},

		// The TPM and the clock.
		{"an unreachable TPM shows waiting-for-tpm",
			play(provisioned, begin, fail(fmt.Errorf("x: %w", tpmdev.ErrUnreachable))), between{time.Second, 2 * time.Second, apitype.PhaseWaitingForTPM}},
		{"a clock before the build date is looked at every 5 s", play(provisioned, begin, fail(errClockUnset)), failed(clockPoll, apitype.PhaseWaitingForTime)},
	}
}

func casesDisk() []policyCase {
	return []policyCase{
		// A crash in the middle of an identity switch.
		{"nothing staged", interruptedSwitch(naming, true, nil), switchNone},
		{"the record names the staged key: finish", interruptedSwitch(naming, true, staged), switchFinish},
		{"no record names it: discard", interruptedSwitch(provisioned, true, staged), switchDiscard},
		{"no record at all: discard", interruptedSwitch(state.Record{}, false, staged), switchDiscard},

		// The assigned key the disk refused stays in memory.
		{"a failed save is tried again soon", play(state.Record{}, begin, saveFails()), saveSoon{}},
		{"a failed save registers nothing", play(state.Record{}, begin, saveFails(), begin), round{}},
		{"a saved identity waits check_interval", play(state.Record{}, begin, saveFails(), begin, after(outcome{unsaved: true})), next{wait: checkEvery}},
	}
}

// x509Facts is a provisioned x509 device whose certificate is due at
// renew, looked at at now.
func x509Facts(key keyCheck, renew, now time.Time) tpmFacts {
	f := facts("srk", "cfg", key)
	f.x509, f.renewAt, f.now = true, renew, now
	return f
}

func casesRenewal() []policyCase {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	stagedCert := state.Certificate{Key: []byte("tls key"), Chain: []byte("chain")}
	namingCert := state.Record{RegistrationID: "reg", CertificateDigest: certDigest(stagedCert)}
	renewing := outcome{renewIn: 30 * time.Second}
	return []policyCase{
		// When a certificate is renewed.
		{"renewal at two thirds of the life", renewAt(t0, t0.Add(30*day), t0, 0), t0.Add(20 * day)},
		{"a backdated notBefore: two thirds from receipt", renewAt(t0.Add(-time.Hour), t0.Add(30*time.Second), t0, 0), t0.Add(20 * time.Second)},
		{"renew_before ahead of expiry", renewAt(t0, t0.Add(30*day), t0, 36*time.Hour), t0.Add(30*day - 36*time.Hour)},
		{"a renew_before longer than half the life renews halfway", renewAt(t0, t0.Add(time.Minute), t0, time.Hour), t0.Add(30 * time.Second)},
		{"a certificate received before notBefore: life from notBefore", renewAt(t0, t0.Add(30*day), t0.Add(-day), 0), t0.Add(20 * day)},
		{"before renewAt nothing to do", need(x509Facts(keyProven, t0.Add(time.Hour), t0)), "/false"},
		{"at renewAt: register for a renewal", need(x509Facts(keyProven, t0, t0)), "certificate-renewal/false"},
		{"expired at start: straight to a registration", need(x509Facts(keyLoads, t0, t0.Add(40*day))), "certificate-renewal/false"},
		{"a cleared TPM: a new key and certificate", need(x509Facts(keyInvalidated, t0.Add(time.Hour), t0)), "tpm-cleared/false"},
		{"a SAS device never renews", need(facts("srk", "cfg", keyLoads)), "/false"},

		// Waiting for it.
		{"provisioned: wait until renewAt when sooner than check_interval", play(state.Record{}, begin, after(renewing)), next{wait: 30 * time.Second}},
		{"renewAt later than check_interval: check_interval", play(state.Record{}, begin, after(outcome{renewIn: time.Hour})), next{wait: checkEvery}},
		{"a renewal due now waits a second, not a busy loop", play(state.Record{}, begin, after(outcome{renewIn: time.Nanosecond})), next{wait: minRenewWait}},
		{"a failed renewal backs off (the old certificate stays in use)",
			play(provisioned, begin, after(renewing), begin, fail(dpsDown)), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},
		{"and backs off longer the next time",
			play(provisioned, append([]step{begin, after(renewing)}, failTimes(dpsDown, 3)...)...), between{4 * time.Second, 8 * time.Second, apitype.PhaseFailed}},
		{"a refused chain backs off slowly", play(provisioned, begin, fail(permanent{errors.New("chain refused")})), between{perm / 2, perm, apitype.PhaseFailed}},

		// A crash in the middle of a certificate switch.
		{"no certificate staged", interruptedCertSwitch(namingCert, true, state.Certificate{}, false), switchNone},
		{"the record names the staged certificate: finish", interruptedCertSwitch(namingCert, true, stagedCert, true), switchFinish},
		{"a staged certificate no record names: discard", interruptedCertSwitch(provisioned, true, stagedCert, true), switchDiscard},
	}
}

func casesPoll() []policyCase {
	return []policyCase{
		// Polling DPS while it assigns.
		{"poll after DPS's Retry-After", fmt.Sprint(pollDelay(3*time.Second, 10*time.Minute, time.Hour)), "3s true"},
		{"poll without Retry-After", fmt.Sprint(pollDelay(0, 10*time.Minute, time.Hour)), "2s true"},
		{"a huge Retry-After is capped", fmt.Sprint(pollDelay(999999999*time.Second, 10*time.Minute, time.Hour)), "10m0s true"},
		{"never poll past the deadline", fmt.Sprint(pollDelay(3*time.Second, 10*time.Minute, time.Second)), "1s true"},
		{"the poll deadline passed", fmt.Sprint(pollDelay(3*time.Second, 10*time.Minute, 0)), "0s false"},
		{"a stuck assignment fails and backs off",
			play(state.Record{}, begin, fail(fmt.Errorf("%w: still assigning", errAssignTimeout))), between{time.Second, 2 * time.Second, apitype.PhaseFailed}},
		{"a request interrupts polling", interruptsPoll(requested), true},
		{"a hub rejection does not", interruptsPoll(rejected), false},
		{"nor does a re-check", interruptsPoll(""), false},
		{"an interrupted poll starts over at once", play(provisioned, begin, fail(errRestartRequested)), next{again: true}},
		{"and registers for the request", play(provisioned, begin, fail(errRestartRequested), begin), round{reason: requested}},
	}
}

// TestPolicy proves every rule of the policy, scenario by scenario,
// without a TPM.
func TestPolicy(t *testing.T) {
	var tests []policyCase
	for _, cases := range [][]policyCase{casesStart(), casesClear(), casesHub(), casesRequests(), casesFailures(), casesDisk(), casesPoll(), casesRenewal()} {
		tests = append(tests, cases...)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if b, ok := tt.want.(between); ok {
				if !b.match(tt.got) {
					t.Errorf("got %+v, want a wait in %v..%v and state %s", tt.got, b.lo, b.hi, b.state)
				}
				return
			}
			if _, ok := tt.want.(saveSoon); ok {
				got, ok := tt.got.(next)
				if !ok || got.again || got.backingOff || got.state != "" || got.wait < time.Second || got.wait > 2*time.Second {
					t.Errorf("got %+v, want a wait of 1s..2s, provisioned", tt.got)
				}
				return
			}
			if !reflect.DeepEqual(tt.got, tt.want) {
				t.Errorf("got %+v, want %+v", tt.got, tt.want)
			}
		})
	}
}

// failTimes is n rounds failing with err.
func failTimes(err error, n int) []step {
	var s []step
	for range n {
		s = append(s, begin, fail(err))
	}
	return s
}

func TestHubAccepted(t *testing.T) {
	key := &tpmdev.WrappedKey{Public: []byte("public"), Private: []byte("private")}
	id := &identity{key: key, hub: "hub.example", deviceID: "dev"}
	acc := state.HubAcceptance{KeyDigest: keyDigest(key), Hub: "hub.example", DeviceID: "dev", At: time.Now()}
	other := func(f func(*state.HubAcceptance)) *state.HubAcceptance { a := acc; f(&a); return &a }
	tests := []struct {
		name string
		acc  *state.HubAcceptance
		id   *identity
		want bool
	}{
		{"this key on this hub", &acc, id, true},
		{"never accepted", nil, id, false},
		{"no identity", &acc, nil, false},
		{"another key", other(func(a *state.HubAcceptance) { a.KeyDigest = "x" }), id, false},
		{"another hub", other(func(a *state.HubAcceptance) { a.Hub = "hub2.example" }), id, false},
		{"another device ID", other(func(a *state.HubAcceptance) { a.DeviceID = "dev2" }), id, false},
	}
	for _, tt := range tests {
		if got := hubAccepted(tt.acc, tt.id); got != tt.want {
			t.Errorf("%s: hubAccepted = %t, want %t", tt.name, got, tt.want)
		}
	}
}
