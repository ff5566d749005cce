package dpsemu

import (
	"strconv"
	"sync"
)

// Request kinds counted by GET /stats. Every DPS request counts once under
// its kind and once under "total"; faults and answers add their own counts
// ("throttled", "status_401", ...), so a throttled challenge shows under
// both register_challenge and throttled.
const (
	statRegisterChallenge = "register_challenge" // PUT register without Authorization
	statRegister          = "register"           // PUT register with a SAS
	statPoll              = "poll"               // GET operations/{id}
	statLookup            = "lookup"             // POST registrations/{id}, the status lookup
	statOther             = "other"              // anything else sent to the DPS endpoint
	statThrottled         = "throttled"
	statServerError       = "server_error"
	statDropped           = "dropped"
	statAssigned          = "assigned" // assignments completed (hub identity written)
	statCertificates      = "certificates_issued"
	statTotal             = "total"
	// statHubConnect counts MQTT CONNECTs to the hub, accepted or not; it
	// is not a DPS request and not in total.
	statHubConnect = "hub_connect"
)

// stats counts DPS requests by kind and by answer status.
type stats struct {
	mu sync.Mutex
	n  map[string]int
}

func newStats() *stats { return &stats{n: map[string]int{statTotal: 0}} }

func (s *stats) add(kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[kind]++
}

// request counts one arriving request of the given kind.
func (s *stats) request(kind string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n[kind]++
	s.n[statTotal]++
}

// status counts one answer with the given HTTP status.
func (s *stats) status(code int) { s.add("status_" + strconv.Itoa(code)) }

func (s *stats) snapshot() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.n))
	for k, v := range s.n {
		out[k] = v
	}
	return out
}
