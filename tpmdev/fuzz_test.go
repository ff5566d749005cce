package tpmdev_test

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
	"github.com/google/go-tpm/tpm2"
)

// scriptedTPM answers each command from a fuzzer-chosen script: an error
// code, or a success header followed by arbitrary bytes, so that every
// response parser runs on input no TPM would send.
type scriptedTPM struct{ script []byte }

var errScriptEnd = errors.New("script ended")

func (s *scriptedTPM) next(n int) []byte {
	n = min(n, len(s.script))
	b := s.script[:n]
	s.script = s.script[n:]
	return b
}

func (s *scriptedTPM) Send(cmd []byte) ([]byte, error) {
	if len(s.script) == 0 {
		return nil, errScriptEnd
	}
	sel := s.next(1)[0]
	rsp := make([]byte, 10, 64)
	copy(rsp, cmd[:2]) // the command's tag: with or without sessions
	if sel&1 == 1 {
		rc := s.next(4)
		rsp = append(rsp[:6], make([]byte, 4)...)
		copy(rsp[6:], rc)
		binary.BigEndian.PutUint16(rsp, uint16(tpm2.TPMSTNoSessions))
	} else {
		rsp = append(rsp, s.next(int(sel>>1))...)
	}
	binary.BigEndian.PutUint32(rsp[2:], uint32(len(rsp)))
	return rsp, nil
}

// FuzzTPMResponses: whatever the TPM answers, every method returns (an
// error, usually) and never panics.
func FuzzTPMResponses(f *testing.F) {
	f.Add([]byte{0x01, 0x00, 0x00, 0x01, 0x8b})
	f.Add([]byte{0x40, 0, 0, 0, 0, 0x10, 0, 1, 0, 0xb})
	f.Add(make([]byte, 64))
	srkPub := tpm2.Marshal(tpm2.New2B(tpm2.RSASRKTemplate))
	ekPub := tpm2.Marshal(tpm2.New2B(tpm2.RSAEKTemplate))
	f.Fuzz(func(t *testing.T, script []byte) {
		dev := tpmdev.OpenTransport(&scriptedTPM{script: script}, "scripted", nil)
		ctx := context.Background()
		key := &tpmdev.WrappedKey{Public: srkPub, Private: []byte{0, 1, 0}}
		blob := &authblob.Blob{CredentialBlob: []byte{1}, Secret: []byte{2}, Duplicate: []byte{3}, InSymSeed: []byte{4}, Public: ekPub[2:]}
		dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
		dev.EnsureSRK(ctx, nil)
		dev.Ownership(ctx)
		dev.EKCertificate(ctx)
		dev.Fingerprint(ctx)
		dev.ActivateAndImport(ctx, blob, nil)
		dev.HMAC(ctx, key, make([]byte, 3000))
		dev.Persist(ctx, key, 0x81000100, nil)
		dev.Seal(ctx, []byte("s"))
		dev.LoadedHandles(ctx)
	})
}
