package provision

import (
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

func TestRequestPolicy(t *testing.T) {
	const (
		requested = apitype.ReasonRequested
		rejected  = apitype.ReasonHubRejected
		cleared   = apitype.ReasonTPMCleared
	)
	rec := state.State{EKDigest: "ek", PendingReason: string(requested)}
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"a start resumes the recorded request", resumedReason(rec), requested},
		{"nothing pending, nothing resumed", resumedReason(state.State{}), apitype.Reason("")},
		{"a technician's request accepts a new EK", expectedEK(rec, requested), ""},
		{"a resumed tpm-cleared does not", expectedEK(rec, cleared), "ek"},
		{"nor does a hub rejection", expectedEK(rec, rejected), "ek"},
		{"requested outranks hub-rejected", stronger(requested, rejected), requested},
		{"hub-rejected does not replace requested", stronger(rejected, requested), requested},
		{"any reason outranks none", stronger("", cleared), cleared},
		{"a request interrupts polling", interruptsPoll(requested), true},
		{"a hub rejection does not", interruptsPoll(rejected), false},
		{"nor a re-check", interruptsPoll(""), false},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
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
