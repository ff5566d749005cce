// Package harness starts the helper processes the daemon is tested and
// measured against, swtpm and dpsemu, and returns once each serves.
// tpmdev/tpmtest and daemon/e2e wrap it for tests; scripts/bench uses it
// as is, which is why it reports errors instead of failing a test. Not
// part of the shipped daemon.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// Process is a started helper process.
type Process struct {
	// Log is its output.
	Log *testenv.Buffer

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, set before exited is closed
	once   sync.Once
}

// Start starts cmd with its stdout and stderr (unless set) in the
// Process's Log. The process is killed when the one that started it dies,
// even if nothing stops it.
func Start(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Log: &testenv.Buffer{}, cmd: cmd, exited: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.Log
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.Log
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed when the process has ended; Err then says how.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error once Exited is closed.
func (p *Process) Err() error {
	<-p.exited
	return p.err
}

// ErrKilled is Stop's error for a process that ignored SIGTERM.
var ErrKilled = errors.New("ignored SIGTERM and was killed")

// Stop sends SIGTERM, waits up to grace and then kills the process; it
// returns how the process ended. Later calls only wait.
func (p *Process) Stop(grace time.Duration) error {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.exited
			p.err = ErrKilled
		}
	})
	return p.Err()
}

// Kill ends the process at once, as a power cut would.
func (p *Process) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// readyWithin bounds the wait for a helper to serve: a loaded CI machine,
// not a performance bound.
const readyWithin = time.Minute

// StartSwtpm runs `swtpm socket --tpm2` (bin) on stateDir with the command
// and control channels given as swtpm's --server and --ctrl values, and
// returns once the TPM answers a command on spec (swtpm:SOCKET or
// mssim:ADDR, the device value that reaches server). By then swtpm has
// manufactured the TPM and written its state to stateDir
// (tpm2-00.permall): swtpm listens before and answers only after. swtpm
// runs with not-need-init,startup-clear, so it takes commands without
// power-on or TPM2_Startup.
func StartSwtpm(bin, spec, stateDir, server, ctrl string) (*Process, error) {
	p, err := Start(exec.Command(bin, "socket", "--tpm2", "--server", server, "--ctrl", ctrl,
		"--tpmstate", "dir="+stateDir, "--flags", "not-need-init,startup-clear"))
	if err != nil {
		return nil, err
	}
	if err := swtpmReady(spec, p.exited); err != nil {
		_ = p.Stop(10 * time.Second)
		return nil, fmt.Errorf("swtpm on %s: %w; its output: %s", stateDir, err, p.Log)
	}
	return p, nil
}

// swtpmReady waits until the TPM at spec answers; it gives up when swtpm
// exits or after readyWithin.
func swtpmReady(spec string, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyWithin)
	for {
		err := ping(spec, deadline)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return errors.New("swtpm exited before answering")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer on %s: %w", spec, err)
		}
	}
}

// ping sends the TPM one command that reads only, and lets go at once:
// swtpm serves one client at a time.
func ping(spec string, deadline time.Time) error {
	dev, err := tpmdev.OpenInspect(spec, nil)
	if err != nil {
		return err
	}
	defer dev.Close()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	_, err = dev.Ownership(ctx)
	return err
}

// Dpsemu is a running emulator and the addresses of its ready line.
type Dpsemu struct {
	*Process
	DPS, Hub, Admin string
}

// StartDpsemu runs dpsemu (bin) with args and returns once it printed its
// ready line, the JSON of the addresses it listens on. Its other output
// goes to Log.
func StartDpsemu(bin string, args ...string) (*Dpsemu, error) {
	// A pipe of our own rather than StdoutPipe, which Wait (started at
	// once) would close under the reader.
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = pw
	p, err := Start(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		return nil, err
	}
	e := &Dpsemu{Process: p}
	r := bufio.NewReader(pr)
	line, err := r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &struct{ DPS, Hub, Admin *string }{&e.DPS, &e.Hub, &e.Admin})
	}
	if err != nil {
		_ = p.Stop(10 * time.Second)
		pr.Close()
		return nil, fmt.Errorf("dpsemu's ready line %q: %w\n%s", line, err, p.Log)
	}
	go func() {
		_, _ = io.Copy(p.Log, r)
		pr.Close()
	}()
	return e, nil
}
