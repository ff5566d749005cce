package tpmdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Leftovers. A TPM has room for a few transient objects and sessions
// (swtpm and most discrete TPMs: three objects, three loaded sessions).
// Behind /dev/tpmrm0 the kernel gives each open file its own view and
// flushes it on close. Without a resource manager (swtpm:, mssim:,
// /dev/tpm0) nothing does: a client killed mid-operation, tpm2-tools, or a
// command whose answer dpsd never read leave objects loaded, and a few of
// them make every later command fail with TPM_RC_OBJECT_MEMORY.
//
// Every method of Device flushes what it loaded before it returns, so
// between operations dpsd holds nothing. On a TPM dpsd has to itself,
// everything loaded at the start of an operation is therefore stale, and
// a Device flushes it: in its first operation, in the first operation
// after a command that may have loaded something lost its answer, and
// when the TPM runs out of room (then minus what the running operation
// holds, and the refused command is sent again once).

// The handle ranges GetCapability(TPM_CAP_HANDLES) lists by their first
// handle (TPM 2.0 Part 2, 7.2 TPM_HT).
const (
	firstTransient     tpm2.TPMHandle = 0x80000000 // TPM_HT_TRANSIENT
	firstLoadedSession tpm2.TPMHandle = 0x02000000 // TPM_HT_LOADED_SESSION
	firstSavedSession  tpm2.TPMHandle = 0x03000000 // TPM_HT_SAVED_SESSION
)

// sweep says when a Device flushes what it finds loaded.
type sweep int

const (
	// sweepNever: the Device only looks (OpenInspect, for dpsd check).
	sweepNever sweep = iota
	// sweepOnDemand: on running out of room and after a lost answer.
	sweepOnDemand
	// sweepAtOpen: also leftovers from before dpsd opened the TPM, when
	// its owner asks (FlushLeftovers).
	sweepAtOpen
)

// sweepFor is the sweep of a TPM path: /dev/tpmrm* has the kernel's
// resource manager, whose per-file view starts empty and holds only
// dpsd's own handles; every other TPM may hold anyone's leftovers.
func sweepFor(path string) sweep {
	if strings.HasPrefix(path, "/dev/tpmrm") {
		return sweepOnDemand
	}
	return sweepAtOpen
}

// Transients is what a TPM holds between two operations of a Device.
type Transients struct {
	// Objects are the transient object handles (0x80xxxxxx).
	Objects []uint32
	// Sessions are the loaded (0x02xxxxxx) and saved (0x03xxxxxx) sessions.
	Sessions []uint32
	// ObjectRoom is TPM_PT_HR_TRANSIENT_AVAIL: how many more objects fit;
	// at 0 every command that loads a key fails.
	ObjectRoom int
}

// Transients lists the transient objects and sessions the TPM holds. Behind
// /dev/tpmrm0 these are only this Device's own.
func (d *Device) Transients(ctx context.Context) (Transients, error) {
	var tr Transients
	err := d.do(ctx, "listing transient objects and sessions", func(t transport.TPM) error {
		hs, err := loadedHandles(t)
		if err != nil {
			return err
		}
		for _, h := range slices.DeleteFunc(hs, d.keeps) {
			if h>>24 == firstTransient>>24 {
				tr.Objects = append(tr.Objects, uint32(h))
			} else {
				tr.Sessions = append(tr.Sessions, uint32(h))
			}
		}
		props, err := properties(t, tpm2.TPMPTHRTransientAvail, tpm2.TPMPTHRTransientAvail)
		tr.ObjectRoom = int(props[tpm2.TPMPTHRTransientAvail])
		return err
	})
	return tr, err
}

// FlushLeftovers flushes what a TPM without a resource manager holds from
// before dpsd opened it: other programs' objects and sessions, or those of
// a dpsd killed mid-operation. The daemon calls it once it is up, so that
// READY waits for no handle listing; until then a TPM full of leftovers is
// flushed on demand (a command refused for room is sent again once). On
// /dev/tpmrm0 it does nothing: the kernel gives dpsd an empty view.
func (d *Device) FlushLeftovers(ctx context.Context) error {
	if d.sweep != sweepAtOpen {
		return nil
	}
	return d.do(ctx, "flushing what was left in the TPM", func(t transport.TPM) error {
		_, err := t.(*countingTPM).flushStale("left in the TPM before dpsd opened it")
		return err
	})
}

// LoadedHandles lists transient objects and sessions, for leak checks:
// after every method of this package returns, there are none (unless
// another TPM client holds some). The session tokens reuse (bus.go) is
// the Device's own and not listed: it lives until Close.
func (d *Device) LoadedHandles(ctx context.Context) ([]tpm2.TPMHandle, error) {
	var hs []tpm2.TPMHandle
	err := d.do(ctx, "listing loaded handles", func(t transport.TPM) (err error) {
		hs, err = loadedHandles(t)
		hs = slices.DeleteFunc(hs, d.keeps)
		return err
	})
	return hs, err
}

// keeps reports whether h is a handle the Device holds between operations
// on purpose: the session tokens reuse. Sweeps spare it.
func (d *Device) keeps(h tpm2.TPMHandle) bool {
	return d.kept != nil && h == d.kept.Handle()
}

// loadedHandles lists transient objects, loaded sessions and saved
// sessions (which take session slots too).
func loadedHandles(t transport.TPM) ([]tpm2.TPMHandle, error) {
	return listHandles(t, firstTransient, firstLoadedSession, firstSavedSession)
}

// listHandles lists the handles of the ranges that start at firsts.
func listHandles(t transport.TPM, firsts ...tpm2.TPMHandle) ([]tpm2.TPMHandle, error) {
	var all []tpm2.TPMHandle
	for _, first := range firsts {
		hs, err := handles(t, first)
		if err != nil {
			return nil, err
		}
		all = append(all, hs...)
	}
	return all, nil
}

// handles lists what GetCapability(TPM_CAP_HANDLES) answers for the range
// that starts at first. For sessions the question, not the answer, says
// loaded or saved: both lists hold HMAC (0x02…) and policy (0x03…) session
// handles alike (TPM 2.0 Part 3, 30.2), so an answer is kept whatever its
// type, and the next page is asked for within the same range.
func handles(t transport.TPM, first tpm2.TPMHandle) ([]tpm2.TPMHandle, error) {
	keep := func(h tpm2.TPMHandle) bool { return h>>24 == first>>24 }
	if first != firstTransient {
		keep = isSession
	}
	var out []tpm2.TPMHandle
	for next := first; ; {
		rsp, err := run(t, tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(next), PropertyCount: 64})
		if err != nil {
			return nil, err
		}
		list, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, fmt.Errorf("decoding handle list: %w", err)
		}
		for _, h := range list.Handle {
			if keep(h) {
				out = append(out, h)
			}
		}
		if !rsp.MoreData || len(list.Handle) == 0 {
			return out, nil
		}
		after := first | (list.Handle[len(list.Handle)-1]&0x00FFFFFF + 1)
		if after <= next {
			return out, nil
		}
		next = after
	}
}

// isSession reports whether h is an HMAC or a policy session handle.
func isSession(h tpm2.TPMHandle) bool {
	return h>>24 == firstLoadedSession>>24 || h>>24 == firstSavedSession>>24
}

// flushStale flushes every transient object and session the TPM holds
// except those the running operation loaded, and logs what it flushed and
// why. It returns how many it flushed.
func (c *countingTPM) flushStale(why string) (int, error) {
	ranges := []tpm2.TPMHandle{firstTransient, firstLoadedSession, firstSavedSession}
	if c.d.sweep != sweepAtOpen {
		// Behind the kernel's resource manager the saved sessions are
		// other programs', swapped out while dpsd's command runs.
		ranges = ranges[:2]
	}
	hs, err := listHandles(c, ranges...)
	if err != nil {
		return 0, fmt.Errorf("listing leftover objects and sessions: %w", err)
	}
	var flushed []string
	var errs []error
	for _, h := range hs {
		if c.held[h] || c.d.keeps(h) {
			continue
		}
		_, err := run(c, tpm2.FlushContext{FlushHandle: h})
		switch {
		case err == nil:
			flushed = append(flushed, fmt.Sprintf("0x%08x", uint32(h)))
		case !isNoObject(err): // gone meanwhile is as good as flushed
			errs = append(errs, fmt.Errorf("flushing leftover 0x%08x: %w", uint32(h), err))
		}
	}
	if len(flushed) > 0 {
		c.d.log.Info("flushed transient objects and sessions left in the TPM", "why", why,
			"count", len(flushed), "handles", strings.Join(flushed, " "))
	}
	return len(flushed), errors.Join(errs...)
}

// sweepPending runs the flush the Device owes before the operation's own
// commands: at open, or after a command whose answer was lost. A failure
// is logged and the flush tried again by the next operation; this one
// goes ahead, since it may well find room.
func (c *countingTPM) sweepPending() {
	why := c.d.pendingSweep
	if why == "" {
		return
	}
	if _, err := c.flushStale(why); err != nil {
		c.d.log.Warn("flushing what was left in the TPM failed", "why", why, "err", err)
		return
	}
	c.d.pendingSweep = ""
}

// roomCodes say the TPM has no room for one more object or session; a
// command answered so was not executed.
var roomCodes = []tpm2.TPMRC{tpm2.TPMRCObjectMemory, tpm2.TPMRCSessionMemory, tpm2.TPMRCMemory,
	tpm2.TPMRCObjectHandles, tpm2.TPMRCSessionHandles}

// outOfRoom reports whether a response carries one of roomCodes.
func outOfRoom(rsp []byte) bool {
	return slices.Contains(roomCodes, responseCode(rsp))
}

// isOutOfRoom reports whether a command failed with one of roomCodes.
func isOutOfRoom(err error) bool {
	return slices.ContainsFunc(roomCodes, func(rc tpm2.TPMRC) bool { return errors.Is(err, rc) })
}

// track keeps the set of handles the running operation holds up to date
// from one exchange, so that flushing leftovers mid-operation spares them.
// A command that may have loaded something and got no answer leaves an
// object of unknown handle: the next operation flushes it.
func (c *countingTPM) track(cmd, rsp []byte, sendErr error) {
	cc := commandCode(cmd)
	if sendErr != nil {
		if loadsHandle[cc] && c.d.sweep != sweepNever {
			c.d.pendingSweep = "TPM2_" + commandName(cc) + " lost its answer"
		}
		return
	}
	if responseCode(rsp) != tpm2.TPMRCSuccess {
		return
	}
	switch {
	case loadsHandle[cc] && len(rsp) >= 14:
		c.held[tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))] = true
	case cc == tpm2.TPMCCFlushContext && len(cmd) >= 14:
		// Its handle is a parameter, the first bytes after the header.
		delete(c.held, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
	case (cc == tpm2.TPMCCSequenceComplete || cc == tpm2.TPMCCEventSequenceComplete) && len(cmd) >= 14:
		delete(c.held, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
	}
}

// loadsHandle are the commands that answer with a new transient object or
// session handle (TPM 2.0 Part 3).
var loadsHandle = map[tpm2.TPMCC]bool{
	tpm2.TPMCCCreatePrimary:     true,
	tpm2.TPMCCCreateLoaded:      true,
	tpm2.TPMCCLoad:              true,
	tpm2.TPMCCLoadExternal:      true,
	tpm2.TPMCCContextLoad:       true,
	tpm2.TPMCCStartAuthSession:  true,
	tpm2.TPMCCHMACStart:         true, // also TPM2_MAC_Start
	tpm2.TPMCCHashSequenceStart: true,
}

// responseCode reads the response code from a response's header.
func responseCode(rsp []byte) tpm2.TPMRC {
	if len(rsp) < 10 {
		return 0
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
}
