// Package e2e runs the real dpsd binary against a real swtpm and the
// project's emulator (dpsemu) over loopback TLS, the way a device and the
// cloud meet in the field. Nothing here is mocked.
package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/harness"
	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// The binaries under test, built once by TestMain.
var dpsdBin, dpsemuBin string

// dpsdTags are the build tags of the shipped dpsd (the Makefile's
// DPSD_BUILD): without net/http's HTTP/2.
const dpsdTags = "nethttpomithttp2"

const idScope = "0ne00E2E0A"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dpsd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dpsdBin, dpsemuBin = filepath.Join(dir, "dpsd"), filepath.Join(dir, "dpsemu")
	for _, b := range []struct{ out, pkg, cgo, tags string }{
		{dpsdBin, "github.com/dpsd-project/dpsd/cmd/dpsd", "0", dpsdTags}, // as shipped: pure Go
		{dpsemuBin, "github.com/dpsd-project/dpsd/cmd/dpsemu", "0", ""},
	} {
		cmd := exec.Command("go", "build", "-tags", b.tags, "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", b.pkg, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// emulator is a dpsemu process.
type emulator struct {
	t               *testing.T
	dir             string
	proc            *harness.Dpsemu
	log             *testenv.Buffer
	dps, hub, admin string
	dpsListen       string
	hubs            []string
}

// startEmulator runs dpsemu with its state in dir; dpsListen may name a
// fixed port (to restart DPS where the device expects it).
func startEmulator(t *testing.T, dir, dpsListen string) *emulator {
	t.Helper()
	if dpsListen == "" {
		dpsListen = "127.0.0.1:0"
	}
	e := &emulator{t: t, dir: dir, dpsListen: dpsListen,
		hubs: []string{"hub-one.azure-devices.example", "hub-two.azure-devices.example"}}
	p, err := harness.StartDpsemu(dpsemuBin, "--dir", dir, "--id-scope", idScope, "--hub", strings.Join(e.hubs, ","),
		"--dps-listen", dpsListen, "--hub-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.proc, e.log = p, p.Log
	e.dps, e.hub, e.admin = p.DPS, p.Hub, p.Admin
	t.Cleanup(e.stop)
	return e
}

func (e *emulator) stop() {
	select {
	case <-e.proc.Exited():
		return // stopped before
	default:
	}
	if err := e.proc.Stop(20 * time.Second); errors.Is(err, harness.ErrKilled) {
		e.t.Errorf("dpsemu: %v", err)
	}
	if e.t.Failed() {
		e.t.Logf("dpsemu log:\n%s", e.log)
	}
}

// call sends one admin API request and decodes a JSON answer into out.
func (e *emulator) call(method, path string, body, out any) int {
	e.t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+e.admin+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			e.t.Fatalf("admin %s %s: decoding %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// stats returns the emulator's request counters.
func (e *emulator) stats() map[string]int {
	e.t.Helper()
	var s map[string]int
	if code := e.call("GET", "/stats", nil, &s); code != 200 {
		e.t.Fatalf("GET /stats: %d", code)
	}
	return s
}

// faults sets the emulator's fault injection.
func (e *emulator) faults(dps map[string]any) {
	e.t.Helper()
	if code := e.call("PUT", "/faults", map[string]any{"dps": dps}, nil); code >= 300 {
		e.t.Fatalf("PUT /faults: %d", code)
	}
}

// device is a dpsd installation: a swtpm, a config and a state dir, and the
// daemon process when it runs.
type device struct {
	t       *testing.T
	dir     string
	cfgPath string
	socket  string
	state   string
	tpm     tpmtest.SwtpmInfo
	emu     *emulator
	proc    *harness.Process // the running daemon, nil when stopped
	log     *testenv.Buffer
	// bin, when set, is the dpsd binary `run` starts instead of dpsdBin.
	bin string
	// env is added to the daemon's environment.
	env []string
}

// newDevice makes a device with a fresh swtpm, configured for emu. extra
// is a config drop-in (config.d/50-test.toml), as an image builder would
// ship one.
func newDevice(t *testing.T, emu *emulator, extra string) *device {
	t.Helper()
	dir := t.TempDir()
	d := &device{t: t, dir: dir, emu: emu, log: &testenv.Buffer{},
		cfgPath: filepath.Join(dir, "config.toml"),
		socket:  filepath.Join(dir, "status.sock"),
		state:   filepath.Join(dir, "state")}
	d.tpm = tpmtest.StartSwtpm(t, filepath.Join(dir, "tpm"))
	d.writeConfig(extra)
	return d
}

func (d *device) writeConfig(extra string) {
	d.t.Helper()
	cfg := fmt.Sprintf(`[provisioning]
global_endpoint = "https://%s"
id_scope = %q

[tpm]
device = %q
check_interval = "1s"

[hub]
endpoint_override = %q

[network]
ca_file = %q
timeout = "5s"

[status]
socket = %q
group = "root"

[state]
dir = %q
`, d.emu.dpsListenAddr(), idScope, d.tpm.Spec(), d.emu.hub, filepath.Join(d.emu.dir, "ca.pem"), d.socket, d.state)
	if err := os.WriteFile(d.cfgPath, []byte(cfg), 0o644); err != nil {
		d.t.Fatal(err)
	}
	dropins := filepath.Join(d.dir, "config.d")
	if err := os.MkdirAll(dropins, 0o755); err != nil {
		d.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dropins, "50-test.toml"), []byte(extra), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// dpsListenAddr is where the device finds DPS, stable across emulator
// restarts on a fixed port.
func (e *emulator) dpsListenAddr() string {
	if e.dps != "" {
		return e.dps
	}
	return e.dpsListen
}

// cli runs a client verb of dpsd and returns its stdout and exit code.
func (d *device) cli(args ...string) (string, string, int) {
	d.t.Helper()
	cmd := exec.Command(dpsdBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			d.t.Fatalf("dpsd %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// enroll registers the device's EK with the emulator, as an operator does
// with the output of `dpsd enroll-info` on the factory line.
func (d *device) enroll(extra map[string]any) apitype.EnrollInfo {
	d.t.Helper()
	out, errOut, code := d.cli("enroll-info", "--json", "--config", d.cfgPath)
	if code != 0 {
		d.t.Fatalf("dpsd enroll-info: exit %d: %s", code, errOut)
	}
	var info apitype.EnrollInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		d.t.Fatalf("enroll-info --json: %v: %q", err, out)
	}
	body := map[string]any{
		"registrationId": info.RegistrationID,
		"attestation":    map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": info.EndorsementKey}},
	}
	for k, v := range extra {
		body[k] = v
	}
	if code := d.emu.call("PUT", "/enrollments/"+info.RegistrationID, body, nil); code >= 300 {
		d.t.Fatalf("PUT enrollment: %d", code)
	}
	return info
}

// start runs `dpsd run` with extra arguments, if any.
func (d *device) start(args ...string) {
	d.t.Helper()
	bin := dpsdBin
	if d.bin != "" {
		bin = d.bin
	}
	d.startCmd(exec.Command(bin, append([]string{"run", "--config", d.cfgPath}, args...)...))
}

// startCmd runs cmd as the device's daemon process.
func (d *device) startCmd(cmd *exec.Cmd) {
	d.t.Helper()
	cmd.Env = append(os.Environ(), d.env...)
	cmd.Stdout, cmd.Stderr = d.log, d.log
	p, err := harness.Start(cmd)
	if err != nil {
		d.t.Fatal(err)
	}
	d.proc = p
	d.t.Cleanup(d.kill)
}

// running reports whether the daemon process is still alive.
func (d *device) running() bool {
	select {
	case <-d.proc.Exited():
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (d *device) stop() {
	d.t.Helper()
	if d.proc == nil {
		return
	}
	if err := d.proc.Stop(20 * time.Second); err != nil {
		d.t.Errorf("dpsd did not stop cleanly: %v\n%s", err, d.log)
	}
	d.proc = nil
}

// kill is a power cut: SIGKILL, no cleanup.
func (d *device) kill() {
	if d.proc == nil {
		return
	}
	d.proc.Kill()
	d.proc = nil
	if d.t.Failed() {
		d.t.Logf("dpsd log:\n%s", d.log)
	}
}

// status asks the daemon through `dpsd status --json`.
func (d *device) status() (apitype.Status, bool) {
	out, _, code := d.cli("status", "--json", "--socket", d.socket)
	if code != 0 {
		return apitype.Status{}, false
	}
	var s apitype.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		d.t.Fatalf("status --json: %v: %q", err, out)
	}
	return s, true
}

// waitFor polls the status until cond holds; the deadline only bounds a
// broken run, it is not a performance assertion.
func (d *device) waitFor(what string, cond func(apitype.Status) bool) apitype.Status {
	d.t.Helper()
	var last apitype.Status
	held := testenv.Poll(func() bool {
		if d.proc != nil && !d.running() {
			d.t.Fatalf("dpsd exited while waiting for %s\n%s", what, d.log)
		}
		s, ok := d.status()
		if ok {
			last = s
		}
		return ok && cond(s)
	})
	if !held {
		d.t.Fatalf("timed out waiting for %s; last status %+v\n%s", what, last, d.log)
	}
	return last
}

func (d *device) waitProvisioned() apitype.Status {
	d.t.Helper()
	return d.waitFor("provisioned", func(s apitype.Status) bool { return s.State == apitype.PhaseProvisioned })
}

// record reads the daemon's state.json.
func (d *device) record() map[string]any {
	d.t.Helper()
	raw, err := os.ReadFile(filepath.Join(d.state, "state.json"))
	if err != nil {
		d.t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		d.t.Fatal(err)
	}
	return m
}

// fileSnapshot is the identity of every file under a dir, to show that a
// start wrote nothing.
func fileSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		snap[p] = fmt.Sprintf("ino=%d mtime=%d size=%d", st.Ino, fi.ModTime().UnixNano(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// token asks the daemon for a hub token (`dpsd token --json`).
func (d *device) token(args ...string) apitype.Token {
	d.t.Helper()
	out, errOut, code := d.cli(append([]string{"token", "--json", "--socket", d.socket}, args...)...)
	if code != 0 {
		d.t.Fatalf("dpsd token: exit %d: %s", code, errOut)
	}
	var tok apitype.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		d.t.Fatalf("dpsd token --json: %v: %q", err, out)
	}
	return tok
}

// stuckReregistration asks for a re-registration that DPS accepts but
// never assigns, and returns the identity key the device had before.
func (d *device) stuckReregistration() []byte {
	d.t.Helper()
	old, err := os.ReadFile(filepath.Join(d.state, "identity.key"))
	if err != nil {
		d.t.Fatal(err)
	}
	d.emu.faults(map[string]any{"assignAfterPolls": 1000})
	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		d.t.Fatalf("dpsd reprovision: %d %s", code, errOut)
	}
	d.waitFor("the registration accepted", func(s apitype.Status) bool { return s.State == apitype.PhaseAssigning })
	return old
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
