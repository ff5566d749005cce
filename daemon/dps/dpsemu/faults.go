package dpsemu

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Faults is the body of PUT /faults (and of GET /faults, where the counts
// are what is left). A PUT replaces every fault: omitted fields are off.
type Faults struct {
	DPS DPSFaults `json:"dps"`
}

// DPSFaults are the faults injected on the DPS endpoint. Each count applies
// to that many of the next DPS requests, of any kind; one request consumes
// at most one count, in the order dropConnections, throttle, serverErrors.
type DPSFaults struct {
	// Throttle answers 429 with Retry-After: RetryAfter seconds.
	Throttle   int `json:"throttle"`
	RetryAfter int `json:"retryAfter"`
	// ServerErrors answers 503 with an error body.
	ServerErrors int `json:"serverErrors"`
	// Latency delays every DPS request (until changed), before anything else.
	Latency Duration `json:"latency"`
	// AssignAfterPolls, when set, is the number of polls answered
	// "assigning" for operations created from now on; null restores the
	// emulator's default.
	AssignAfterPolls *int `json:"assignAfterPolls"`
	// DropConnections closes the connection without an answer.
	DropConnections int `json:"dropConnections"`
	// GarbleKey corrupts blob #2 in "assigned" answers (one byte of the
	// duplicate's outer HMAC), so that TPM2_Import fails; the hub keeps the
	// real key. It stays on until a PUT turns it off.
	GarbleKey bool `json:"garbleKey"`
	// BadAssignedHub names a hub that is not a host name in "assigned"
	// answers; the hub holds the new key all the same, as DPS would have
	// replaced it. It stays on until a PUT turns it off.
	BadAssignedHub bool `json:"badAssignedHub"`
	// WrongKeyChain issues every operational certificate for a fresh key
	// of the emulator's instead of the CSR's (a chain a device must
	// refuse). It stays on until a PUT turns it off.
	WrongKeyChain bool `json:"wrongKeyChain"`
	// OmitKeyName leaves keyName out of challenges (production DPS always
	// sends "registration"; the expected skn stays "registration").
	OmitKeyName bool `json:"omitKeyName"`
	// PollRetryAfter, when set, is the Retry-After (seconds) of every 202
	// instead of --retry-after: a huge value plays a proxy that parks the
	// device.
	PollRetryAfter int64 `json:"pollRetryAfter"`
}

// Duration is a time.Duration written in JSON as a Go duration string
// ("250ms", "2s").
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("a duration is a string such as \"250ms\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// validate rejects values that make no sense rather than clamping them.
func (f DPSFaults) validate() error {
	for _, c := range []struct {
		name string
		v    int
	}{
		{"throttle", f.Throttle}, {"retryAfter", f.RetryAfter}, {"serverErrors", f.ServerErrors},
		{"dropConnections", f.DropConnections},
	} {
		if c.v < 0 {
			return fmt.Errorf("dps.%s is %d, must not be negative", c.name, c.v)
		}
	}
	if f.PollRetryAfter < 0 {
		return fmt.Errorf("dps.pollRetryAfter is %d, must not be negative", f.PollRetryAfter)
	}
	if f.AssignAfterPolls != nil && *f.AssignAfterPolls < 0 {
		return fmt.Errorf("dps.assignAfterPolls is %d, must not be negative", *f.AssignAfterPolls)
	}
	if f.Latency < 0 {
		return fmt.Errorf("dps.latency is %s, must not be negative", time.Duration(f.Latency))
	}
	return nil
}

// faultKind is what one request gets instead of normal service.
type faultKind int

const (
	faultNone faultKind = iota
	faultDrop
	faultThrottle
	faultServerError
)

// faultState holds the configured faults and consumes their counts.
type faultState struct {
	mu  sync.Mutex
	cur DPSFaults
}

func (s *faultState) set(f DPSFaults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = f
}

func (s *faultState) get() DPSFaults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// take returns the latency to add and the fault for one request, consuming
// one count.
func (s *faultState) take() (latency time.Duration, kind faultKind, retryAfter int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	latency = time.Duration(s.cur.Latency)
	switch {
	case s.cur.DropConnections > 0:
		s.cur.DropConnections--
		return latency, faultDrop, 0
	case s.cur.Throttle > 0:
		s.cur.Throttle--
		return latency, faultThrottle, s.cur.RetryAfter
	case s.cur.ServerErrors > 0:
		s.cur.ServerErrors--
		return latency, faultServerError, 0
	}
	return latency, faultNone, 0
}

// assignAfterPolls is the number of "assigning" polls for a new operation.
func (s *faultState) assignAfterPolls(def int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.AssignAfterPolls != nil {
		return *s.cur.AssignAfterPolls
	}
	return def
}

func (s *faultState) garbleKey() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.GarbleKey
}

func (s *faultState) badAssignedHub() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.BadAssignedHub
}

func (s *faultState) wrongKeyChain() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.WrongKeyChain
}

func (s *faultState) omitKeyName() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.OmitKeyName
}

// retryAfter is the Retry-After of a 202: the fault's, else def.
func (s *faultState) retryAfter(def int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur.PollRetryAfter > 0 {
		return strconv.FormatInt(s.cur.PollRetryAfter, 10)
	}
	return strconv.Itoa(def)
}
