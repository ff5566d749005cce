package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// report is one line the guest's driver writes to its second serial port.
type report struct {
	Phase    string `json:"phase"`
	Scenario string `json:"scenario,omitempty"`
	OK       bool   `json:"ok"`
	Detail   string `json:"detail,omitempty"`
	Millis   int64  `json:"ms"`
	// Done marks the phase's last line: without it the phase was cut short.
	Done bool `json:"done,omitempty"`
}

// In the guest: the packages the host put in, and what one boot leaves for
// the next.
const (
	guestDeb     = "/vmtest/dpsd-1.deb"
	guestUpgrade = "/vmtest/dpsd-2.deb"
	keep         = "/var/lib/vmtest"
	emuCA        = "/etc/vmtest-dpsemu-ca.pem"
	// emuDropIn points dpsd at the emulator; it is not the ID scope, which
	// the install scenario leaves out on purpose.
	emuDropIn     = "/etc/dpsd/config.d/40-vmtest-emulator.toml"
	idScopeDropIn = "/etc/dpsd/config.d/50-id-scope.toml"
)

// guest runs one phase in the VM and reports each scenario.
type guest struct {
	ctx   context.Context
	phase string
	out   io.Writer
}

// phases are the boots, in order; the host clears the TPM before "cleared".
var phases = map[string]func(g *guest){
	"install": (*guest).install,
	"reboot":  (*guest).reboot,
	"cleared": (*guest).cleared,
}

// guestMain is `vmtest guest`, run by vmtest.service at boot.
func guestMain() int {
	cmdline, _ := os.ReadFile("/proc/cmdline")
	var phase string
	for _, f := range strings.Fields(string(cmdline)) {
		if v, ok := strings.CutPrefix(f, "vmtest.phase="); ok {
			phase = v
		}
	}
	out, err := os.OpenFile("/dev/ttyS1", os.O_WRONLY, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest guest:", err)
		return 1
	}
	defer out.Close()
	g := &guest{ctx: context.Background(), phase: phase, out: out}
	run, ok := phases[phase]
	if !ok {
		g.emit(report{Scenario: "phase " + phase, Detail: "unknown phase"})
		return 1
	}
	if err := os.MkdirAll(keep, 0o700); err != nil {
		g.emit(report{Scenario: "setup", Detail: err.Error()})
		return 1
	}
	run(g)
	g.emit(report{OK: true, Done: true})
	return 0
}

func (g *guest) emit(r report) {
	r.Phase = g.phase
	b, _ := json.Marshal(r)
	g.out.Write(append(b, '\n')) //nolint:errcheck // nowhere else to say it
}

// step runs one scenario and reports it; false stops the scenarios that
// build on it.
func (g *guest) step(name string, f func() (string, error)) bool {
	start := time.Now()
	detail, err := f()
	r := report{Scenario: name, OK: err == nil, Detail: detail, Millis: time.Since(start).Milliseconds()}
	if err != nil {
		r.Detail = strings.TrimSpace(err.Error() + "; " + detail)
	}
	g.emit(r)
	return err == nil
}

// install is the first boot: a live install on a running systemd without an
// ID scope, the factory line's enroll-info, the enrollment, the first
// provisioning, and an upgrade of the provisioned device.
func (g *guest) install() {
	provisioned := g.step("live install without an ID scope", func() (string, error) {
		if err := g.pointAtEmulator(); err != nil {
			return "", err
		}
		return g.freshInstall()
	}) &&
		g.step("set id_scope in a drop-in, as postinst says", g.setIDScope) &&
		g.step("enroll-info, first call (daemon stopped)", g.enrollInfo) &&
		g.step("enroll in dpsemu (admin API)", g.enroll) &&
		g.step("systemctl start dpsd: provisioned", g.startProvisioned)
	if !provisioned {
		return
	}
	g.step("socket and /run/dpsd owned dpsd:dpsd", g.socketOwner)
	g.step("upgrade restarts it: provisioned, 0 DPS requests", g.upgrade)
	// What the next boot must find unchanged.
	g.step("record the state files", func() (string, error) { return "", g.saveJSON("files.json", stateFiles()) })
}

// reboot is the second boot: the unit brings the device back from its
// record alone; then a crash and stops that socket activation undoes.
func (g *guest) reboot() {
	g.step("reboot: provisioned, 0 DPS requests, 0 hub connections, no file written", g.warmBoot)
	g.step("kill -9 of the main PID: systemd restarts it", g.killMain)
	for _, verb := range []string{"status", "check", "enroll-info", "token"} {
		g.step("systemctl stop dpsd; dpsd "+verb+": socket activation answers", func() (string, error) { return g.activate(verb) })
	}
}

// cleared is the third boot, on a TPM the host cleared (and behind the
// other kernel driver): dpsd registers again with the same device ID; then
// purge and a fresh install.
func (g *guest) cleared() {
	g.step("TPM cleared: re-provisioned, same device ID, reason tpm-cleared", g.reprovisioned)
	_ = g.step("purge", g.purge) &&
		g.step("reinstall after the purge", func() (string, error) {
			if err := g.pointAtEmulator(); err != nil {
				return "", err
			}
			return g.freshInstall()
		}) &&
		g.step("reinstall: set id_scope, start: provisioned", func() (string, error) {
			if _, err := g.setIDScope(); err != nil {
				return "", err
			}
			return g.startProvisioned()
		})
}

// pointAtEmulator writes the drop-in that sends dpsd to dpsemu, with a copy
// of dpsemu's CA that the daemon's user can read.
func (g *guest) pointAtEmulator() error {
	ca, err := os.ReadFile("/var/lib/dpsemu/ca.pem")
	if err != nil {
		return err
	}
	if err := os.WriteFile(emuCA, ca, 0o644); err != nil {
		return err
	}
	conf := fmt.Sprintf("[provisioning]\nglobal_endpoint = \"https://%s\"\n\n[network]\nca_file = %q\n\n[hub]\nendpoint_override = %q\n",
		emuDPS, emuCA, emuHubAddr)
	return writeFile(emuDropIn, conf)
}

// freshInstall installs the package on the running system without an ID
// scope: enabled, not started, not failed, one next step printed, nothing
// on standard error.
func (g *guest) freshInstall() (string, error) {
	stdout, stderr, err := g.cmd("dpkg", "-i", guestDeb)
	if err != nil {
		return stdout + stderr, err
	}
	var problems []string
	// systemctl enable's "Created symlink" lines are every Debian
	// package's; anything else on stderr is noise.
	for line := range strings.Lines(stderr) {
		if !strings.HasPrefix(line, "Created symlink ") {
			problems = append(problems, "stderr: "+line)
		}
	}
	if !strings.Contains(stdout, "Then: systemctl start dpsd") || !strings.Contains(stdout, "id_scope") {
		problems = append(problems, "no next step in the output: "+stdout)
	}
	for unit, want := range map[string]string{"dpsd.service": "inactive", "dpsd.socket": "inactive"} {
		if got := g.unitState(unit, "is-active"); got != want {
			problems = append(problems, fmt.Sprintf("%s is %s, want %s", unit, got, want))
		}
		if got := g.unitState(unit, "is-enabled"); got != "enabled" {
			problems = append(problems, fmt.Sprintf("%s is %s, want enabled", unit, got))
		}
	}
	if failed, _, _ := g.cmd("systemctl", "--failed", "--plain", "--no-legend"); strings.TrimSpace(failed) != "" {
		problems = append(problems, "failed units: "+failed)
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return lastLine(stdout), nil
}

// enrollInfo is the factory line: root asks for the EK with no daemon
// running, so dpsd opens the TPM itself.
func (g *guest) enrollInfo() (string, error) {
	var info apitype.EnrollInfo
	if err := g.dpsdJSON(&info, "enroll-info"); err != nil {
		return "", err
	}
	if info.RegistrationID == "" || info.EndorsementKey == "" {
		return "", fmt.Errorf("incomplete answer %+v", info)
	}
	if prev, err := loadJSON[apitype.EnrollInfo]("enroll.json"); err == nil && prev.EndorsementKey != info.EndorsementKey {
		return "", fmt.Errorf("the EK changed since the first boot")
	}
	return "registration ID " + info.RegistrationID, g.saveJSON("enroll.json", info)
}

func (g *guest) enroll() (string, error) {
	info, err := loadJSON[apitype.EnrollInfo]("enroll.json")
	if err != nil {
		return "", err
	}
	body, _ := json.Marshal(map[string]any{
		"registrationId": info.RegistrationID,
		"attestation":    map[string]any{"type": "tpm", "tpm": map[string]string{"endorsementKey": info.EndorsementKey}},
	})
	return "", adminDo(http.MethodPut, "/enrollments/"+info.RegistrationID, body, nil)
}

// setIDScope completes the config as postinst says; enroll-info refuses
// to answer before (it reads the config, and the config is incomplete).
func (g *guest) setIDScope() (string, error) {
	if err := writeFile(idScopeDropIn, "[provisioning]\nid_scope = \""+emuIDScope+"\"\n"); err != nil {
		return "", err
	}
	out, stderr, err := g.cmd("dpsd", "check-config")
	return strings.TrimSpace(out + stderr), err
}

// startProvisioned starts the daemon as postinst says: it provisions.
func (g *guest) startProvisioned() (string, error) {
	if out, stderr, err := g.cmd("systemctl", "start", "dpsd"); err != nil {
		return out + stderr, err
	}
	if out, stderr, err := g.cmd("dpsd", "wait", "--timeout", "5m"); err != nil {
		return out + stderr + g.journal("dpsd.service"), err
	}
	st, err := g.status()
	if err != nil {
		return "", err
	}
	info, err := loadJSON[apitype.EnrollInfo]("enroll.json")
	if err != nil {
		return "", err
	}
	if st.DeviceID != info.RegistrationID {
		return "", fmt.Errorf("device ID %q, want the registration ID %q", st.DeviceID, info.RegistrationID)
	}
	return fmt.Sprintf("reason %s, hub %s", st.Reason, st.AssignedHub), g.saveJSON("status.json", st)
}

// socketOwner: what dpsd.socket declares is what the socket is.
func (g *guest) socketOwner() (string, error) {
	out, stderr, err := g.cmd("stat", "-c", "%n %U:%G %a", "/run/dpsd", "/run/dpsd/status.sock")
	if err != nil {
		return stderr, err
	}
	want := "/run/dpsd dpsd:dpsd 750\n/run/dpsd/status.sock dpsd:dpsd 660\n"
	if out != want {
		return "", fmt.Errorf("got %q, want %q", out, want)
	}
	return "", nil
}

// upgrade installs a later revision over the provisioned device: postinst
// restarts it, and it comes back from its record without asking DPS.
func (g *guest) upgrade() (string, error) {
	before, err := dpsRequests()
	if err != nil {
		return "", err
	}
	pid := g.mainPID()
	stdout, stderr, err := g.cmd("dpkg", "-i", guestUpgrade)
	if err != nil {
		return stdout + stderr, err
	}
	if stderr != "" || strings.Contains(stdout, "systemctl") {
		return "", fmt.Errorf("the upgrade printed: %s%s", stdout, stderr)
	}
	if after := g.mainPID(); after == pid || after == 0 {
		return "", fmt.Errorf("main PID %d before, %d after: not restarted", pid, after)
	}
	if st, err := g.status(); err != nil || st.State != apitype.PhaseProvisioned {
		return "", fmt.Errorf("after the upgrade: state %q, %v", st.State, err)
	}
	after, err := dpsRequests()
	if err != nil {
		return "", err
	}
	if after != before {
		return "", fmt.Errorf("%d DPS requests during the upgrade", after-before)
	}
	v, _, _ := g.cmd("dpkg-query", "-W", "-f", "${Version}", "dpsd")
	return "now " + v, nil
}

// warmBoot: the unit started dpsd before the driver (After=dpsd.service),
// so by now it is up. dpsemu started before it and counts from zero.
func (g *guest) warmBoot() (string, error) {
	if got := g.unitState("dpsd.service", "is-active"); got != "active" {
		return g.journal("dpsd.service"), fmt.Errorf("dpsd.service is %s", got)
	}
	st, prev, err := g.statusAndRecord()
	if err != nil {
		return "", err
	}
	var problems []string
	if st.State != apitype.PhaseProvisioned || st.DeviceID != prev.DeviceID {
		problems = append(problems, fmt.Sprintf("state %s, device %q (want provisioned, %q)", st.State, st.DeviceID, prev.DeviceID))
	}
	n, err := dpsRequests()
	if err != nil {
		return "", err
	}
	if n != 0 {
		problems = append(problems, fmt.Sprintf("%d DPS requests", n))
	}
	c, err := hubConnections()
	if err != nil {
		return "", err
	}
	if c != 0 {
		problems = append(problems, fmt.Sprintf("%d hub connections", c))
	}
	before, err := loadJSON[map[string]string]("files.json")
	if err != nil {
		return "", err
	}
	now := stateFiles()
	for path, was := range before {
		if now[path] != was {
			problems = append(problems, "written: "+path)
		}
	}
	for path := range now {
		if _, ok := before[path]; !ok {
			problems = append(problems, "new: "+path)
		}
	}
	if len(problems) > 0 {
		return "", errors.New(strings.Join(problems, "; "))
	}
	return "", nil
}

// killMain kills the daemon as a crash would; Restart=on-failure brings it
// back after RestartSec.
func (g *guest) killMain() (string, error) {
	pid := g.mainPID()
	if pid == 0 {
		return "", errors.New("dpsd has no main PID")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return "", err
	}
	var st apitype.Status
	err := g.until(2*time.Minute, func() bool {
		if p := g.mainPID(); p == 0 || p == pid || g.unitState("dpsd.service", "is-active") != "active" {
			return false
		}
		var err error
		st, err = g.status()
		return err == nil && st.State == apitype.PhaseProvisioned
	})
	if err != nil {
		return g.journal("dpsd.service"), fmt.Errorf("not back and provisioned: %w", err)
	}
	restarts, _, _ := g.cmd("systemctl", "show", "-P", "NRestarts", "dpsd.service")
	return fmt.Sprintf("pid %d -> %d, NRestarts=%s", pid, g.mainPID(), strings.TrimSpace(restarts)), nil
}

// activate stops the daemon and asks it something: the socket, still
// listening, starts it, and the answer must be the provisioned device's.
func (g *guest) activate(verb string) (string, error) {
	// Four stop-and-ask rounds right after a boot and a kill -9 start the
	// service more often than systemd's default start limit allows (5 in
	// 10 s); what is tested here is the first answer, not that limit.
	if out, stderr, err := g.cmd("systemctl", "reset-failed", "dpsd.service", "dpsd.socket"); err != nil {
		return out + stderr, err
	}
	if out, stderr, err := g.cmd("systemctl", "stop", "dpsd.service"); err != nil {
		return out + stderr, err
	}
	if got := g.unitState("dpsd.socket", "is-active"); got != "active" {
		return "", fmt.Errorf("dpsd.socket is %s after stopping the service", got)
	}
	prev, err := loadJSON[apitype.Status]("status.json")
	if err != nil {
		return "", err
	}
	enroll, err := loadJSON[apitype.EnrollInfo]("enroll.json")
	if err != nil {
		return "", err
	}
	var detail string
	switch verb {
	case "status":
		var st apitype.Status
		if err := g.dpsdJSON(&st, "status"); err != nil {
			return "", err
		}
		if st.State != apitype.PhaseProvisioned || st.DeviceID != prev.DeviceID {
			return "", fmt.Errorf("the first answer says state %q, device %q", st.State, st.DeviceID)
		}
	case "check":
		var rep apitype.CheckReport
		err := g.dpsdJSON(&rep, "check")
		var notes []string
		for _, c := range rep.Checks {
			if c.Status != apitype.CheckPass {
				notes = append(notes, fmt.Sprintf("%s %s: %s", c.Name, c.Status, c.Detail))
			}
		}
		detail = strings.Join(notes, "; ")
		if err != nil {
			return detail, err
		}
		if len(rep.Checks) == 0 {
			return "", errors.New("no checks in the answer")
		}
	case "enroll-info":
		var info apitype.EnrollInfo
		if err := g.dpsdJSON(&info, "enroll-info"); err != nil {
			return "", err
		}
		if info.EndorsementKey != enroll.EndorsementKey || info.RegistrationID != enroll.RegistrationID {
			return "", errors.New("another EK or registration ID than at the first boot")
		}
	case "token":
		var tok apitype.Token
		if err := g.dpsdJSON(&tok, "token", "--ttl", "1h"); err != nil {
			return "", err
		}
		if !strings.HasPrefix(tok.SAS, "SharedAccessSignature sr=") || tok.DeviceID != prev.DeviceID || tok.Hub != prev.AssignedHub {
			return "", fmt.Errorf("token for %q on %q: %.40s...", tok.DeviceID, tok.Hub, tok.SAS)
		}
	}
	if got := g.unitState("dpsd.service", "is-active"); got != "active" {
		return detail, fmt.Errorf("dpsd.service is %s after the call", got)
	}
	return detail, nil
}

// reprovisioned: the SRK the record names is gone, so dpsd took ownership
// again and registered with the same EK.
func (g *guest) reprovisioned() (string, error) {
	driver, _ := os.Readlink("/sys/class/tpm/tpm0/device/driver")
	if _, _, err := g.cmd("dpsd", "wait", "--timeout", "5m"); err != nil {
		return g.journal("dpsd.service"), err
	}
	st, prev, err := g.statusAndRecord()
	if err != nil {
		return "", err
	}
	if st.DeviceID != prev.DeviceID || st.Reason != apitype.ReasonTPMCleared {
		return "", fmt.Errorf("device %q, reason %q; want %q, %s", st.DeviceID, st.Reason, prev.DeviceID, apitype.ReasonTPMCleared)
	}
	n, err := dpsRequests()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("driver %s, %d DPS requests", filepath.Base(driver), n), nil
}

// purge removes everything of dpsd but the TPM's contents.
func (g *guest) purge() (string, error) {
	stdout, stderr, err := g.cmd("dpkg", "-P", "dpsd")
	if err != nil || stderr != "" {
		return stdout + stderr, fmt.Errorf("dpkg -P: %v, stderr %q", err, stderr)
	}
	var left []string
	for _, p := range []string{"/etc/dpsd", "/var/lib/dpsd", "/run/dpsd", "/usr/bin/dpsd"} {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	if _, _, err := g.cmd("getent", "passwd", "dpsd"); err == nil {
		left = append(left, "the user dpsd")
	}
	if failed, _, _ := g.cmd("systemctl", "--failed", "--plain", "--no-legend"); strings.TrimSpace(failed) != "" {
		left = append(left, "failed units: "+failed)
	}
	if len(left) > 0 {
		return "", fmt.Errorf("left behind: %s", strings.Join(left, ", "))
	}
	return "", nil
}

// status asks the daemon.
func (g *guest) status() (apitype.Status, error) {
	var st apitype.Status
	return st, g.dpsdJSON(&st, "status")
}

// statusAndRecord is the daemon's status now and as recorded when the
// device was first provisioned.
func (g *guest) statusAndRecord() (now, first apitype.Status, err error) {
	if now, err = g.status(); err != nil {
		return now, first, err
	}
	first, err = loadJSON[apitype.Status]("status.json")
	return now, first, err
}

// dpsdJSON runs a dpsd client verb with --json and decodes its answer.
func (g *guest) dpsdJSON(v any, verb string, args ...string) error {
	stdout, stderr, err := g.cmd("dpsd", append([]string{verb, "--json"}, args...)...)
	if jerr := json.Unmarshal([]byte(stdout), v); jerr != nil {
		return fmt.Errorf("dpsd %s: %v, decoding the answer: %w: %s%s", verb, err, jerr, stdout, stderr)
	}
	if err != nil {
		// The answer is decoded; the caller says what it means.
		return fmt.Errorf("dpsd %s: %w %s", verb, err, strings.TrimSpace(stderr))
	}
	return nil
}

func (g *guest) cmd(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(g.ctx, 6*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, name, args...)
	c.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"}
	var o, e bytes.Buffer
	c.Stdout, c.Stderr = &o, &e
	err = c.Run()
	return o.String(), e.String(), err
}

// unitState is systemctl is-active/is-enabled/is-failed's answer.
func (g *guest) unitState(unit, query string) string {
	out, _, _ := g.cmd("systemctl", query, unit)
	return strings.TrimSpace(out)
}

func (g *guest) mainPID() int {
	out, _, _ := g.cmd("systemctl", "show", "-P", "MainPID", "dpsd.service")
	pid, _ := strconv.Atoi(strings.TrimSpace(out))
	return pid
}

// journal is the end of a unit's log this boot, for a failure's detail.
func (g *guest) journal(unit string) string {
	out, _, _ := g.cmd("journalctl", "-b", "-o", "cat", "-n", "15", "-u", unit)
	return "\n" + out
}

// until polls ok until it holds or the timeout passes.
func (g *guest) until(timeout time.Duration, ok func() bool) error {
	ctx, cancel := context.WithTimeout(g.ctx, timeout)
	defer cancel()
	return poll(ctx, ok)
}

// dpsRequests is the number of DPS requests dpsemu answered since it
// started (this boot).
func dpsRequests() (int, error) { return emuStat("total") }

// hubConnections is the number of MQTT CONNECTs, accepted or refused,
// dpsemu's hub saw since it started (this boot).
func hubConnections() (int, error) { return emuStat("hub_connect") }

// emuStat is one counter of dpsemu's GET /stats.
func emuStat(name string) (int, error) {
	var stats map[string]int
	if err := adminDo(http.MethodGet, "/stats", nil, &stats); err != nil {
		return 0, err
	}
	return stats[name], nil
}

func adminDo(method, path string, body []byte, into any) error {
	req, err := http.NewRequest(method, "http://"+emuAdmin+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("dpsemu admin %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("dpsemu admin %s %s: %s: %s", method, path, resp.Status, b)
	}
	if into != nil {
		return json.Unmarshal(b, into)
	}
	return nil
}

// stateFiles describes every file under /var/lib/dpsd by inode, size,
// modification time and content: a rewrite changes one of them.
func stateFiles() map[string]string {
	files := map[string]string{}
	filepath.WalkDir("/var/lib/dpsd", func(path string, d fs.DirEntry, err error) error { //nolint:errcheck // a missing directory is an empty record
		if err != nil || d.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil {
			return nil
		}
		b, _ := os.ReadFile(path)
		sum := sha256.Sum256(b)
		files[path] = fmt.Sprintf("ino %d size %d mtime %d.%09d sha256 %s", st.Ino, st.Size, st.Mtim.Sec, st.Mtim.Nsec, hex.EncodeToString(sum[:8]))
		return nil
	})
	return files
}

func (g *guest) saveJSON(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFile(filepath.Join(keep, name), string(b))
}

func loadJSON[T any](name string) (T, error) {
	var v T
	b, err := os.ReadFile(filepath.Join(keep, name))
	if err != nil {
		return v, fmt.Errorf("reading what an earlier step recorded: %w", err)
	}
	return v, json.Unmarshal(b, &v)
}

// writeFile writes and syncs: the guest powers off soon after.
func writeFile(path, data string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// awaitMain is `vmtest await URL`: vmtest-dpsemu.service's ExecStartPost,
// so that units ordered after it find dpsemu listening.
func awaitMain(url string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err := poll(ctx, func() bool {
		resp, err := http.Get(url) //nolint:noctx // bounded by the poll's deadline and the default dial timeout
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest await:", url, err)
		return 1
	}
	return 0
}
