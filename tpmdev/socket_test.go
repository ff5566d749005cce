package tpmdev_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
)

// framed is what a simulator-protocol server sends back: the response
// length, the response and the status word.
func framed(length uint32, rsp []byte, status uint32) []byte {
	out := binary.BigEndian.AppendUint32(nil, length)
	out = append(out, rsp...)
	return binary.BigEndian.AppendUint32(out, status)
}

// fakeServer answers one framed command per connection with reply.
func fakeServer(t *testing.T, reply []byte) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tpmsock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			hdr := make([]byte, 9)
			if _, err := io.ReadFull(c, hdr); err == nil && binary.BigEndian.Uint32(hdr) == 8 {
				io.CopyN(io.Discard, c, int64(binary.BigEndian.Uint32(hdr[5:])))
				c.Write(reply)
			}
			c.Close()
		}
	}()
	return path
}

func TestSocketFramingRefusesBadReplies(t *testing.T) {
	// A TPM2_HierarchyChangeAuth success: header, parameterSize 0, one
	// password session's response.
	ok := []byte{0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}
	for _, tc := range []struct {
		name  string
		reply []byte
		ok    bool
	}{
		{"good", framed(19, ok, 0), true},
		{"nothing", nil, false},
		{"length below a header", framed(5, ok[:5], 0), false},
		{"length beyond any TPM response", framed(1<<30, ok, 0), false},
		{"truncated", framed(19, ok, 0)[:12], false},
		{"no status word", framed(19, ok, 0)[:4+19], false},
		{"failure status", framed(19, ok, 1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// OpenInspect: no flush of leftovers first, the command
			// under test is the connection's only one.
			dev, err := tpmdev.OpenInspect("swtpm:"+fakeServer(t, tc.reply), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			err = dev.SetOwnerAuth(context.Background(), nil, nil)
			if (err == nil) != tc.ok {
				t.Errorf("err = %v, want ok %v", err, tc.ok)
			}
		})
	}
}
