package tpmdev

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func TestSweepFor(t *testing.T) {
	for path, want := range map[string]sweep{
		"/dev/tpmrm0":             sweepOnDemand, // the kernel's per-file view starts empty
		"/dev/tpm0":               sweepAtOpen,
		"swtpm:/run/swtpm/s.sock": sweepAtOpen,
		"mssim:127.0.0.1:2321":    sweepAtOpen,
	} {
		if got := sweepFor(path); got != want {
			t.Errorf("sweepFor(%q) = %d, want %d", path, got, want)
		}
	}
}

// header makes a command or response header with code and a 4-byte body.
func header(code uint32, body uint32) []byte {
	b := make([]byte, 14)
	binary.BigEndian.PutUint16(b, uint16(tpm2.TPMSTNoSessions))
	binary.BigEndian.PutUint32(b[2:], 14)
	binary.BigEndian.PutUint32(b[6:], code)
	binary.BigEndian.PutUint32(b[10:], body)
	return b
}

func TestTrack(t *testing.T) {
	lost := errors.New("connection reset")
	for _, tc := range []struct {
		name    string
		sweep   sweep
		cmd     []byte
		rsp     []byte
		err     error
		held    []tpm2.TPMHandle // before
		want    []tpm2.TPMHandle // after
		pending bool
	}{
		{"Load answered", sweepAtOpen, header(uint32(tpm2.TPMCCLoad), 0x81000001), header(0, 0x80000001), nil,
			nil, []tpm2.TPMHandle{0x80000001}, false},
		{"Load refused", sweepAtOpen, header(uint32(tpm2.TPMCCLoad), 0x81000001), header(uint32(tpm2.TPMRCObjectMemory), 0), nil,
			nil, nil, false},
		{"StartAuthSession answered", sweepAtOpen, header(uint32(tpm2.TPMCCStartAuthSession), 0x40000007), header(0, 0x03000000), nil,
			nil, []tpm2.TPMHandle{0x03000000}, false},
		{"FlushContext", sweepAtOpen, header(uint32(tpm2.TPMCCFlushContext), 0x80000001), header(0, 0), nil,
			[]tpm2.TPMHandle{0x80000000, 0x80000001}, []tpm2.TPMHandle{0x80000000}, false},
		{"SequenceComplete", sweepAtOpen, header(uint32(tpm2.TPMCCSequenceComplete), 0x80000002), header(0, 0), nil,
			[]tpm2.TPMHandle{0x80000002}, nil, false},
		{"CreatePrimary lost its answer", sweepOnDemand, header(uint32(tpm2.TPMCCCreatePrimary), 0x40000001), nil, lost,
			nil, nil, true},
		{"Unseal lost its answer", sweepAtOpen, header(uint32(tpm2.TPMCCUnseal), 0x80000000), nil, lost,
			[]tpm2.TPMHandle{0x80000000}, []tpm2.TPMHandle{0x80000000}, false},
		{"inspecting: a lost answer is left alone", sweepNever, header(uint32(tpm2.TPMCCLoad), 0x81000001), nil, lost,
			nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDevice("test", nil, slog.New(slog.DiscardHandler))
			d.sweep = tc.sweep
			c := &countingTPM{d: d, held: map[tpm2.TPMHandle]bool{}}
			for _, h := range tc.held {
				c.held[h] = true
			}
			c.track(tc.cmd, tc.rsp, tc.err)
			if len(c.held) != len(tc.want) {
				t.Errorf("held %v, want %#x", c.held, tc.want)
			}
			for _, h := range tc.want {
				if !c.held[h] {
					t.Errorf("held %v, want %#x", c.held, tc.want)
				}
			}
			if (d.pendingSweep != "") != tc.pending {
				t.Errorf("pending sweep %q, want one: %v", d.pendingSweep, tc.pending)
			}
		})
	}
}
