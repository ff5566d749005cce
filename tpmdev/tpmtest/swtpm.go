package tpmtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/internal/harness"
	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// SwtpmInfo says where a running swtpm listens and keeps its state.
type SwtpmInfo struct {
	// Socket is the command socket (absolute path); "swtpm:"+Socket is
	// the device value tpmdev.Open and dpsd's config take. Empty for an
	// swtpm on TCP.
	Socket string
	// CtrlSocket is the control socket, Socket+".ctrl": the path tpm2-tss's
	// swtpm TCTI derives from path=Socket.
	CtrlSocket string
	// Addr is the TCP command port ("127.0.0.1:PORT", the control port is
	// PORT+1) of an swtpm started by StartSwtpmTCP; empty otherwise.
	Addr string
	// StateDir holds the TPM's persistent state (NV, seeds).
	StateDir string

	stop func()
}

// Spec is the device value for tpmdev.Open and dpsd's config:
// swtpm:SOCKET, or mssim:HOST:PORT for an swtpm on TCP.
func (i SwtpmInfo) Spec() string {
	if i.Addr != "" {
		return "mssim:" + i.Addr
	}
	return "swtpm:" + i.Socket
}

// TCTI is the tpm2-tss TCTI string that reaches this swtpm, for tests that
// run tpm2-tools against it as other software on the device would.
func (i SwtpmInfo) TCTI() string { return i.tcti() }

// tcti is the tpm2-tss TCTI string that reaches this swtpm.
func (i SwtpmInfo) tcti() string {
	if i.Addr != "" {
		host, port, _ := net.SplitHostPort(i.Addr)
		return "swtpm:host=" + host + ",port=" + port
	}
	return "swtpm:path=" + i.Socket
}

// Stop ends the swtpm process now (test cleanup does it otherwise). The
// state directory stays: StartSwtpm on it again is a reboot of the same TPM.
func (i SwtpmInfo) Stop() {
	if i.stop != nil {
		i.stop()
	}
}

// StartSwtpm starts swtpm on stateDir (created if needed; empty: a new
// temporary one) with its command and control channels on unix sockets, and
// waits until the TPM answers a command: by then swtpm has written the
// TPM's state to stateDir (tpm2-00.permall). swtpm runs with
// not-need-init,startup-clear, so it is ready for commands without power-on
// or TPM2_Startup. It is stopped when the test ends. The sockets live in a
// short temporary directory of their own (unix socket paths are limited to
// 107 bytes).
func StartSwtpm(t testing.TB, stateDir string) SwtpmInfo {
	t.Helper()
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	info := SwtpmInfo{
		Socket:     filepath.Join(sockDir, "tpm.sock"),
		CtrlSocket: filepath.Join(sockDir, "tpm.sock.ctrl"),
	}
	return startSwtpm(t, stateDir, info, "type=unixio,path="+info.Socket, "type=unixio,path="+info.CtrlSocket)
}

// StartSwtpmTCP is StartSwtpm with the command channel on a loopback TCP
// port and the control channel on the next port, the layout the
// reference simulator and tpm2-tss's TCTIs expect (Spec is mssim:ADDR).
func StartSwtpmTCP(t testing.TB, stateDir string) SwtpmInfo {
	t.Helper()
	port := freePortPair(t)
	info := SwtpmInfo{Addr: fmt.Sprintf("127.0.0.1:%d", port)}
	return startSwtpm(t, stateDir, info,
		fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
		fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1))
}

// freePortPair finds a loopback port P with P+1 free as well.
func freePortPair(t testing.TB) int {
	t.Helper()
	for range 50 {
		l1, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l1.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l1.Close()
		if err == nil {
			l2.Close()
			return port
		}
	}
	t.Fatal("no two consecutive free loopback ports")
	return 0
}

func startSwtpm(t testing.TB, stateDir string, info SwtpmInfo, server, ctrl string) SwtpmInfo {
	t.Helper()
	bin := testenv.LookPath(t, "swtpm")
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	stateDir, err := filepath.Abs(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	info.StateDir = stateDir
	p, err := harness.StartSwtpm(bin, info.Spec(), stateDir, server, ctrl)
	if err != nil {
		t.Fatal(err)
	}
	info.stop = func() { _ = p.Stop(10 * time.Second) }
	t.Cleanup(info.stop)
	return info
}

// Swtpm starts a fresh swtpm and opens it as a Device, closed and stopped
// when the test ends.
func Swtpm(t testing.TB) (*tpmdev.Device, SwtpmInfo) {
	t.Helper()
	info := StartSwtpm(t, "")
	dev, err := tpmdev.Open(info.Spec(), Logger(t))
	if err != nil {
		t.Fatalf("opening swtpm: %v", err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Errorf("closing swtpm device: %v", err)
		}
	})
	return dev, info
}

// ClearSwtpm clears the TPM from outside, as an owner would with Debian's
// tpm2-tools: `tpm2_clear -c p` (platform auth, empty on swtpm) through
// tpm2-tss's swtpm TCTI, `swtpm:path=SOCKET` (Debian 12's tpm2-tss 3.2
// reaches unix sockets this way, deriving the control socket as
// SOCKET.ctrl) or `swtpm:host=H,port=P` for StartSwtpmTCP. The Device must
// not be in an operation: swtpm serves one client at a time.
func ClearSwtpm(t testing.TB, info SwtpmInfo) {
	t.Helper()
	bin := testenv.LookPath(t, "tpm2_clear")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := tpm2Tool(ctx, bin, "-c", "p", "-T", info.tcti()); err != nil {
		t.Fatalf("tpm2_clear -c p -T %s: %v: %s", info.tcti(), err, out)
	}
}

// tpm2Tool runs a tpm2-tools program and returns its combined output.
func tpm2Tool(ctx context.Context, bin string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	// Only the TCTI given in args: no stray TPM2TOOLS_TCTI from the environment.
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=")
	return cmd.CombinedOutput()
}

// LeaveObjects loads n transient objects into the swtpm from outside and
// leaves them there, as tpm2-tools do without a resource manager
// (`tpm2_createprimary -C n -G ecc -c FILE` saves the object's context and
// exits without flushing it), or as a TPM client killed mid-operation
// does. swtpm has room for three. The Device must not be in an operation.
func LeaveObjects(t testing.TB, info SwtpmInfo, n int) {
	t.Helper()
	bin := testenv.LookPath(t, "tpm2_createprimary")
	dir := t.TempDir()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := tpm2Tool(ctx, bin, "-C", "n", "-G", "ecc", "-c", filepath.Join(dir, fmt.Sprintf("%d.ctx", i)), "-T", info.tcti())
		cancel()
		if err != nil {
			t.Fatalf("tpm2_createprimary -T %s: %v: %s", info.tcti(), err, out)
		}
	}
}
