package tpmtest

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// BusRecorder is an interposer on the TPM bus: a proxy in front of an
// swtpm's command socket that keeps every byte both ways, as a logic
// analyser on SPI or LPC would, and may rewrite answers as an active
// interposer would. Point dpsd at Spec instead of the swtpm.
type BusRecorder struct {
	// Socket is the proxy's unix socket.
	Socket string

	mu        sync.Mutex
	raw       bytes.Buffer
	exchanges []Exchange
	tamper    func(cmd, rsp []byte) []byte
}

// Exchange is one command and the answer the client got (after any
// tampering).
type Exchange struct {
	Command, Response []byte
}

// simSendCommand is TPM_SEND_COMMAND of the simulator framing swtpm
// speaks on its command socket (see tpmdev/socket.go).
const simSendCommand = 8

// RecordBus starts a recorder in front of the swtpm info describes; it
// stops when the test ends.
func RecordBus(t testing.TB, info SwtpmInfo) *BusRecorder {
	t.Helper()
	if info.Socket == "" {
		t.Fatal("RecordBus needs an swtpm on a unix socket")
	}
	dir, err := os.MkdirTemp("", "tpmbus")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b := &BusRecorder{Socket: filepath.Join(dir, "bus.sock")}
	ln, err := net.Listen("unix", b.Socket)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer client.Close()
				server, err := net.Dial("unix", info.Socket)
				if err != nil {
					return
				}
				defer server.Close()
				b.relay(client, server)
			}()
		}
	}()
	return b
}

// Spec is the device value that reaches the TPM through the recorder.
func (b *BusRecorder) Spec() string { return "swtpm:" + b.Socket }

// Tamper installs f, which sees each command and its answer and returns
// the answer to pass on (nil: pass the TPM's).
func (b *BusRecorder) Tamper(f func(cmd, rsp []byte) []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tamper = f
}

// Bytes is everything that crossed the bus so far, framing included.
func (b *BusRecorder) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.raw.Bytes())
}

// Exchanges are the commands and answers so far, in order.
func (b *BusRecorder) Exchanges() []Exchange {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Exchange(nil), b.exchanges...)
}

// CommandCode reads the command code from a command's header.
func CommandCode(cmd []byte) tpm2.TPMCC {
	if len(cmd) < 10 {
		return 0
	}
	return tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
}

// relay passes framed commands and answers until either side hangs up.
func (b *BusRecorder) relay(client, server net.Conn) {
	for {
		var hdr [9]byte
		if _, err := io.ReadFull(client, hdr[:]); err != nil {
			return
		}
		if binary.BigEndian.Uint32(hdr[0:4]) != simSendCommand {
			return // dpsd sends nothing else
		}
		cmd, err := readSized(client, binary.BigEndian.Uint32(hdr[5:9]))
		if err != nil {
			return
		}
		b.keep(hdr[:], cmd)
		if _, err := server.Write(append(hdr[:], cmd...)); err != nil {
			return
		}
		var n [4]byte
		if _, err := io.ReadFull(server, n[:]); err != nil {
			return
		}
		rsp, err := readSized(server, binary.BigEndian.Uint32(n[:]))
		if err != nil {
			return
		}
		var status [4]byte
		if _, err := io.ReadFull(server, status[:]); err != nil {
			return
		}
		b.mu.Lock()
		if b.tamper != nil {
			if alt := b.tamper(cmd, rsp); alt != nil {
				rsp = alt
			}
		}
		b.mu.Unlock()
		framed := binary.BigEndian.AppendUint32(nil, uint32(len(rsp)))
		framed = append(append(framed, rsp...), status[:]...)
		b.keep(framed)
		b.mu.Lock()
		b.exchanges = append(b.exchanges, Exchange{Command: cmd, Response: rsp})
		b.mu.Unlock()
		if _, err := client.Write(framed); err != nil {
			return
		}
	}
}

func (b *BusRecorder) keep(parts ...[]byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range parts {
		b.raw.Write(p)
	}
}

func readSized(r io.Reader, n uint32) ([]byte, error) {
	if n > 64<<10 {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	buf := make([]byte, n)
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// ActivateCredentialArgs returns the credentialBlob and secret of a
// recorded TPM2_ActivateCredential (TPM 2.0 Part 3, 12.5: two handles,
// the authorization area, then the two TPM2B parameters, which are not
// secret: they are sealed to the EK).
func ActivateCredentialArgs(cmd []byte) (credentialBlob, secret []byte, err error) {
	if CommandCode(cmd) != tpm2.TPMCCActivateCredential || len(cmd) < 22 {
		return nil, nil, errors.New("not a TPM2_ActivateCredential with sessions")
	}
	off := 18 + 4 + int(binary.BigEndian.Uint32(cmd[18:22]))
	next := func() ([]byte, error) {
		if len(cmd) < off+2 {
			return nil, errors.New("truncated")
		}
		n := int(binary.BigEndian.Uint16(cmd[off:]))
		if len(cmd) < off+2+n {
			return nil, errors.New("truncated")
		}
		p := cmd[off+2 : off+2+n]
		off += 2 + n
		return p, nil
	}
	if credentialBlob, err = next(); err != nil {
		return nil, nil, err
	}
	secret, err = next()
	return credentialBlob, secret, err
}

// ActivateCredential unwraps a credential with the swtpm's persistent EK
// (tpmdev.EKHandle, empty endorsement auth) bound to its SRK (SRKHandle),
// straight on its socket, and returns the plain credential: what a bus
// recording must never show.
func ActivateCredential(t testing.TB, info SwtpmInfo, credentialBlob, secret []byte) []byte {
	t.Helper()
	tpm, err := linuxudstpm.Open(info.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	names := map[tpm2.TPMHandle]tpm2.TPM2BName{}
	for _, h := range []tpm2.TPMHandle{tpmdev.SRKHandle, tpmdev.EKHandle} {
		rsp, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(tpm)
		if err != nil {
			t.Fatalf("reading 0x%08x: %v", uint32(h), err)
		}
		names[h] = rsp.Name
	}
	sess, closeSess, err := tpm2.PolicySession(tpm, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer closeSess()
	if _, err := (tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: sess.Handle(),
		NonceTPM:      sess.NonceTPM(),
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	rsp, err := (tpm2.ActivateCredential{
		ActivateHandle: tpm2.NamedHandle{Handle: tpmdev.SRKHandle, Name: names[tpmdev.SRKHandle]},
		KeyHandle:      tpm2.AuthHandle{Handle: tpmdev.EKHandle, Name: names[tpmdev.EKHandle], Auth: sess},
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: secret},
	}).Execute(tpm)
	if err != nil {
		t.Fatalf("activating the recorded credential: %v", err)
	}
	return rsp.CertInfo.Buffer
}

// SubstituteEK is an active interposer's ReadPublic answer for the EK: a
// key of its own with the EK's template (a random modulus) and its Name
// computed to match, so that only a record of the real EK tells them
// apart.
func SubstituteEK(t testing.TB) []byte {
	t.Helper()
	pub := tpm2.RSAEKTemplate
	modulus := make([]byte, 256)
	if _, err := rand.Read(modulus); err != nil {
		t.Fatal(err)
	}
	modulus[0] |= 0x80
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: modulus})
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	body := tpm2.Marshal(tpm2.New2B(pub))
	body = append(body, tpm2.Marshal(*name)...)
	body = append(body, tpm2.Marshal(*name)...) // qualifiedName: dpsd does not read it
	rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
	rsp = binary.BigEndian.AppendUint32(rsp, uint32(10+len(body)))
	rsp = binary.BigEndian.AppendUint32(rsp, 0)
	return append(rsp, body...)
}

// IsReadPublic reports whether cmd is TPM2_ReadPublic of handle h.
func IsReadPublic(cmd []byte, h tpm2.TPMHandle) bool {
	return CommandCode(cmd) == tpm2.TPMCCReadPublic && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:])) == h
}

// secretCommands are the commands that carry or return a secret (with bus
// protection on, also StartAuthSession of the salted sessions they use).
var secretCommands = []tpm2.TPMCC{
	tpm2.TPMCCHierarchyChanegAuth, tpm2.TPMCCCreate, tpm2.TPMCCUnseal, tpm2.TPMCCActivateCredential,
	tpm2.TPMCCImport, tpm2.TPMCCHMAC, tpm2.TPMCCSequenceComplete, tpm2.TPMCCStartAuthSession,
}

// SecretCommandsSince lists (as hexadecimal command codes) the commands
// carrying or returning a secret among the exchanges from index from on.
func (b *BusRecorder) SecretCommandsSince(from int) []string {
	var out []string
	for _, e := range b.Exchanges()[from:] {
		if cc := CommandCode(e.Command); slices.Contains(secretCommands, cc) {
			out = append(out, fmt.Sprintf("0x%x", uint32(cc)))
		}
	}
	return out
}

// ActivateCredentialsSince returns the TPM2_ActivateCredential commands
// among the exchanges from index from on.
func (b *BusRecorder) ActivateCredentialsSince(from int) [][]byte {
	var out [][]byte
	for _, e := range b.Exchanges()[from:] {
		if CommandCode(e.Command) == tpm2.TPMCCActivateCredential {
			out = append(out, e.Command)
		}
	}
	return out
}
