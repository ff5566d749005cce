package tpmdev

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// flakyTPM answers each command with the codes in rcs, then success (of a
// command with one password session).
type flakyTPM struct {
	rcs  []tpm2.TPMRC
	sent int
}

func (f *flakyTPM) Send(cmd []byte) ([]byte, error) {
	f.sent++
	if len(f.rcs) > 0 {
		rsp := make([]byte, 10)
		binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
		binary.BigEndian.PutUint32(rsp[2:], 10)
		binary.BigEndian.PutUint32(rsp[6:], uint32(f.rcs[0]))
		f.rcs = f.rcs[1:]
		return rsp, nil
	}
	// Header, parameterSize 0, then the session's empty nonce, its
	// attributes (continueSession) and an empty HMAC.
	rsp := []byte{0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}
	return rsp, nil
}

func TestOnlyUnexecutedCommandsAreResent(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rcs    []tpm2.TPMRC
		sent   int
		failed bool
	}{
		{"success", nil, 1, false},
		{"retry, yielded, testing", []tpm2.TPMRC{tpm2.TPMRCRetry, tpm2.TPMRCYielded, tpm2.TPMRCTesting}, 4, false},
		{"bad auth is not resent", []tpm2.TPMRC{tpm2.TPMRCBadAuth + 0x100}, 1, true},
		{"lockout is not resent", []tpm2.TPMRC{tpm2.TPMRCLockout}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &flakyTPM{rcs: tc.rcs}
			d := OpenTransport(f, "flaky", nil)
			err := d.SetOwnerAuth(context.Background(), nil, nil)
			if (err != nil) != tc.failed || f.sent != tc.sent {
				t.Errorf("sent %d times, err %v; want %d, failed %v", f.sent, err, tc.sent, tc.failed)
			}
			if st := d.Stats(); st.Total != tc.sent || st.ByCommand["HierarchyChangeAuth"].Count != tc.sent {
				t.Errorf("stats %+v", st)
			}
		})
	}
}
