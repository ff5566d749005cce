// Package client talks to the daemon's status socket. Its errors say what
// to do: a refused connect names the group to join, an absent daemon names
// the systemctl command, and the server's own refusals carry its fix.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// Sentinels callers branch on; every error of this package wraps at most
// one of them.
var (
	// ErrNotRunning: nothing serves on the socket (no file, or refused).
	ErrNotRunning = errors.New("dpsd is not running")
	// ErrPermission: the socket or the daemon refused this caller.
	ErrPermission = errors.New("permission denied")
	// ErrNotProvisioned: the daemon has no hub identity yet.
	ErrNotProvisioned = errors.New("not provisioned")
	// ErrImpostor: the process serving the socket is not dpsd's: neither
	// root nor the service user (nor the caller itself) runs it.
	ErrImpostor = errors.New("the status socket is not served by dpsd")
)

// maxResponseBytes bounds what the client reads; the largest honest answer
// (a check report or an EK certificate) is a few KiB.
const maxResponseBytes = 1 << 20

// Client is a client of one status socket.
type Client struct {
	socket string
	group  string
	hc     *http.Client
}

// New returns a client of the socket at path. group is the socket's group,
// named in the advice when the socket refuses the caller.
func New(path, group string) *Client {
	d := net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				return nil, err
			}
			if err := checkServer(conn); err != nil {
				_ = conn.Close()
				return nil, err
			}
			return conn, nil
		},
		DisableCompression: true,
		MaxIdleConns:       1,
		IdleConnTimeout:    10 * time.Second,
	}
	return &Client{socket: path, group: group, hc: &http.Client{Transport: tr}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// Status is GET /v1/status.
func (c *Client) Status(ctx context.Context) (apitype.Status, error) {
	var st apitype.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", &st)
	return st, err
}

// EnrollInfo is GET /v1/enroll-info.
func (c *Client) EnrollInfo(ctx context.Context) (apitype.EnrollInfo, error) {
	var info apitype.EnrollInfo
	err := c.do(ctx, http.MethodGet, "/v1/enroll-info", &info)
	return info, err
}

// Check is GET /v1/check.
func (c *Client) Check(ctx context.Context) (apitype.CheckReport, error) {
	var rep apitype.CheckReport
	err := c.do(ctx, http.MethodGet, "/v1/check", &rep)
	return rep, err
}

// Reprovision is POST /v1/reprovision; it returns the status right after
// the daemon accepted the request.
func (c *Client) Reprovision(ctx context.Context) (apitype.Status, error) {
	var st apitype.Status
	err := c.do(ctx, http.MethodPost, "/v1/reprovision", &st)
	return st, err
}

// Token is POST /v1/token; ttl zero lets the daemon choose (1h, or less
// when [token] max_ttl is shorter).
func (c *Client) Token(ctx context.Context, ttl time.Duration) (apitype.Token, error) {
	path := "/v1/token"
	if ttl != 0 {
		path += "?" + url.Values{"ttl": {ttl.String()}}.Encode()
	}
	var tok apitype.Token
	err := c.do(ctx, http.MethodPost, path, &tok)
	return tok, err
}

// APIError is a non-2xx answer of the daemon.
type APIError struct {
	StatusCode int
	Body       apitype.Error
}

// Error is the daemon's message followed by its fix.
func (e *APIError) Error() string {
	if e.Body.Fix == "" {
		return e.Body.Error
	}
	return e.Body.Error + ": " + e.Body.Fix
}

// Is lets errors.Is match the sentinels by status code.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrPermission:
		return e.StatusCode == http.StatusForbidden
	case ErrNotProvisioned:
		return e.StatusCode == http.StatusConflict
	}
	return false
}

// ErrWatchEnded is what Watch returns when the daemon ends the stream
// (it stopped or restarted); a caller that still wants changes watches
// again.
var ErrWatchEnded = errors.New("dpsd ended the watch")

// Watch is GET /v1/watch: it calls fn with the current status, then with
// each change, until fn returns an error (returned as is), ctx ends, or the
// daemon ends the stream (ErrWatchEnded).
func (c *Client) Watch(ctx context.Context, fn func(apitype.Status) error) error {
	const method, path = http.MethodGet, "/v1/watch"
	resp, err := c.send(ctx, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 0, 4<<10), maxResponseBytes)
	for lines.Scan() {
		var st apitype.Status
		if err := json.Unmarshal(lines.Bytes(), &st); err != nil {
			return fmt.Errorf("decoding a line of %s %s: %w", method, path, err)
		}
		if err := fn(st); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := lines.Err(); err != nil {
		return fmt.Errorf("%w: reading %s from %s: %w", ErrWatchEnded, path, c.socket, err)
	}
	return ErrWatchEnded
}

// do sends one request and decodes a 2xx answer into out.
func (c *Client) do(ctx context.Context, method, path string, out any) error {
	resp, err := c.send(ctx, method, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := readBounded(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the answer to %s %s from %s: %w", method, path, c.socket, err)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decoding the answer to %s %s: %w", method, path, err)
	}
	return nil
}

// send sends one request and returns a 2xx response, whose body the
// caller closes; any other answer becomes an *APIError.
func (c *Client) send(ctx context.Context, method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+apitype.SocketHost+path, nil)
	if err != nil {
		return nil, fmt.Errorf("building the request %s %s: %w", method, path, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.connectError(err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	body, err := readBounded(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading the answer to %s %s from %s: %w", method, path, c.socket, err)
	}
	apiErr := &APIError{StatusCode: resp.StatusCode}
	if json.Unmarshal(body, &apiErr.Body) != nil || apiErr.Body.Error == "" {
		apiErr.Body.Error = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(body))
	}
	return nil, apiErr
}

// readBounded reads a whole answer of at most maxResponseBytes.
func readBounded(r io.Reader) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, maxResponseBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxResponseBytes {
		return nil, fmt.Errorf("the answer is over %d bytes", maxResponseBytes)
	}
	return body, nil
}

// checkServer refuses a socket served by anyone but root, the service
// user or the caller itself: a user who took the socket path (bound it
// before dpsd, say) must not feed made-up answers to root's commands.
// The kernel recorded the server's credentials when it listened.
func checkServer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return fmt.Errorf("%w: %T is not a Unix socket", ErrImpostor, conn)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return fmt.Errorf("reading the server's credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return fmt.Errorf("reading the server's credentials: %w", err)
	}
	if credErr != nil {
		return fmt.Errorf("reading the server's credentials (SO_PEERCRED): %w", credErr)
	}
	uid := int(cred.Uid)
	if uid == 0 || uid == os.Geteuid() {
		return nil
	}
	if u, err := user.Lookup(apitype.ServiceUser); err == nil && u.Uid == strconv.Itoa(uid) {
		return nil
	}
	return fmt.Errorf("%w: it is served by uid %d (pid %d), not by root or the %s user; another user may have taken the socket path: "+
		"remove it and restart dpsd (systemctl restart dpsd.socket dpsd)", ErrImpostor, uid, cred.Pid, apitype.ServiceUser)
}

// connectError turns a failed exchange into advice.
func (c *Client) connectError(err error) error {
	switch {
	case errors.Is(err, ErrImpostor):
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the request's URL names no socket: the message does
		}
		return fmt.Errorf("refusing %s: %w", c.socket, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		fix := "run as root"
		if c.group != "" {
			fix += " or join group " + c.group
		}
		return fmt.Errorf("%w on %s: %s", ErrPermission, c.socket, fix)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (%s): systemctl status dpsd", ErrNotRunning, dialCause(err))
	}
	return fmt.Errorf("talking to dpsd on %s: %w", c.socket, err)
}

// dialCause is the innermost net.OpError's text ("dial unix /run/…: connect:
// no such file or directory"), without the HTTP client's wrapping.
func dialCause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Error()
	}
	return err.Error()
}
