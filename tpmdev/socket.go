package tpmdev

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

// The TCG reference simulator's command-port framing, which swtpm also
// accepts on its command socket (unix or TCP): a 4-byte TPM_SEND_COMMAND
// code, a locality byte and the command's length before the command; the
// response comes back as its length, the response, and a 4-byte status.
const (
	simSendCommand = 8
	// maxResponse bounds what a misbehaving peer can make us allocate; no
	// TPM 2.0 response comes near it (MAX_RESPONSE_SIZE is typically 4096).
	maxResponse = 64 << 10
)

// socketConnector dials a socket TPM for each operation and closes the
// connection when the operation ends: swtpm serves one client at a time.
type socketConnector struct {
	network, addr string
}

// cleanupTimeout bounds a cleanup command sent on a fresh connection after
// the operation's own connection failed.
const cleanupTimeout = 30 * time.Second

func (s *socketConnector) begin(ctx context.Context) (transport.TPM, func(), error) {
	var dialer net.Dialer
	c, err := dialer.DialContext(ctx, s.network, s.addr)
	if err != nil {
		return nil, nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	// Cancelling ctx ends a command that waits on the TPM.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	sc := &simConn{c: c, redial: func() (net.Conn, error) {
		d := net.Dialer{Timeout: cleanupTimeout}
		c, err := d.Dial(s.network, s.addr)
		if err == nil {
			c.SetDeadline(time.Now().Add(cleanupTimeout))
		}
		return c, err
	}}
	return sc, func() { stop(); sc.c.Close() }, nil
}

func (s *socketConnector) close() error { return nil }

// simConn sends commands over one connection with the simulator framing.
type simConn struct {
	c net.Conn
	// broken: an exchange failed midway (a cancelled wait, a peer that
	// went away); the stream may hold half an answer. The only commands
	// sent after that are cleanups (FlushContext), and they go over a new
	// connection from redial: the socket TPM keeps loaded objects across
	// connections, so they must still be flushed.
	broken bool
	redial func() (net.Conn, error)
}

// Send implements transport.TPM.
func (s *simConn) Send(cmd []byte) ([]byte, error) {
	if s.broken {
		c, err := s.redial()
		if err != nil {
			return nil, fmt.Errorf("reconnecting for cleanup: %w", err)
		}
		s.c.Close()
		s.c, s.broken = c, false
	}
	rsp, err := s.exchange(cmd)
	if err != nil {
		s.broken = true
	}
	return rsp, err
}

// exchange sends one command and reads its answer.
func (s *simConn) exchange(cmd []byte) ([]byte, error) {
	msg := make([]byte, 9, 9+len(cmd))
	binary.BigEndian.PutUint32(msg[0:4], simSendCommand)
	msg[4] = 0 // locality
	binary.BigEndian.PutUint32(msg[5:9], uint32(len(cmd)))
	msg = append(msg, cmd...)
	if _, err := s.c.Write(msg); err != nil {
		return nil, fmt.Errorf("sending command: %w", err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(s.c, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading response length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 10 || n > maxResponse {
		return nil, fmt.Errorf("response length %d out of range", n)
	}
	rsp := make([]byte, n)
	if _, err := io.ReadFull(s.c, rsp); err != nil {
		return nil, fmt.Errorf("reading response: %w", err)
	}
	if _, err := io.ReadFull(s.c, hdr[:]); err != nil {
		return nil, fmt.Errorf("reading response trailer: %w", err)
	}
	if code := binary.BigEndian.Uint32(hdr[:]); code != 0 {
		return nil, fmt.Errorf("TPM server reported failure status %d", code)
	}
	return rsp, nil
}
