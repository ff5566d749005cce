package tpmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// Device is one TPM with one owner: every command of every method goes
// through it one at a time, and is counted and timed by command code.
// A Device is safe for concurrent use; methods wait for each other.
type Device struct {
	path string
	log  *slog.Logger

	// owner is a one-slot semaphore held for the length of one method call
	// (an operation); unlike a mutex, a caller can give up waiting for it.
	owner chan struct{}
	conn  connector

	statsMu sync.Mutex
	stats   Stats

	inputBuffer int // TPM_PT_INPUT_BUFFER, read once; 0 until known

	// sweep says when leftovers in the TPM are flushed (flush.go);
	// pendingSweep, when not empty, says why the next operation flushes
	// them first. Both are used only by the operation that owns the TPM.
	sweep        sweep
	pendingSweep string
	// closed is set by Close: no operation runs after it.
	closed bool
	// Bus protection (bus.go), used inside operations only.
	protect BusProtection
	ek      *saltKey       // the EK sessions are salted to, once read
	ekSeen  bool           // ek was read in this operation
	kept    tpm2.Session   // the session tokens reuse; nil when none
	oneUse  []tpm2.Session // this operation's one-use sessions

	// sentAt is when the command in flight was sent (Unix nanoseconds),
	// 0 when none is: Busy reports a TPM or driver that stopped answering.
	sentAt atomic.Int64
}

// Busy is how long the command in flight has been waiting for the TPM's
// answer; 0 when none is in flight. A discrete TPM may take minutes to
// generate an RSA key (the kernel allows 300 s), so only much longer
// means the TPM or its driver hangs.
func (d *Device) Busy() time.Duration {
	t := d.sentAt.Load()
	if t == 0 {
		return 0
	}
	return time.Since(time.Unix(0, t))
}

// Stats counts the commands a Device has sent.
type Stats struct {
	// Total is the number of commands sent.
	Total int
	// ByCommand is keyed by command name without the TPM2_ prefix, such as
	// "CreatePrimary" ("0x00000abc" for a code this package has no name for).
	ByCommand map[string]CommandStat
}

// CommandStat is the count and the summed round-trip time of one command.
type CommandStat struct {
	Count int
	Total time.Duration
}

// connector gives the transport for one operation. Device files stay open;
// socket TPMs are dialled per operation so that other clients (tpm2-tools)
// can use the single-client swtpm in between.
type connector interface {
	begin(ctx context.Context) (transport.TPM, func(), error)
	close() error
}

// Open opens the TPM named by the config's device value:
//
//	auto              /dev/tpmrm0 if present, else /dev/tpm0
//	/dev/...          a TPM character device (the kernel resource manager or the raw device)
//	swtpm:PATH        swtpm's command socket (unixio), started with not-need-init,startup-clear
//	mssim:HOST:PORT   a TPM simulator's TCP command port (swtpm --server type=tcp, ms-tpm-20-ref)
//
// Socket TPMs must already be powered on and started: Open never sends
// power-on or TPM2_Startup (swtpm refuses the former).
//
// dpsd has every TPM but /dev/tpmrm0 to itself: FlushLeftovers flushes
// the transient objects and sessions left in it (by a killed process, or
// by tpm2-tools, which leave theirs loaded without a resource manager),
// and any operation does when the TPM runs out of room.
func Open(spec string, log *slog.Logger) (*Device, error) {
	d, err := open(spec, log)
	if err != nil {
		return nil, err
	}
	d.sweep = sweepFor(d.path)
	return d, nil
}

// OpenInspect opens the TPM as Open does, for looking at it (dpsd check):
// the Device never flushes objects or sessions it did not load, so that
// they can be reported.
func OpenInspect(spec string, log *slog.Logger) (*Device, error) {
	return open(spec, log)
}

func open(spec string, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch {
	case spec == "auto":
		for _, p := range []string{"/dev/tpmrm0", "/dev/tpm0"} {
			if _, err := os.Stat(p); err == nil {
				return openDeviceFile(p, log)
			}
		}
		return nil, fmt.Errorf("opening TPM: neither /dev/tpmrm0 nor /dev/tpm0 exists: %w", ErrNotFound)
	case strings.HasPrefix(spec, "swtpm:"):
		path := strings.TrimPrefix(spec, "swtpm:")
		if path == "" {
			return nil, fmt.Errorf("opening TPM %q: empty socket path", spec)
		}
		return newDevice(spec, &socketConnector{network: "unix", addr: path}, log), nil
	case strings.HasPrefix(spec, "mssim:"):
		addr := strings.TrimPrefix(spec, "mssim:")
		if addr == "" {
			return nil, fmt.Errorf("opening TPM %q: empty address", spec)
		}
		return newDevice(spec, &socketConnector{network: "tcp", addr: addr}, log), nil
	case strings.HasPrefix(spec, "/"):
		return openDeviceFile(spec, log)
	}
	return nil, fmt.Errorf("opening TPM %q: want auto, a /dev path, swtpm:PATH or mssim:HOST:PORT", spec)
}

func openDeviceFile(path string, log *slog.Logger) (*Device, error) {
	t, err := linuxtpm.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrNotFound, err)
		}
		return nil, fmt.Errorf("opening TPM %s: %w", path, err)
	}
	return newDevice(path, &heldConnector{t: t}, log), nil
}

// OpenTransport makes a Device of an already open transport (a simulator in
// tests). name is what Path reports. Close closes t when it is an io.Closer.
// The caller gives dpsd the TPM as it is: leftovers are flushed when the
// TPM runs out of room, not at open.
func OpenTransport(t transport.TPM, name string, log *slog.Logger) *Device {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := newDevice(name, &heldConnector{t: t}, log)
	d.sweep = sweepOnDemand
	return d
}

func newDevice(path string, c connector, log *slog.Logger) *Device {
	return &Device{
		path:  path,
		log:   log.With("tpm", path),
		owner: make(chan struct{}, 1),
		conn:  c,
		stats: Stats{ByCommand: map[string]CommandStat{}},
	}
}

// Close releases the device. It waits for a running operation to end.
func (d *Device) Close() error {
	d.owner <- struct{}{}
	defer func() { <-d.owner }()
	d.closed = true
	d.closeKept()
	if err := d.conn.close(); err != nil {
		return fmt.Errorf("closing TPM %s: %w", d.path, err)
	}
	return nil
}

// Path is what was opened ("/dev/tpmrm0", "swtpm:/run/swtpm.sock", ...), for status.
func (d *Device) Path() string { return d.path }

// Stats returns a copy of the command counters.
func (d *Device) Stats() Stats {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	s := Stats{Total: d.stats.Total, ByCommand: make(map[string]CommandStat, len(d.stats.ByCommand))}
	for k, v := range d.stats.ByCommand {
		s.ByCommand[k] = v
	}
	return s
}

// do runs one operation: it owns the TPM for the length of f and hands f a
// transport that counts, times and checks ctx before each command. A command
// already sent to a device file runs to its end (the kernel offers no way
// to abandon it); on a socket, cancelling ctx unblocks the wait.
func (d *Device) do(ctx context.Context, op string, f func(t transport.TPM) error) error {
	// A caller that gives up (a status API request past its timeout) must
	// not queue for ever behind a slow operation such as a key generation.
	select {
	case d.owner <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%s: waiting for the TPM: %w", op, ctx.Err())
	}
	defer func() { <-d.owner }()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	// A socket TPM would be dialled again: whatever runs after Close (a
	// goroutine of a daemon that is stopping) must leave nothing behind.
	if d.closed {
		return fmt.Errorf("%s: %w", op, ErrClosed)
	}
	start := time.Now()
	t, end, err := d.conn.begin(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: connecting to TPM %s: %w", op, d.path, ctx.Err())
		}
		return fmt.Errorf("%s: %w", op, unreachable(d.path, err))
	}
	ct := &countingTPM{d: d, ctx: ctx, t: t, held: map[tpm2.TPMHandle]bool{}}
	ct.sweepPending()
	err = f(ct)
	err = also(err, d.endOperation(uncancellable(ct)))
	end()
	if err != nil {
		d.log.Debug("TPM operation failed", "op", op, "duration", time.Since(start), "err", err)
		return fmt.Errorf("%s: %w", op, err)
	}
	d.log.Debug("TPM operation done", "op", op, "duration", time.Since(start))
	return nil
}

// countingTPM is the transport every command of an operation goes through.
type countingTPM struct {
	d   *Device
	ctx context.Context
	t   transport.TPM
	// held are the transient objects and sessions this operation loaded
	// and has not flushed yet.
	held map[tpm2.TPMHandle]bool
}

// Send implements transport.TPM. A TPM may answer TPM_RC_RETRY, _YIELDED
// or _TESTING without executing the command; the same bytes are sent again
// after a short wait, as tpm2-tss does. A TPM out of room for an object or
// session did not execute the command either: once leftovers are flushed
// it is sent once more. Nothing else is ever resent: an authorization
// failure counts toward lockout.
func (c *countingTPM) Send(cmd []byte) ([]byte, error) {
	rsp, err := c.sendUntilExecuted(cmd)
	if err != nil || !outOfRoom(rsp) || c.d.sweep == sweepNever {
		return rsp, err
	}
	why := fmt.Sprintf("TPM2_%s: %v", commandName(commandCode(cmd)), responseCode(rsp))
	if n, ferr := c.flushStale(why); ferr != nil || n == 0 {
		c.d.log.Warn("the TPM is out of room and nothing could be flushed", "command", commandName(commandCode(cmd)), "err", ferr)
		return rsp, nil
	}
	return c.sendUntilExecuted(cmd)
}

func (c *countingTPM) sendUntilExecuted(cmd []byte) ([]byte, error) {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		rsp, err := c.send(cmd)
		if err != nil || !notExecuted(rsp) {
			return rsp, err
		}
		c.d.log.Debug("TPM asks to retry", "command", commandName(commandCode(cmd)), "after", wait)
		select {
		case <-c.ctx.Done():
			return nil, c.ctx.Err()
		case <-time.After(wait):
		}
	}
}

func (c *countingTPM) send(cmd []byte) ([]byte, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err
	}
	name := commandName(commandCode(cmd))
	start := time.Now()
	c.d.sentAt.Store(start.UnixNano())
	rsp, err := c.t.Send(cmd)
	c.d.sentAt.Store(0)
	c.track(cmd, rsp, err)
	elapsed := time.Since(start)
	c.d.statsMu.Lock()
	s := c.d.stats.ByCommand[name]
	s.Count++
	s.Total += elapsed
	c.d.stats.ByCommand[name] = s
	c.d.stats.Total++
	c.d.statsMu.Unlock()
	if err != nil {
		if ctxErr := c.ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("%w (%w)", ctxErr, err)
		}
		// A socket's deadline is the context's: it may fire a moment
		// before the context says so.
		if dl, ok := c.ctx.Deadline(); ok && !time.Now().Before(dl) {
			return nil, fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
		}
		return nil, fmt.Errorf("TPM transport: %w", err)
	}
	return rsp, nil
}

// commandCode reads the command code from a command's header.
func commandCode(cmd []byte) tpm2.TPMCC {
	if len(cmd) < 10 {
		return 0
	}
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
}

// notExecuted reports whether a response says the TPM did not run the
// command and it may simply be sent again.
func notExecuted(rsp []byte) bool {
	switch responseCode(rsp) {
	case tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting:
		return true
	}
	return false
}

// heldConnector keeps one transport open for the Device's life.
type heldConnector struct{ t transport.TPM }

func (h *heldConnector) begin(context.Context) (transport.TPM, func(), error) {
	return h.t, func() {}, nil
}

func (h *heldConnector) close() error {
	if c, ok := h.t.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// commandNames are the commands this package and its tests send.
var commandNames = map[tpm2.TPMCC]string{
	tpm2.TPMCCActivateCredential:  "ActivateCredential",
	tpm2.TPMCCCreate:              "Create",
	tpm2.TPMCCCreatePrimary:       "CreatePrimary",
	tpm2.TPMCCEvictControl:        "EvictControl",
	tpm2.TPMCCFlushContext:        "FlushContext",
	tpm2.TPMCCGetCapability:       "GetCapability",
	tpm2.TPMCCHierarchyChanegAuth: "HierarchyChangeAuth",
	tpm2.TPMCCHMAC:                "HMAC",
	tpm2.TPMCCHMACStart:           "HMAC_Start",
	tpm2.TPMCCImport:              "Import",
	tpm2.TPMCCLoad:                "Load",
	tpm2.TPMCCNVDefineSpace:       "NV_DefineSpace",
	tpm2.TPMCCNVRead:              "NV_Read",
	tpm2.TPMCCNVReadPublic:        "NV_ReadPublic",
	tpm2.TPMCCNVUndefineSpace:     "NV_UndefineSpace",
	tpm2.TPMCCNVWrite:             "NV_Write",
	tpm2.TPMCCPolicySecret:        "PolicySecret",
	tpm2.TPMCCReadPublic:          "ReadPublic",
	tpm2.TPMCCSequenceComplete:    "SequenceComplete",
	tpm2.TPMCCSequenceUpdate:      "SequenceUpdate",
	tpm2.TPMCCSign:                "Sign",
	tpm2.TPMCCStartAuthSession:    "StartAuthSession",
	tpm2.TPMCCUnseal:              "Unseal",
}

func commandName(cc tpm2.TPMCC) string {
	if n, ok := commandNames[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%08x", uint32(cc))
}
