// Command bench measures the real dpsd binary the way a device meets it:
// against swtpm and dpsemu on loopback, cold (a fresh TPM, first boot) and
// warm (a restart of a provisioned device), several runs each. It prints a
// table (median, min, max) and writes the JSON that docs/design.md fixes
// (make bench):
//
//	go run ./scripts/bench -dpsd bin/dpsd -dpsemu bin/dpsemu -cross bin -out dist/bench.json
//
// Times are taken from the process start to the daemon's own sd_notify
// messages on a NOTIFY_SOCKET the bench binds: STATUS=provisioned… for the
// cold provisioning, READY=1 for the warm start.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/internal/harness"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

const idScope = "0ne00BE4C8"

// hubs are the hub names dpsemu allocates to; endpoint_override sends the
// daemon to the emulator's MQTT listener whatever the name.
var hubs = []string{"hub-bench.azure-devices.example"}

type options struct {
	dpsd, dpsemu, swtpm, cross, out string
	runs                            int
	idle, timeout                   time.Duration
	retryAfter                      int
}

func main() {
	var o options
	flag.StringVar(&o.dpsd, "dpsd", "bin/dpsd", "the dpsd binary to measure (make build: CGO_ENABLED=0, stripped)")
	flag.StringVar(&o.dpsemu, "dpsemu", "bin/dpsemu", "the dpsemu binary")
	flag.StringVar(&o.swtpm, "swtpm", "swtpm", "the swtpm program")
	flag.StringVar(&o.cross, "cross", "bin", "directory with linux-{amd64,arm64,armhf}/dpsd (make cross) for binary_bytes")
	flag.StringVar(&o.out, "out", "dist/bench.json", "where to write the JSON")
	flag.IntVar(&o.runs, "runs", 5, "devices to measure: each is one cold and one warm start")
	flag.DurationVar(&o.idle, "idle", time.Minute, "idle time after the first cold provisioning, for rss_kib")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "bound on one start (a broken run, not a measurement)")
	flag.IntVar(&o.retryAfter, "retry-after", 1, "Retry-After seconds dpsemu asks for (production DPS sends 3)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	for _, p := range []*string{&o.dpsd, &o.dpsemu} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%w (make build makes it)", err)
		}
		*p = abs
	}
	swtpm, err := exec.LookPath(o.swtpm)
	if err != nil {
		return fmt.Errorf("%w (scripts/install-deps.sh test installs swtpm)", err)
	}
	o.swtpm = swtpm
	sizes, err := binarySizes(o.cross)
	if err != nil {
		return err
	}

	work, err := os.MkdirTemp("", "dpsd-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	emu, err := startEmulator(o, filepath.Join(work, "emu"))
	if err != nil {
		return err
	}
	defer emu.stop()

	var colds []cold
	var warms, quiet []warm
	for i := range o.runs {
		idle := time.Duration(0)
		if i == 0 {
			idle = o.idle
		}
		c, w, q, err := measureDevice(o, emu, filepath.Join(work, fmt.Sprintf("dev%d", i)), idle)
		if err != nil {
			return fmt.Errorf("run %d: %w\ndpsemu log:\n%s", i+1, err, tail(emu.Log.String(), 40))
		}
		fmt.Fprintf(os.Stderr, "run %d: cold %.1f ms (%d TPM commands, %d DPS requests), warm READY %.1f ms (%d TPM commands, %d files written), without the hub check %.1f ms (%d TPM commands)\n",
			i+1, c.provisionMS, c.tpmCommands, c.dpsRequests, w.readyMS, w.tpmCommands, w.filesWritten, q.readyMS, q.tpmCommands)
		colds = append(colds, c)
		warms = append(warms, w)
		quiet = append(quiet, q)
	}

	r := summarize(o, colds, warms, quiet, sizes)
	r.print(os.Stdout, o)
	if err := os.MkdirAll(filepath.Dir(o.out), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s\n", o.out)
	return nil
}

// cold is one first boot on a fresh TPM.
type cold struct {
	provisionMS float64 // process start to STATUS=provisioned
	readyMS     float64 // process start to READY=1 (after the hub check)
	tpmCommands int     // the daemon's counter at READY
	dpsRequests int     // emulator requests during the boot
	dpsPolls    int     // of which operation polls (each waits Retry-After)
	hwmKiB      int     // VmHWM when settled
	anonKiB     int     // RssAnon when settled: heap, stacks
	fileKiB     int     // RssFile when settled: the binary's pages in use
	idleHWMKiB  int     // VmHWM after the idle time (first run only)
}

// warm is one restart of a provisioned device.
type warm struct {
	readyMS     float64
	tpmCommands int // at READY, from the daemon's "dpsd is up" log line
	// tpmCommandsSettled: once the start has done everything (the hub
	// check and the ownership read come after READY).
	tpmCommandsSettled int
	dpsRequests        int
	filesWritten       int
	hwmKiB             int
}

// measureDevice makes a device (swtpm, config, enrollment), boots it cold
// and then warm twice: as configured by default (the hub check on) and
// with [hub] verify = false.
func measureDevice(o options, emu *emulator, dir string, idle time.Duration) (cold, warm, warm, error) {
	d := &device{o: o, emu: emu, dir: dir,
		tpmDir: filepath.Join(dir, "tpm"), state: filepath.Join(dir, "state"),
		socket: filepath.Join(dir, "status.sock"), cfg: filepath.Join(dir, "config.toml")}
	if err := os.MkdirAll(d.tpmDir, 0o700); err != nil {
		return cold{}, warm{}, warm{}, err
	}
	defer d.stopTPM()
	if err := d.enroll(); err != nil {
		return cold{}, warm{}, warm{}, fmt.Errorf("enrolling: %w", err)
	}
	c, err := d.cold(idle)
	if err != nil {
		return cold{}, warm{}, warm{}, fmt.Errorf("cold start: %w", err)
	}
	w, err := d.warm(true)
	if err != nil {
		return cold{}, warm{}, warm{}, fmt.Errorf("warm start: %w", err)
	}
	wq, err := d.warm(false)
	if err != nil {
		return cold{}, warm{}, warm{}, fmt.Errorf("warm start without the hub check: %w", err)
	}
	return c, w, wq, nil
}

// device is one dpsd installation: swtpm, config, state dir, socket.
type device struct {
	o                               options
	emu                             *emulator
	dir, tpmDir, state, socket, cfg string
	tpm                             *harness.Process
}

// enroll puts the device's EK into the emulator from `dpsd enroll-info`.
// enroll-info persists the EK it reads, so the TPM's state is saved before
// and put back after: the cold boot then starts on a TPM with no EK, as a
// device does, and creates the same EK (same endorsement seed).
func (d *device) enroll() error {
	if err := d.startTPM(); err != nil {
		return err
	}
	// swtpm has written the manufactured TPM's state once it answers.
	perm := filepath.Join(d.tpmDir, "tpm2-00.permall")
	fresh, err := os.ReadFile(perm)
	if err != nil {
		return fmt.Errorf("reading the fresh TPM state: %w", err)
	}
	if err := d.writeConfig(""); err != nil {
		return err
	}
	out, err := exec.Command(d.o.dpsd, "enroll-info", "--json", "--config", d.cfg).Output()
	if err != nil {
		return fmt.Errorf("dpsd enroll-info: %w", exitDetail(err))
	}
	var info apitype.EnrollInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("enroll-info --json %q: %w", out, err)
	}
	body := map[string]any{
		"registrationId":     info.RegistrationID,
		"attestation":        map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": info.EndorsementKey}},
		"provisioningStatus": "enabled",
	}
	if err := d.emu.call("PUT", "/enrollments/"+info.RegistrationID, body, nil); err != nil {
		return err
	}
	d.stopTPM()
	if err := os.WriteFile(perm, fresh, 0o600); err != nil {
		return err
	}
	return d.startTPM()
}

// writeConfig writes the device's config; extra goes into [hub].
func (d *device) writeConfig(hubExtra string) error {
	cfg := fmt.Sprintf(`[provisioning]
global_endpoint = "https://%s"
id_scope = %q

[tpm]
device = "swtpm:%s"

[hub]
endpoint_override = %q
%s

[network]
ca_file = %q

[status]
socket = %q
group = "root"

[state]
dir = %q
`, d.emu.DPS, idScope, d.tpmSocket(), d.emu.Hub, hubExtra, filepath.Join(d.emu.dir, "ca.pem"), d.socket, d.state)
	return os.WriteFile(d.cfg, []byte(cfg), 0o644)
}

func (d *device) tpmSocket() string { return filepath.Join(d.dir, "tpm.sock") }

func (d *device) startTPM() error {
	sock := d.tpmSocket()
	p, err := harness.StartSwtpm(d.o.swtpm, "swtpm:"+sock, d.tpmDir, "type=unixio,path="+sock, "type=unixio,path="+sock+".ctrl")
	if err != nil {
		return err
	}
	d.tpm = p
	return nil
}

func (d *device) stopTPM() {
	if d.tpm != nil {
		_ = d.tpm.Stop(5 * time.Second)
		d.tpm = nil
	}
}

// daemon is a running `dpsd run` and its sd_notify messages.
type daemon struct {
	proc  *harness.Process
	start time.Time
	ln    *net.UnixConn

	mu    sync.Mutex
	notes []note        // every message so far, in order
	more  chan struct{} // closed and replaced when a message arrives
}

type note struct {
	at  time.Time
	msg string
}

func (d *device) startDaemon() (*daemon, error) {
	notify := filepath.Join(d.dir, "notify.sock")
	os.Remove(notify)
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("binding NOTIFY_SOCKET: %w", err)
	}
	p := &daemon{ln: ln, more: make(chan struct{})}
	go p.receive()
	cmd := exec.Command(d.o.dpsd, "run", "--config", d.cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify)
	p.start = time.Now()
	if p.proc, err = harness.Start(cmd); err != nil {
		ln.Close()
		return nil, err
	}
	return p, nil
}

// receive keeps every sd_notify message with its arrival time.
func (p *daemon) receive() {
	buf := make([]byte, 4096)
	for {
		n, err := p.ln.Read(buf)
		if err != nil {
			return
		}
		at := time.Now()
		p.mu.Lock()
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if line != "" {
				p.notes = append(p.notes, note{at, line})
			}
		}
		close(p.more)
		p.more = make(chan struct{})
		p.mu.Unlock()
	}
}

// waitNote waits for the first message that starts with prefix (it may
// have come already) and returns its time from the process start.
func (p *daemon) waitNote(prefix string, timeout time.Duration) (time.Duration, error) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, n := range p.notes {
			if strings.HasPrefix(n.msg, prefix) {
				p.mu.Unlock()
				return n.at.Sub(p.start), nil
			}
		}
		more := p.more
		p.mu.Unlock()
		select {
		case <-more:
		case <-p.proc.Exited():
			return 0, fmt.Errorf("dpsd exited (%v) before %q:\n%s", p.proc.Err(), prefix, tail(p.log().String(), 40))
		case <-deadline:
			return 0, fmt.Errorf("no %q within %v:\n%s", prefix, timeout, tail(p.log().String(), 40))
		}
	}
}

// hwm is the daemon's peak resident set (VmHWM) in KiB.
func (p *daemon) hwm() (int, error) { return p.memory("VmHWM") }

// memory reads one of the KiB figures of /proc/PID/status.
func (p *daemon) memory(field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.proc.Pid()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/PID/status", field)
}

// stop sends SIGTERM and waits for a clean exit; later calls return the
// first one's result.
func (p *daemon) stop() error {
	err := p.proc.Stop(20 * time.Second)
	p.ln.Close()
	if err != nil {
		return fmt.Errorf("dpsd did not stop cleanly: %w\n%s", err, tail(p.log().String(), 20))
	}
	return nil
}

// log is the daemon's output.
func (p *daemon) log() *testenv.Buffer { return p.proc.Log }

func (d *device) status() (apitype.Status, error) {
	out, err := exec.Command(d.o.dpsd, "status", "--json", "--socket", d.socket).Output()
	if err != nil {
		return apitype.Status{}, fmt.Errorf("dpsd status: %w", exitDetail(err))
	}
	var s apitype.Status
	if err := json.Unmarshal(out, &s); err != nil {
		return apitype.Status{}, fmt.Errorf("status --json %q: %w", out, err)
	}
	return s, nil
}

// settled waits until a start has done all it does: provisioned and, with
// hub, the credential checked against the hub. The TPM command counter is
// read then, so it counts the whole start.
func (d *device) settled(p *daemon, hub bool) (apitype.Status, error) {
	deadline := time.Now().Add(d.o.timeout)
	for {
		s, err := d.status()
		if err == nil && s.State == apitype.PhaseProvisioned && (!hub || s.Hub.Result != "") {
			if hub && s.Hub.Result != apitype.HubOK {
				return s, fmt.Errorf("hub check: %s %s", s.Hub.Result, s.Hub.Error)
			}
			return s, nil
		}
		if time.Now().After(deadline) {
			return s, fmt.Errorf("not settled within %v: status %+v (%v)\n%s", d.o.timeout, s, err, tail(p.log().String(), 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *device) cold(idle time.Duration) (cold, error) {
	before, err := d.emu.stats()
	if err != nil {
		return cold{}, err
	}
	p, err := d.startDaemon()
	if err != nil {
		return cold{}, err
	}
	defer p.stop()
	var c cold
	prov, err := p.waitNote("STATUS=provisioned", d.o.timeout)
	if err != nil {
		return c, err
	}
	ready, err := p.waitNote("READY=1", d.o.timeout)
	if err != nil {
		return c, err
	}
	c.provisionMS, c.readyMS = ms(prov), ms(ready)
	s, err := d.settled(p, true)
	if err != nil {
		return c, err
	}
	c.tpmCommands = s.TPM.Commands
	after, err := d.emu.stats()
	if err != nil {
		return c, err
	}
	c.dpsRequests = after["total"] - before["total"]
	c.dpsPolls = after["poll"] - before["poll"]
	if c.hwmKiB, err = p.hwm(); err != nil {
		return c, err
	}
	if c.anonKiB, err = p.memory("RssAnon"); err != nil {
		return c, err
	}
	if c.fileKiB, err = p.memory("RssFile"); err != nil {
		return c, err
	}
	if idle > 0 {
		fmt.Fprintf(os.Stderr, "idling %v for rss_kib\n", idle)
		time.Sleep(idle)
		if c.idleHWMKiB, err = p.hwm(); err != nil {
			return c, err
		}
	}
	return c, p.stop()
}

// warm restarts the provisioned device, with or without the hub check.
func (d *device) warm(verify bool) (warm, error) {
	extra := ""
	if !verify {
		extra = "verify = false"
	}
	if err := d.writeConfig(extra); err != nil {
		return warm{}, err
	}
	snap, err := snapshot(d.state)
	if err != nil {
		return warm{}, err
	}
	before, err := d.emu.stats()
	if err != nil {
		return warm{}, err
	}
	p, err := d.startDaemon()
	if err != nil {
		return warm{}, err
	}
	defer p.stop()
	var w warm
	ready, err := p.waitNote("READY=1", d.o.timeout)
	if err != nil {
		return w, err
	}
	w.readyMS = ms(ready)
	s, err := d.settled(p, verify)
	if err != nil {
		return w, err
	}
	w.tpmCommandsSettled = s.TPM.Commands
	if w.hwmKiB, err = p.hwm(); err != nil {
		return w, err
	}
	if err := p.stop(); err != nil {
		return w, err
	}
	if w.tpmCommands, err = readyCommands(p.log().String()); err != nil {
		return w, err
	}
	after, err := d.emu.stats()
	if err != nil {
		return w, err
	}
	w.dpsRequests = after["total"] - before["total"]
	now, err := snapshot(d.state)
	if err != nil {
		return w, err
	}
	w.filesWritten = changed(snap, now)
	return w, nil
}

// snapshot is the identity of every entry under dir (the dir included:
// creating or removing a file writes the directory too).
func snapshot(dir string) (map[string]string, error) {
	snap := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		snap[p] = fmt.Sprintf("ino=%d mtime=%d size=%d mode=%v", st.Ino, fi.ModTime().UnixNano(), fi.Size(), fi.Mode())
		return nil
	})
	return snap, err
}

// changed counts the entries created, removed or modified between two
// snapshots.
func changed(before, after map[string]string) int {
	n := 0
	for p, id := range after {
		if before[p] != id {
			n++
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			n++
		}
	}
	return n
}

// emulator is a dpsemu process.
type emulator struct {
	*harness.Dpsemu
	dir string
}

func startEmulator(o options, dir string) (*emulator, error) {
	// One poll answered "assigned": the one wait the protocol forces is
	// the Retry-After the emulator asks for.
	p, err := harness.StartDpsemu(o.dpsemu, "--dir", dir, "--id-scope", idScope, "--hub", strings.Join(hubs, ","),
		"--dps-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--assign-after-polls", "0", "--retry-after", strconv.Itoa(o.retryAfter), "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	return &emulator{Dpsemu: p, dir: dir}, nil
}

func (e *emulator) stop() { _ = e.Stop(5 * time.Second) }

// call sends one admin API request and decodes a JSON answer into out.
func (e *emulator) call(method, path string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+e.Admin+path, r)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("dpsemu %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("dpsemu %s %s: %s: %s", method, path, resp.Status, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

func (e *emulator) stats() (map[string]int, error) {
	var s map[string]int
	return s, e.call("GET", "/stats", nil, &s)
}

// binarySizes reads the stripped cross builds of make cross.
func binarySizes(dir string) (map[string]int64, error) {
	sizes := map[string]int64{}
	for _, arch := range []string{"amd64", "arm64", "armhf"} {
		fi, err := os.Stat(filepath.Join(dir, "linux-"+arch, "dpsd"))
		if err != nil {
			return nil, fmt.Errorf("%w (make cross builds it)", err)
		}
		sizes[arch] = fi.Size()
	}
	return sizes, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// readyLine is the daemon's log line at READY.
var readyLine = regexp.MustCompile(`msg="dpsd is up".* tpm_commands=(\d+)`)

// readyCommands reads the TPM command count at READY from a daemon's log.
func readyCommands(log string) (int, error) {
	m := readyLine.FindStringSubmatch(log)
	if m == nil {
		return 0, fmt.Errorf("no \"dpsd is up\" line in the daemon's log:\n%s", tail(log, 20))
	}
	return strconv.Atoi(m[1])
}
