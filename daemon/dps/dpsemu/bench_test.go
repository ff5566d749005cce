package dpsemu_test

import (
	"bufio"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
)

// BenchmarkBuildBlob: the emulator's cost of one authenticationKey blob
// (two RSA-OAEP encryptions, KDFs, AES-CFB, HMACs); every registration
// builds two.
func BenchmarkBuildBlob(b *testing.B) {
	d := newSoftDevice(b, 0)
	key := make([]byte, 32)
	trailer := []byte("hub-a.example/devices/bench")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := authblob.Build(rand.Reader, d.EKPublic, d.SRKPublic, key, trailer); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRegistration: complete registrations per second over loopback
// HTTPS with one keep-alive connection, emulator and software device in
// this process (so the device's RSA decryptions are included; see
// BenchmarkRegistrationEmulatorCPU for the emulator alone). Each one is a
// challenge, the authenticated PUT, one poll, and the registry written.
func BenchmarkRegistration(b *testing.B) {
	zero := 0
	e := newEnv(b, func(o *dpsemu.Options) { o.AssignAfterPolls = &zero })
	d := newSoftDevice(b, 0)
	e.enroll("bench", d, nil)
	b.ReportAllocs()
	for b.Loop() {
		e.provision("bench", d, "")
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reg/s")
}

// BenchmarkRegistrationEmulatorCPU runs the dpsemu binary as a separate
// process and reports its CPU time (user + system, from /proc, in clock
// ticks of 10 ms) per complete registration. Run it with a fixed count
// (-benchtime=300x) so the tick resolution is small against the total.
func BenchmarkRegistrationEmulatorCPU(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "dpsemu")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/dpsd-project/dpsd/cmd/dpsemu").CombinedOutput(); err != nil {
		b.Fatalf("building dpsemu: %v\n%s", err, out)
	}
	dir := b.TempDir()
	cmd := exec.Command(bin, "--dir", dir, "--id-scope", testScope, "--hub", strings.Join(testHubs, ","),
		"--assign-after-polls", "0", "--retry-after", "0", "--log-level", "warn")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("ready line: %v", err)
	}
	var addrs dpsemu.Addrs
	if err := json.Unmarshal([]byte(line), &addrs); err != nil {
		b.Fatalf("ready line %q: %v", line, err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	e := clientEnv(b, addrs, roots)
	d := newSoftDevice(b, 0)
	e.enroll("bench", d, nil)
	e.provision("bench", d, "") // connection and caches warm

	before := cpuTicks(b, cmd.Process.Pid)
	for b.Loop() {
		e.provision("bench", d, "")
	}
	ticks := cpuTicks(b, cmd.Process.Pid) - before
	b.ReportMetric(float64(ticks)*10/float64(b.N), "emu-cpu-ms/reg")

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		b.Errorf("dpsemu exit: %v", err)
	}
}

// cpuTicks returns utime + stime of a process from /proc/PID/stat.
func cpuTicks(b *testing.B, pid int) int {
	b.Helper()
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: state is field 3, utime 14, stime 15.
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}
