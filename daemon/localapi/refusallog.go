package localapi

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogEvery is how often one uid's refusals are logged at most. Every
// refusal is logged, but a user knocking in a loop must not fill the
// journal: after the first line, its next refusals within this window are
// counted and the next line says how many were left out.
const refusalLogEvery = time.Minute

// maxRefusalUIDs bounds the bookkeeping; older entries are pruned first.
const maxRefusalUIDs = 1024

// refusalLog logs refusals, rate-limited per uid.
type refusalLog struct {
	log *slog.Logger
	now func() time.Time

	mu   sync.Mutex
	uids map[int]*refusalEntry
}

type refusalEntry struct {
	last    time.Time
	dropped int
}

func newRefusalLog(log *slog.Logger) *refusalLog {
	return &refusalLog{log: log, now: time.Now, uids: map[int]*refusalEntry{}}
}

// warn logs msg with args for uid, unless uid was logged within the last
// refusalLogEvery.
func (l *refusalLog) warn(uid int, msg string, args ...any) {
	now := l.now()
	l.mu.Lock()
	e := l.uids[uid]
	if e != nil && now.Sub(e.last) < refusalLogEvery {
		e.dropped++
		l.mu.Unlock()
		return
	}
	if e == nil {
		if len(l.uids) >= maxRefusalUIDs {
			l.prune(now)
		}
		e = &refusalEntry{}
		l.uids[uid] = e
	}
	dropped := e.dropped
	e.dropped, e.last = 0, now
	l.mu.Unlock()
	if dropped > 0 {
		args = append(args, "not_logged_since_last", dropped)
	}
	l.log.Warn(msg, args...)
}

// prune forgets uids not refused within the window (which would be logged
// anyway), or all when every one was.
func (l *refusalLog) prune(now time.Time) {
	for uid, e := range l.uids {
		if now.Sub(e.last) >= refusalLogEvery {
			delete(l.uids, uid)
		}
	}
	if len(l.uids) >= maxRefusalUIDs {
		clear(l.uids)
	}
}
