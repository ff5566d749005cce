package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// vm is the guest's hardware across boots: its disk and its TPM's state.
type vm struct {
	img      image
	dir      string // work directory: disk, TPM state, logs
	disk     string
	tpmState string
	timeout  time.Duration // one boot, power on to power off
}

// boot powers the guest on with swtpm as its TPM behind the given QEMU
// device (tpm-tis or tpm-crb), tells the test driver in the guest which
// phase to run (kernel command line) and returns the driver's reports from
// the second serial port once the guest has powered itself off.
func (v *vm) boot(ctx context.Context, phase, tpmDevice string) ([]report, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	prefix := filepath.Join(v.dir, phase)
	sock := prefix + ".tpm.sock"
	swtpm := exec.CommandContext(ctx, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+v.tpmState,
		"--ctrl", "type=unixio,path="+sock, "--terminate", "--log", "file="+prefix+".swtpm.log")
	if err := swtpm.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	// --terminate: swtpm ends with QEMU's connection; one that QEMU never
	// reached is killed rather than waited for until the boot's timeout.
	defer func() {
		exited := make(chan struct{})
		go func() { swtpm.Wait(); close(exited) }() //nolint:errcheck // its exit says nothing more
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			swtpm.Process.Kill() //nolint:errcheck // exiting anyway
			<-exited
		}
	}()
	if err := waitForPath(ctx, sock); err != nil {
		return nil, fmt.Errorf("swtpm's socket: %w", err)
	}

	results := prefix + ".results"
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35", "-accel", "tcg", "-smp", "2", "-m", "1024",
		"-display", "none", "-vga", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
		"-kernel", v.img.Kernel, "-initrd", v.img.Initrd,
		"-append", "root=/dev/vda rw console=ttyS0 vmtest.phase="+phase,
		"-drive", "file="+v.disk+",format=raw,if=virtio",
		"-chardev", "socket,id=chrtpm,path="+sock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", tpmDevice+",tpmdev=tpm0",
		"-serial", "file:"+prefix+".console", "-serial", "file:"+results)
	out, err := qemu.CombinedOutput()
	if ctx.Err() != nil {
		return readReports(results), fmt.Errorf("the guest did not power off within %s (console: %s.console)", v.timeout, prefix)
	}
	if err != nil {
		return readReports(results), fmt.Errorf("qemu: %w\n%s", err, out)
	}
	return readReports(results), nil
}

// readReports parses the driver's lines; the serial port may add carriage
// returns, and anything that is not a report is skipped.
func readReports(path string) []report {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var rs []report
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		var r report
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &r) == nil && r.Phase != "" {
			rs = append(rs, r)
		}
	}
	return rs
}

// clearTPM clears the guest's TPM from the host while the guest is off,
// as an owner would with the platform hierarchy: swtpm alone on the TPM
// state, then tpm2_clear over its TCP port, then a clean shutdown that
// saves the state.
func (v *vm) clearTPM(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	port, err := freePort()
	if err != nil {
		return err
	}
	data, ctrl := strconv.Itoa(port), strconv.Itoa(port+1)
	swtpm := exec.CommandContext(ctx, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+v.tpmState,
		"--server", "type=tcp,bindaddr=127.0.0.1,port="+data, "--ctrl", "type=tcp,bindaddr=127.0.0.1,port="+ctrl,
		"--flags", "not-need-init,startup-clear", "--log", "file="+filepath.Join(v.dir, "clear.swtpm.log"))
	if err := swtpm.Start(); err != nil {
		return fmt.Errorf("starting swtpm: %w", err)
	}
	stopped := false
	defer func() {
		if !stopped {
			swtpm.Process.Kill() //nolint:errcheck // already failing
		}
		swtpm.Wait() //nolint:errcheck // its exit says nothing more
	}()
	if err := waitForPort(ctx, "127.0.0.1:"+ctrl); err != nil {
		return fmt.Errorf("swtpm's control port: %w", err)
	}
	if err := run("tpm2_clear", "-c", "p", "-T", "swtpm:host=127.0.0.1,port="+data); err != nil {
		return err
	}
	if err := run("swtpm_ioctl", "--tcp", "127.0.0.1:"+ctrl, "-s"); err != nil {
		return err
	}
	stopped = true
	return nil
}

func freePort() (int, error) {
	// Two consecutive free ports: swtpm's data and control channels.
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1)); err == nil {
			l2.Close()
			return port, nil
		}
	}
	return 0, errors.New("no two consecutive free ports on 127.0.0.1")
}

func waitForPath(ctx context.Context, path string) error {
	return poll(ctx, func() bool { _, err := os.Stat(path); return err == nil })
}

func waitForPort(ctx context.Context, addr string) error {
	return poll(ctx, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// poll calls ok until it is true or ctx ends.
func poll(ctx context.Context, ok func() bool) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}
