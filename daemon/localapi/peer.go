package localapi

import (
	"errors"
	"fmt"
	"net"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is who is at the other end of a connection, as the kernel recorded it
// at connect(2) time. It is read once per connection.
type Peer struct {
	UID, GID, PID int
	// Groups holds the primary and supplementary group IDs of the peer.
	Groups []int
	// Err is set when the credentials could not be read; such a peer has no
	// permissions.
	Err error
}

// Perms are what a peer may do, decided once per connection.
type Perms struct {
	// Read: status, enroll-info and check.
	Read bool
	// Token: hub SAS tokens.
	Token bool
	// Admin: reprovision.
	Admin bool
}

// Policy says who gets which permission: root everything, members of the
// socket group read, the [token] allow list tokens.
type Policy struct {
	// SocketGroup is the name (or numeric ID) of the group whose members may
	// read; empty means only root reads.
	SocketGroup string
	// TokenAllow lists users (name or uid) and "@group"s that may get tokens.
	TokenAllow []string
}

// Authorize turns a peer into permission flags. Names are looked up on every
// call so that users and groups created after the daemon started count.
func (p Policy) Authorize(peer Peer) Perms {
	if peer.Err != nil {
		return Perms{}
	}
	if peer.UID == 0 {
		return Perms{Read: true, Token: true, Admin: true}
	}
	var perms Perms
	if gid, ok := lookupGroupID(p.SocketGroup); ok && slices.Contains(peer.Groups, gid) {
		perms.Read = true
	}
	for _, entry := range p.TokenAllow {
		if tokenEntryMatches(entry, peer) {
			perms.Token = true
			break
		}
	}
	return perms
}

// tokenEntryMatches reports whether one [token] allow entry names the peer.
func tokenEntryMatches(entry string, peer Peer) bool {
	if group, ok := strings.CutPrefix(entry, "@"); ok {
		gid, ok := lookupGroupID(group)
		return ok && slices.Contains(peer.Groups, gid)
	}
	uid, ok := lookupUserID(entry)
	return ok && uid == peer.UID
}

// lookupGroupID resolves a group name or numeric ID.
func lookupGroupID(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	if id, err := strconv.Atoi(name); err == nil {
		return id, true
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, false
	}
	id, err := strconv.Atoi(g.Gid)
	return id, err == nil
}

// lookupUserID resolves a user name or numeric ID.
func lookupUserID(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	if id, err := strconv.Atoi(name); err == nil {
		return id, true
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, false
	}
	id, err := strconv.Atoi(u.Uid)
	return id, err == nil
}

// maxPeerGroups bounds the buffer for SO_PEERGROUPS (NGROUPS_MAX).
const maxPeerGroups = 65536

// ReadPeer reads the credentials of the process at the other end of a Unix
// socket connection: SO_PEERCRED for uid, gid and pid, SO_PEERGROUPS for the
// supplementary groups the process really had (which may differ from
// /etc/group, e.g. under systemd's SupplementaryGroups=). On kernels without
// SO_PEERGROUPS the user database stands in.
func ReadPeer(c net.Conn) Peer {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Peer{UID: -1, GID: -1, Err: fmt.Errorf("reading peer credentials: %T is not a Unix socket", c)}
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Peer{UID: -1, GID: -1, Err: fmt.Errorf("reading peer credentials: %w", err)}
	}
	var (
		cred      *unix.Ucred
		groups    []int
		credErr   error
		groupsErr error
	)
	err = raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if credErr == nil {
			groups, groupsErr = peerGroups(fd)
		}
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		return Peer{UID: -1, GID: -1, Err: fmt.Errorf("reading SO_PEERCRED: %w", err)}
	}
	p := Peer{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}
	if errors.Is(groupsErr, unix.ENOPROTOOPT) {
		groups, groupsErr = userDBGroups(p.UID)
	}
	if groupsErr != nil {
		// Without the groups the peer still is who it is: root stays root and
		// a user named in [token] allow keeps tokens; only group grants fail.
		groups = nil
	}
	if !slices.Contains(groups, p.GID) {
		groups = append(groups, p.GID)
	}
	p.Groups = groups
	return p
}

// peerGroups reads SO_PEERGROUPS (Linux 4.13+), growing the buffer when the
// kernel says ERANGE (it then reports the size it needs). x/sys has no
// getter for an array option (GetsockoptString stops at a zero byte), hence
// the raw getsockopt(2).
func peerGroups(fd uintptr) ([]int, error) {
	buf := make([]uint32, 32)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE && int(size/4) > len(buf) && size/4 <= maxPeerGroups {
			buf = make([]uint32, size/4)
			continue
		}
		if errno != 0 {
			return nil, fmt.Errorf("reading SO_PEERGROUPS: %w", errno)
		}
		groups := make([]int, 0, size/4)
		for _, g := range buf[:size/4] {
			groups = append(groups, int(g))
		}
		return groups, nil
	}
}

// userDBGroups is the fallback for kernels without SO_PEERGROUPS.
func userDBGroups(uid int) ([]int, error) {
	u, err := user.LookupId(strconv.Itoa(uid))
	if err != nil {
		return nil, fmt.Errorf("looking up uid %d: %w", uid, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("listing the groups of %s: %w", u.Username, err)
	}
	groups := make([]int, 0, len(ids))
	for _, id := range ids {
		if n, err := strconv.Atoi(id); err == nil {
			groups = append(groups, n)
		}
	}
	return groups, nil
}
