package localapi

import (
	"net"
	"strconv"
	"sync"
	"time"
)

// limitListener caps open connections, overall and per uid, so that one
// local user holding connections open (slowloris) cannot take the socket
// from everyone else. It never blocks in Accept: a connection over a cap is
// answered 503 and closed at once. Root is exempt from every cap and does
// not count toward them; it is the one who must be able to get in to repair
// things.
//
// A peer is authorized before it is counted: one with no permission at all
// (it will only ever get 403s) takes a slot from a small pool of its own,
// never one that a reader or a token user needs.
type limitListener struct {
	net.Listener
	policy                            Policy
	maxConns, maxPerUID, maxStrangers int
	log                               *refusalLog

	mu        sync.Mutex
	total     int
	perUID    map[int]int
	strangers int
}

func newLimitListener(ln net.Listener, policy Policy, maxConns, maxPerUID, maxStrangers int, log *refusalLog) *limitListener {
	return &limitListener{Listener: ln, policy: policy, maxConns: maxConns, maxPerUID: maxPerUID,
		maxStrangers: maxStrangers, log: log, perUID: map[int]int{}}
}

// Accept returns the next connection within the caps, with its peer
// credentials read and its permissions decided.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := ReadPeer(c)
		perms := l.policy.Authorize(peer)
		permitted := perms != (Perms{})
		if reason := l.acquire(peer.UID, permitted); reason != "" {
			l.log.warn(peer.UID, "refused connection", "uid", peer.UID, "pid", peer.PID, "reason", reason)
			refuseConn(c, reason)
			continue
		}
		pc := &peerConn{Conn: c, peer: peer, perms: perms}
		pc.release = func() { l.release(peer.UID, permitted) }
		return pc, nil
	}
}

// acquire takes a slot for uid, or says why there is none. permitted is
// whether the peer has any permission at all.
func (l *limitListener) acquire(uid int, permitted bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case uid == 0 && permitted:
		return ""
	case !permitted:
		if l.strangers >= l.maxStrangers {
			return "too many open connections from users without permission"
		}
		l.strangers++
		return ""
	case l.total >= l.maxConns:
		return "too many open connections"
	case l.perUID[uid] >= l.maxPerUID:
		return "too many open connections from this uid"
	}
	l.total++
	l.perUID[uid]++
	return ""
}

func (l *limitListener) release(uid int, permitted bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case uid == 0 && permitted:
	case !permitted:
		l.strangers--
	default:
		l.total--
		if l.perUID[uid]--; l.perUID[uid] <= 0 {
			delete(l.perUID, uid)
		}
	}
}

// refuseConn answers a connection over the cap with a 503 before closing
// it, so that a well-behaved client shows a reason rather than an EOF.
func refuseConn(c net.Conn, reason string) {
	body := `{"error":"` + reason + `","fix":"close idle connections to the dpsd socket and retry"}` + "\n"
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
	_ = c.Close()
}

// peerConn is an accepted connection with the credentials read and the
// permissions decided at accept time; closing it gives its slot back.
type peerConn struct {
	net.Conn
	peer    Peer
	perms   Perms
	once    sync.Once
	release func()
}

// Close closes the connection and gives its slot back, once.
func (c *peerConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
