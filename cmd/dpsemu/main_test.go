package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as dpsemu when this variable is set, so the tests
// run the real main in a real process (signals, stdout, exit code).
const runMainEnv = "DPSEMU_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// startMain starts the binary with args; stdout is piped, stderr collected.
func startMain(t *testing.T, args ...string) (*exec.Cmd, *bufio.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A safety net, not an assertion: never leave a hung child behind.
	kill := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })
	t.Cleanup(func() { kill.Stop(); cmd.Process.Kill() })
	return cmd, bufio.NewReader(out), &stderr
}

// TestReadyLineAndSIGTERM: one JSON line with three loopback addresses, a
// CA in --dir, a working admin API, and exit 0 on SIGTERM.
func TestReadyLineAndSIGTERM(t *testing.T) {
	dir := t.TempDir()
	cmd, out, stderr := startMain(t, "--dir", dir, "--id-scope", "0ne00000A0A", "--hub", "a.example,b.example",
		"--dps-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	line, err := out.ReadString('\n')
	if err != nil {
		cmd.Wait()
		t.Fatalf("reading the ready line: %v; stderr:\n%s", err, stderr)
	}
	var addrs map[string]string
	if err := json.Unmarshal([]byte(line), &addrs); err != nil || len(addrs) != 3 {
		t.Fatalf("ready line %q: %v", line, err)
	}
	for _, k := range []string{"dps", "hub", "admin"} {
		host, port, err := net.SplitHostPort(addrs[k])
		if err != nil || host != "127.0.0.1" || port == "0" {
			t.Errorf("%s address %q", k, addrs[k])
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err != nil {
		t.Errorf("ca.pem: %v", err)
	}
	resp, err := http.Get("http://" + addrs["admin"] + "/stats")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /stats: %d", resp.StatusCode)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v; stderr:\n%s", err, stderr)
	}
	if rest, _ := out.ReadString('\n'); rest != "" {
		t.Errorf("more than one line on stdout: %q", rest)
	}
}

// TestBadInvocations: usage errors exit 2, configuration errors exit 1
// with a message naming the problem, and nothing is printed on stdout.
func TestBadInvocations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		code    int
		mention string
	}{
		{"unknown flag", []string{"--nope"}, 2, "nope"},
		{"stray argument", []string{"--dir", "d", "extra"}, 2, "extra"},
		{"no hub", []string{"--dir", "DIR", "--id-scope", "s"}, 1, "--hub"},
		{"public admin", []string{"--dir", "DIR", "--id-scope", "s", "--hub", "h", "--admin-listen", "0.0.0.0:0"}, 1, "loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			for i, a := range args {
				if a == "DIR" {
					args[i] = t.TempDir()
				}
			}
			cmd, out, stderr := startMain(t, args...)
			rest, _ := out.ReadString('\n')
			err := cmd.Wait()
			exit, ok := err.(*exec.ExitError)
			if !ok || exit.ExitCode() != tc.code {
				t.Fatalf("exit %v, want code %d; stderr:\n%s", err, tc.code, stderr)
			}
			if rest != "" || !strings.Contains(stderr.String(), tc.mention) {
				t.Errorf("stdout %q; stderr %q should mention %q", rest, stderr, tc.mention)
			}
		})
	}
}
