package localapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// Signal broadcasts "the status changed": Notify wakes everyone waiting on
// a channel that C returned before it. Notify never blocks, so the engine
// may call it on every update however many watchers there are and however
// slowly they read; a watcher that wakes late reads the latest status, so
// changes it missed are coalesced, not queued. The zero Signal is ready.
type Signal struct {
	mu sync.Mutex
	ch chan struct{}
}

// C returns a channel that is closed at the next Notify.
func (s *Signal) C() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch == nil {
		s.ch = make(chan struct{})
	}
	return s.ch
}

// Notify wakes every waiter.
func (s *Signal) Notify() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ch != nil {
		close(s.ch)
		s.ch = nil
	}
}

// Bounds on watches. A watch holds its connection for as long as the
// client likes, so watches get only part of the connection caps: a user's
// watches cannot take all of its slots, nor all users' watches the
// socket's. Root is exempt, as from the connection caps.
const (
	maxWatches       = 16
	maxWatchesPerUID = 4
	// watchWriteTimeout bounds one line's write: a client that stops
	// reading loses its watch, it does not hold a goroutine forever.
	watchWriteTimeout = 10 * time.Second
)

// watchSlots counts open watches, overall and per uid.
type watchSlots struct {
	max, maxPerUID int

	mu     sync.Mutex
	total  int
	perUID map[int]int
}

// acquire takes a watch slot for uid, or says why there is none.
func (w *watchSlots) acquire(uid int) (release func(), reason string) {
	if uid == 0 {
		return func() {}, ""
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.total >= w.max:
		return nil, "too many open watches"
	case w.perUID[uid] >= w.maxPerUID:
		return nil, "too many open watches from this uid"
	}
	if w.perUID == nil {
		w.perUID = map[int]int{}
	}
	w.total++
	w.perUID[uid]++
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.total--
		if w.perUID[uid]--; w.perUID[uid] <= 0 {
			delete(w.perUID, uid)
		}
	}, ""
}

// serveWatch streams the status as newline-delimited JSON: the current one
// at once, then one line per change, until the client hangs up or the
// daemon stops.
func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request) {
	ci := connInfoFrom(r.Context())
	release, reason := s.watches.acquire(ci.peer.UID)
	if reason != "" {
		s.refusals.warn(ci.peer.UID, "refused watch", "uid", ci.peer.UID, "pid", ci.peer.PID, "reason", reason)
		writeJSON(w, http.StatusServiceUnavailable, apitype.Error{Error: reason, Fix: "end other watches (dpsd wait, dpsd status --watch) and retry"})
		return
	}
	defer release()

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	var last []byte
	for {
		// Take the channel before reading the status: a change between
		// the two then wakes the loop rather than being missed.
		changed := s.backend.Changed()
		st := s.backend.Status()
		if key := changeKey(st); !bytes.Equal(key, last) {
			last = key
			if err := writeLine(w, rc, st); err != nil {
				s.log.Debug("watch ended", "uid", ci.peer.UID, "pid", ci.peer.PID, "err", err)
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		}
	}
}

// changeKey is what makes two statuses different to a watcher: everything
// but the TPM command count, which moves with every command and is not a
// change of state.
func changeKey(st apitype.Status) []byte {
	st.TPM.Commands = 0
	b, _ := json.Marshal(st)
	return b
}

// writeLine sends one status line and flushes it to the client.
func writeLine(w http.ResponseWriter, rc *http.ResponseController, st apitype.Status) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding the status: %w", err)
	}
	if err := rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout)); err != nil {
		return fmt.Errorf("setting the write deadline: %w", err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing the status: %w", err)
	}
	if err := rc.Flush(); err != nil {
		return fmt.Errorf("flushing the status: %w", err)
	}
	return nil
}
