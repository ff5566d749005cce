package localapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// ErrSocketInUse is returned by Listen when something already answers on
// the socket path (another dpsd, most likely).
var ErrSocketInUse = errors.New("another process is serving on the status socket")

// SocketMode is the mode of a socket that dpsd creates itself. Group
// members may connect (0660) and nobody else, unless [token] allow names
// callers: they need not be in the socket's group, so the socket is then
// open to all local users (0666) and the per-connection authorization is
// what keeps the others out (they get 403 with what to do).
func SocketMode(tokenAllow []string) os.FileMode {
	if len(tokenAllow) > 0 {
		return 0o666
	}
	return 0o660
}

// Listen returns the status socket's listener: the one systemd handed over
// (socket activation, dpsd.socket) if any, else a new socket at path with
// the given mode and group. A socket file left by a crash is replaced; one
// that still answers is not (ErrSocketInUse), and a path that is not a
// socket is never removed.
func Listen(path, group string, mode os.FileMode) (net.Listener, error) {
	activated, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("taking the sockets systemd passed: %w", err)
	}
	for _, ln := range activated {
		if ln == nil {
			continue
		}
		if _, ok := ln.(*net.UnixListener); ok {
			return ln, nil
		}
	}
	if len(activated) > 0 {
		return nil, fmt.Errorf("systemd passed %d sockets but no Unix stream socket: check dpsd.socket", len(activated))
	}
	return listenPath(path, group, mode)
}

// listenPath creates the socket at path itself.
func listenPath(path, group string, mode os.FileMode) (net.Listener, error) {
	gid := -1
	if group != "" {
		id, ok := lookupGroupID(group)
		if !ok {
			return nil, fmt.Errorf("socket group %q does not exist: create it (groupadd --system %s) or set [status] group", group, group)
		}
		gid = id
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// Until chmod the socket has the umask's mode; a caller who connects in
	// that instant is still authorized by its credentials, like any other.
	if err := os.Chown(path, -1, gid); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("giving %s to group %s: %w", path, group, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("setting the mode of %s: %w", path, err)
	}
	return ln, nil
}

// staleProbeTimeout bounds the probe of an existing socket file.
const staleProbeTimeout = time.Second

// removeStaleSocket removes a socket file nobody serves on any more.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket: move it away or set [status] socket", path)
	}
	c, err := net.DialTimeout("unix", path, staleProbeTimeout)
	if err == nil {
		_ = c.Close()
		return fmt.Errorf("%s: %w (is dpsd already running? systemctl status dpsd)", path, ErrSocketInUse)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// A full backlog times out: something is there.
		return fmt.Errorf("probing the existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing the stale socket %s: %w", path, err)
	}
	return nil
}
