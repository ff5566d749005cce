package localapi

import (
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"
)

// limitListener caps open connections, overall and per uid, so that one
// local user holding connections open (slowloris) cannot take the socket
// from everyone else. It never blocks in Accept: a connection over a cap is
// answered 503 and closed at once. Root is exempt from both caps and does
// not count toward them; it is the one who must be able to get in to repair
// things.
type limitListener struct {
	net.Listener
	maxConns, maxPerUID int
	log                 *slog.Logger

	mu     sync.Mutex
	total  int
	perUID map[int]int
}

func newLimitListener(ln net.Listener, maxConns, maxPerUID int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, maxConns: maxConns, maxPerUID: maxPerUID, log: log, perUID: map[int]int{}}
}

// Accept returns the next connection within the caps, with its peer
// credentials already read.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		peer := ReadPeer(c)
		if reason := l.acquire(peer.UID); reason != "" {
			l.log.Warn("refused connection", "uid", peer.UID, "pid", peer.PID, "reason", reason)
			refuseConn(c, reason)
			continue
		}
		pc := &peerConn{Conn: c, peer: peer}
		pc.release = func() { l.release(peer.UID) }
		return pc, nil
	}
}

// acquire takes a slot for uid, or says why there is none.
func (l *limitListener) acquire(uid int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if uid == 0 {
		return ""
	}
	if l.total >= l.maxConns {
		return "too many open connections"
	}
	if l.perUID[uid] >= l.maxPerUID {
		return "too many open connections from this uid"
	}
	l.total++
	l.perUID[uid]++
	return ""
}

func (l *limitListener) release(uid int) {
	if uid == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perUID[uid]--; l.perUID[uid] <= 0 {
		delete(l.perUID, uid)
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

// peerConn is an accepted connection with the credentials read at accept
// time; closing it gives its slot back.
type peerConn struct {
	net.Conn
	peer    Peer
	once    sync.Once
	release func()
}

// Close closes the connection and gives its slot back, once.
func (c *peerConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
