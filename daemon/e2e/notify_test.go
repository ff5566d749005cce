package e2e

import (
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// notifySocket stands in for systemd's NOTIFY_SOCKET and keeps every
// message the daemon sends.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify")}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) messages() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

// index is the position of the first message with the prefix, or -1.
func (n *notifySocket) index(prefix string) int {
	for i, m := range n.messages() {
		if strings.HasPrefix(m, prefix) {
			return i
		}
	}
	return -1
}

// TestSystemdNotifications runs the daemon as systemd would, while DPS is
// unreachable: it must say READY (it serves its status) without being
// provisioned, explain every phase in STATUS=, feed the watchdog, and say
// STOPPING on SIGTERM.
func TestSystemdNotifications(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[hub]\nverify = false\n")
	d.enroll(nil)
	emu.stop() // DPS down

	n := listenNotify(t)
	d.env = []string{"NOTIFY_SOCKET=" + n.path, "WATCHDOG_USEC=200000"}
	d.start()
	testenv.WaitUntil(t, "READY=1", func() bool { return n.index("READY=1") >= 0 })
	testenv.WaitUntil(t, "a failed attempt in STATUS", func() bool { return n.index("STATUS=failed") >= 0 })
	testenv.WaitUntil(t, "WATCHDOG=1", func() bool { return n.index("WATCHDOG=1") >= 0 })
	if s, ok := d.status(); !ok || s.State == "provisioned" {
		t.Errorf("status while DPS is down: %+v (answered %v)", s, ok)
	}
	if i, j := n.index("STATUS=registering"), n.index("READY=1"); i < 0 || j < 0 || j > i {
		t.Errorf("READY=1 at %d, registering at %d: READY must come once the TPM is usable, before registering\n%q", j, i, n.messages())
	}
	d.stop()
	if n.index("STOPPING=1") < 0 {
		t.Errorf("no STOPPING=1 on SIGTERM: %q", n.messages())
	}
}

// TestWaitingForTPM: a TPM device that is not there (a module that loads
// late, a missing udev rule) is waited for; meanwhile the daemon is up and
// says why it waits.
func TestWaitingForTPM(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	d := newDevice(t, emu, "[tpm]\ndevice = \"/dev/tpmrm-not-here\"\n")
	n := listenNotify(t)
	d.env = []string{"NOTIFY_SOCKET=" + n.path}
	d.start()
	s := d.waitFor("waiting-for-tpm", func(s apitype.Status) bool { return s.State == apitype.PhaseWaitingForTPM })
	if s.LastError == nil || !strings.Contains(*s.LastError, "/dev/tpmrm-not-here") {
		t.Errorf("lastError %v does not name the device", s.LastError)
	}
	testenv.WaitUntil(t, "READY=1", func() bool { return n.index("READY=1") >= 0 })
	if !d.running() {
		t.Fatal("dpsd exited without a TPM")
	}
}
