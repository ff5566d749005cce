package localapi

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"

	"github.com/dpsd-project/dpsd/daemon/apitype"
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
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if afterBind != nil {
		afterBind(path)
	}
	// Until chmod the socket has the umask's mode; a caller who connects in
	// that instant is still authorized by its credentials, like any other.
	if err := setSocketAccess(path, gid, mode); err != nil {
		_ = ln.Close()
		return nil, err
	}
	return ln, nil
}

// afterBind, when set (by tests), runs between bind and setting the
// socket's group and mode: where an attacker would swap the path.
var afterBind func(path string)

// checkSocketDir refuses a directory in which another user could replace
// the socket with a symlink between bind and chmod (so that dpsd, maybe
// as root, would change the mode of whatever it points to) or take the
// path first: one that group or others may write without the sticky bit,
// or that belongs to anyone but root or this process's user.
func checkSocketDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("inspecting the socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("inspecting the socket directory %s: no owner", dir)
	}
	if uid := int(st.Uid); uid != 0 && uid != os.Geteuid() && !isServiceUser(uid) {
		return fmt.Errorf("the socket directory %s belongs to uid %d, not root or the %s user: use a directory only they may write (set [status] socket)", dir, uid, apitype.ServiceUser)
	}
	if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("the socket directory %s (mode %04o) may be written by other users: chmod go-w %s, or set [status] socket", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// isServiceUser reports whether uid is dpsd.service's user (which owns
// /run/dpsd, even when an admin runs the daemon as root by hand).
func isServiceUser(uid int) bool {
	id, ok := lookupUserID(apitype.ServiceUser)
	return ok && id == uid
}

// setSocketAccess gives the socket at path its group (gid -1: unchanged)
// and mode through a descriptor opened without following a symlink, and
// refuses a path that is no longer a socket: chown and chmod by name would
// follow a symlink that replaced the socket after bind.
func setSocketAccess(path string, gid int, mode os.FileMode) error {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening the socket %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("inspecting the socket %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s is no longer a socket right after dpsd created it (replaced by another user?): refusing to change its owner or mode", path)
	}
	if gid != -1 {
		if err := unix.Fchownat(fd, "", -1, gid, unix.AT_EMPTY_PATH); err != nil {
			return fmt.Errorf("giving %s to gid %d: %w", path, gid, err)
		}
	}
	// Linux has no fchmod for an O_PATH descriptor; its /proc link reaches
	// the very inode it holds, whatever the name points to now.
	if err := os.Chmod("/proc/self/fd/"+strconv.Itoa(fd), mode); err != nil {
		return fmt.Errorf("setting the mode of %s: %w", path, err)
	}
	return nil
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
