package localapi_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// The test binary doubles as a hostile or honest client run under another
// uid (see TestMain).
const (
	helperEnv       = "DPSD_LOCALAPI_HELPER"
	helperSocketEnv = "DPSD_LOCALAPI_SOCKET"
	helperCountEnv  = "DPSD_LOCALAPI_COUNT"
)

// Unprivileged uids every Debian system has: nobody, and daemon.
const (
	nobodyUID  = 65534
	daemonUID  = 1
	perUIDCap  = 8
	slowClient = 40
)

// runHelper is the body of a helper process.
func runHelper(mode string) int {
	path := os.Getenv(helperSocketEnv)
	switch mode {
	case "slowloris":
		n, _ := strconv.Atoi(os.Getenv(helperCountEnv))
		return slowloris(path, n)
	case "activated":
		return serveActivated()
	case "impostor":
		return serveImpostor(path)
	case "status":
		st, err := client.New(path, "dpsd").Status(context.Background())
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println("status of", st.DeviceID)
		return 0
	case "token":
		tok, err := client.New(path, "dpsd").Token(context.Background(), 0)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println("token for", tok.DeviceID)
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	return 2
}

// serveActivated plays dpsd started by dpsd.socket: systemd passes the
// listening socket as fd 3 and names this process in LISTEN_PID (set here,
// since only the child knows its pid). It serves until stdin closes.
func serveActivated() int {
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	ln, err := localapi.Listen("/nonexistent/dpsd/status.sock", "no-such-group", 0o600)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	fmt.Println("ready", ln.Addr())
	return serveUntilStdinCloses(ln, provisionedStatus())
}

// serveUntilStdinCloses serves st on ln until the test closes the helper's
// stdin.
func serveUntilStdinCloses(ln net.Listener, st apitype.Status) int {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	if err := localapi.New(localapitest.NewBackend(st), localapi.Options{}).Serve(ctx, ln); err != nil {
		fmt.Println("serve:", err)
		return 1
	}
	return 0
}

// serveImpostor plays a local user who bound the socket path before dpsd
// and answers with a made-up status. It serves until stdin closes.
func serveImpostor(path string) int {
	ln, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("listen:", err)
		return 1
	}
	fake := provisionedStatus()
	fake.DeviceID = "made-up"
	fmt.Println("ready")
	return serveUntilStdinCloses(ln, fake)
}

// slowloris opens n connections, sends each an unfinished request header
// and never finishes it. It says "ready" once all are open, then waits
// until the server has closed every one and reports how many were refused
// at once (503) and how many it held until the server timed them out.
func slowloris(path string, n int) int {
	var conns []net.Conn
	for range n {
		c, err := net.Dial("unix", path)
		if err != nil {
			fmt.Println("dial:", err)
			return 1
		}
		_, _ = io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: "+apitype.SocketHost+"\r\nX-Slow: ")
		conns = append(conns, c)
	}
	fmt.Println("ready")
	var mu sync.Mutex
	refused, held := 0, 0
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			b, _ := io.ReadAll(c)
			mu.Lock()
			defer mu.Unlock()
			if strings.HasPrefix(string(b), "HTTP/1.1 503") {
				refused++
			} else {
				held++
			}
		})
	}
	wg.Wait()
	fmt.Printf("refused=%d held=%d\n", refused, held)
	return 0
}

// helper starts the test binary exe as a helper under uid.
func helper(exe string, uid int, mode, socket string, count int) *exec.Cmd {
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, helperSocketEnv+"="+socket, helperCountEnv+"="+strconv.Itoa(count))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	cmd.Stderr = os.Stderr
	return cmd
}

// TestHostileClients: a local user holding connections open with unfinished
// headers, huge bodies and a flood of idle connections do not keep root or
// other users from being served.
func TestHostileClients(t *testing.T) {
	testenv.RequireRoot(t, "run clients under other uids")
	exe := localapitest.ExecutableForAll(t)
	b := localapitest.NewBackend(provisionedStatus())
	srv := localapi.New(b, localapi.Options{SocketGroup: "root", TokenAllow: []string{strconv.Itoa(daemonUID)}, Log: localapitest.Logger(t)})
	srv.SetLimits(64, perUIDCap, 5*time.Second)
	path := localapitest.Serve(t, srv, 0o666, "")
	c := client.New(path, "dpsd")

	// Slowloris from nobody: only perUIDCap connections are accepted, the
	// rest are refused at once.
	slow := helper(exe, nobodyUID, "slowloris", path, slowClient)
	out, err := slow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Start(); err != nil {
		t.Fatalf("starting the slowloris helper: %v", err)
	}
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("slowloris helper: %q", lines.Text())
	}

	// Meanwhile root is served, and so is another user.
	if _, err := c.Status(context.Background()); err != nil {
		t.Errorf("root's status during slowloris: %v", err)
	}
	tok := helper(exe, daemonUID, "token", path, 0)
	if got, err := tok.Output(); err != nil || !strings.Contains(string(got), "token for dev-1") {
		t.Errorf("another user's token during slowloris: %q, %v", got, err)
	}

	// A huge body is refused before it is read, and the server moves on.
	raw, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(raw, "POST /v1/token HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n", apitype.SocketHost, 1<<30)
	go func() { // keeps sending until the server hangs up
		chunk := make([]byte, 64<<10)
		for {
			if _, err := raw.Write(chunk); err != nil {
				return
			}
		}
	}()
	status, err := bufio.NewReader(raw).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 413") {
		t.Errorf("huge body: %q, %v", status, err)
	}
	raw.Close()

	// A flood of idle connections from root (exempt from the caps).
	var idle []net.Conn
	for range 200 {
		ic, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("idle connection: %v", err)
		}
		idle = append(idle, ic)
	}
	if _, err := c.Status(context.Background()); err != nil {
		t.Errorf("status with 200 idle connections: %v", err)
	}
	for _, ic := range idle {
		ic.Close()
	}

	// Every slow connection was either refused or timed out by the server.
	if !lines.Scan() {
		t.Fatalf("slowloris helper ended without a report: %v", lines.Err())
	}
	var refused, held int
	if _, err := fmt.Sscanf(lines.Text(), "refused=%d held=%d", &refused, &held); err != nil {
		t.Fatalf("slowloris report %q: %v", lines.Text(), err)
	}
	if held > perUIDCap || refused < slowClient-perUIDCap {
		t.Errorf("slowloris: %d held, %d refused; want at most %d held", held, refused, perUIDCap)
	}
	if err := slow.Wait(); err != nil {
		t.Errorf("slowloris helper: %v", err)
	}
	t.Logf("slowloris from uid %d: %d connections held until the header timeout, %d refused at once", nobodyUID, held, refused)
}

// TestSocketActivation: handed a socket by systemd, Listen uses it and
// ignores the configured path and group.
func TestSocketActivation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	f, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=activated", "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	stdin, lines := startServer(t, cmd)
	// The child holds the socket now, as a service holds systemd's.
	f.Close()
	ul.Close()
	if !lines.Scan() || lines.Text() != "ready "+path {
		t.Fatalf("activated helper: %q", lines.Text())
	}
	st, err := client.New(path, "dpsd").Status(context.Background())
	if err != nil || st.DeviceID != "dev-1" {
		t.Errorf("status through the activated socket: %+v, %v", st, err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("activated helper: %v", err)
	}
}

// TestImpostorSocket: a socket served by a user who is neither root nor the
// service user is refused by the client with what to do, before any of its
// answers is believed.
func TestImpostorSocket(t *testing.T) {
	testenv.RequireRoot(t, "serve the socket as another uid")
	exe := localapitest.ExecutableForAll(t)
	const impostorUID = 2001
	// t.TempDir's parent is private to root; the helper must get in.
	dir, err := os.MkdirTemp("", "dpsd-impostor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sockDir := filepath.Join(dir, "run")
	if err := os.Mkdir(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(sockDir, impostorUID, impostorUID); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(sockDir, "status.sock")
	cmd := helper(exe, impostorUID, "impostor", path, 0)
	stdin, lines := startServer(t, cmd)
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
	}()
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("impostor helper: %q", lines.Text())
	}
	st, err := client.New(path, "dpsd").Status(context.Background())
	switch {
	case err == nil:
		t.Fatalf("the client believed a socket served by uid %d: device %q", impostorUID, st.DeviceID)
	case !errors.Is(err, client.ErrImpostor):
		t.Fatalf("error %v does not wrap ErrImpostor", err)
	case !strings.Contains(err.Error(), "uid "+strconv.Itoa(impostorUID)) || !strings.Contains(err.Error(), "restart dpsd"):
		t.Errorf("error %q does not name the uid and the fix", err)
	}
	t.Logf("dpsd status against an impostor: %v", err)
}

// startServer starts a helper that serves until its stdin closes, and
// returns that stdin and the helper's output lines.
func startServer(t *testing.T, cmd *exec.Cmd) (io.WriteCloser, *bufio.Scanner) {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return stdin, bufio.NewScanner(out)
}

// TestStrangersDoNotTakeSlots: users with no permission at all, however
// many and however many connections they hold, take no slot that a reader
// or a token user needs: they are authorized before they are counted.
func TestStrangersDoNotTakeSlots(t *testing.T) {
	testenv.RequireRoot(t, "run clients under other uids")
	exe := localapitest.ExecutableForAll(t)
	srv := localapi.New(localapitest.NewBackend(provisionedStatus()),
		localapi.Options{SocketGroup: "root", TokenAllow: []string{strconv.Itoa(daemonUID)}, Log: localapitest.Logger(t)})
	srv.SetLimits(64, perUIDCap, 5*time.Second)
	path := localapitest.Serve(t, srv, 0o666, "")

	// 8 uids without permission, each up to its cap: 64 connections, all
	// the slots there are when strangers count like everyone else.
	var slow []*exec.Cmd
	for i := range 8 {
		cmd := helper(exe, 3001+i, "slowloris", path, perUIDCap)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, cmd)
		if lines := bufio.NewScanner(out); !lines.Scan() || lines.Text() != "ready" {
			t.Fatalf("slowloris helper %d: %q", i, lines.Text())
		}
	}
	t.Cleanup(func() {
		for _, cmd := range slow {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})

	tok := helper(exe, daemonUID, "token", path, 0)
	if got, err := tok.Output(); err != nil || !strings.Contains(string(got), "token for dev-1") {
		t.Errorf("token user while strangers hold connections: %q, %v", got, err)
	}
	reader := helper(exe, 3100, "status", path, 0)
	reader.SysProcAttr.Credential.Gid = 0 // the socket group of this policy
	if got, err := reader.Output(); err != nil || !strings.Contains(string(got), "status of dev-1") {
		t.Errorf("reader while strangers hold connections: %q, %v", got, err)
	}
}
