package tpmtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// recorder keeps the last command it was sent and answers with rsp.
type recorder struct {
	cmd    []byte
	rsp    []byte
	closed bool
}

var errRecorded = errors.New("recorded, not executed")

func (r *recorder) Send(cmd []byte) ([]byte, error) {
	r.cmd = append([]byte(nil), cmd...)
	if r.rsp == nil {
		return nil, errRecorded
	}
	return r.rsp, nil
}

func (r *recorder) Close() error { r.closed = true; return nil }

// marshal returns the bytes go-tpm sends for cmd.
func marshal(t *testing.T, cmd interface {
	Execute(transport.TPM, ...tpm2.Session) (any, error)
}) []byte {
	t.Helper()
	r := &recorder{}
	if _, err := cmd.Execute(r); !errors.Is(err, errRecorded) {
		t.Fatalf("executing %T: %v", cmd, err)
	}
	return r.cmd
}

// executor adapts go-tpm's typed Execute methods to one signature.
type executor[R any] struct {
	exec func(transport.TPM, ...tpm2.Session) (R, error)
}

func (e executor[R]) Execute(t transport.TPM, s ...tpm2.Session) (any, error) {
	return e.exec(t, s...)
}

func TestModelLatency(t *testing.T) {
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	parent := tpm2.AuthHandle{Handle: 0x81000001, Name: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 1}}, Auth: tpm2.PasswordAuth(nil)}
	sealed := tpm2.New2B(tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true},
	})
	tests := []struct {
		name   string
		cmd    []byte
		want   Latency
		rsaGen bool
	}{
		{"CreatePrimary RSA (EK)", marshal(t, executor[*tpm2.CreatePrimaryResponse]{tpm2.CreatePrimary{
			PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
			InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
		}.Execute}), RSAKeyGeneration, true},
		{"CreatePrimary RSA (SRK)", marshal(t, executor[*tpm2.CreatePrimaryResponse]{tpm2.CreatePrimary{
			PrimaryHandle: owner,
			InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
		}.Execute}), RSAKeyGeneration, true},
		{"CreatePrimary ECC", marshal(t, executor[*tpm2.CreatePrimaryResponse]{tpm2.CreatePrimary{
			PrimaryHandle: owner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute}), ECCKeyGeneration, false},
		{"Create sealed data", marshal(t, executor[*tpm2.CreateResponse]{tpm2.Create{
			ParentHandle: parent,
			InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: make([]byte, 32)})}},
			InPublic:     sealed,
		}.Execute}), DiscreteLatencies[tpm2.TPMCCCreate], false},
		{"Create RSA child", marshal(t, executor[*tpm2.CreateResponse]{tpm2.Create{
			ParentHandle: parent,
			InPublic:     tpm2.New2B(tpm2.RSASRKTemplate),
		}.Execute}), RSAKeyGeneration, true},
		{"ReadPublic", marshal(t, executor[*tpm2.ReadPublicResponse]{tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(0x81000001)}.Execute}),
			DiscreteLatencies[tpm2.TPMCCReadPublic], false},
		{"StartAuthSession", marshal(t, executor[*tpm2.StartAuthSessionResponse]{tpm2.StartAuthSession{
			TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
			SessionType: tpm2.TPMSEHMAC, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256,
		}.Execute}), DiscreteLatencies[tpm2.TPMCCStartAuthSession], false},
		{"StartAuthSession salted", marshal(t, executor[*tpm2.StartAuthSessionResponse]{tpm2.StartAuthSession{
			TPMKey: tpm2.TPMHandle(0x81010001), Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: make([]byte, 16)},
			EncryptedSalt: tpm2.TPM2BEncryptedSecret{Buffer: make([]byte, 256)},
			SessionType:   tpm2.TPMSEHMAC, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256,
		}.Execute}), SaltedSession, false},
		{"unlisted command", marshal(t, executor[*tpm2.ReadClockResponse]{tpm2.ReadClock{}.Execute}), OtherLatency, false},
		{"truncated", []byte{0x80, 0x01, 0, 0}, OtherLatency, false},
		{"CreatePrimary cut short", []byte{0x80, 0x02, 0, 0, 0, 20, 0, 0, 0x01, 0x31, 0x40, 0, 0, 1, 0, 0, 0, 9}, DiscreteLatencies[tpm2.TPMCCCreatePrimary], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, rsaGen := ModelLatency(tt.cmd)
			if got != tt.want || rsaGen != tt.rsaGen {
				t.Errorf("ModelLatency = %v, %v; want %v, %v", got, rsaGen, tt.want, tt.rsaGen)
			}
		})
	}
}

func TestLatencyTPM(t *testing.T) {
	ek := marshal(t, executor[*tpm2.CreatePrimaryResponse]{tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tpm2.RSAEKTemplate),
	}.Execute})
	readPublic := marshal(t, executor[*tpm2.ReadPublicResponse]{tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(0x81000001)}.Execute})

	run := func(seed uint64) (*LatencyTPM, *recorder, []time.Duration) {
		r := &recorder{rsp: []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}}
		l := WithLatency(r, seed)
		var slept []time.Duration
		l.sleep = func(d time.Duration) { slept = append(slept, d) }
		for _, cmd := range [][]byte{ek, readPublic, ek} {
			rsp, err := l.Send(cmd)
			if err != nil || len(rsp) != 10 {
				t.Fatalf("Send: %x, %v", rsp, err)
			}
		}
		return l, r, slept
	}

	l, r, slept := run(7)
	if n := l.RSAKeyGenerations(); n != 2 {
		t.Errorf("RSAKeyGenerations = %d, want 2", n)
	}
	var sum time.Duration
	for _, d := range slept {
		sum += d
	}
	if len(slept) != 3 || sum > l.Modelled() {
		t.Errorf("slept %v in all %v, modelled %v: want one sleep per command, never more than the model", slept, sum, l.Modelled())
	}
	lo := 2*RSAKeyGeneration.Min + DiscreteLatencies[tpm2.TPMCCReadPublic].Min
	hi := 2*RSAKeyGeneration.Max + DiscreteLatencies[tpm2.TPMCCReadPublic].Max
	if m := l.Modelled(); m < lo || m > hi {
		t.Errorf("Modelled = %v, want within [%v, %v]", m, lo, hi)
	}
	if again, _, _ := run(7); again.Modelled() != l.Modelled() {
		t.Errorf("the same seed modelled %v, then %v", l.Modelled(), again.Modelled())
	}
	if err := l.Close(); err != nil || !r.closed {
		t.Errorf("Close = %v, wrapped transport closed %v", err, r.closed)
	}
}

func TestOpenWithLatency(t *testing.T) {
	info := StartSwtpm(t, "")
	boot := func() (int, time.Duration) {
		dev, lat, err := OpenWithLatency(info, 1, Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		lat.sleep = func(time.Duration) {} // the model's sum is what counts here
		if _, err := dev.EnsureEK(context.Background(), tpmdev.EKTemplateTCG, nil, nil); err != nil {
			t.Fatalf("EnsureEK: %v", err)
		}
		return lat.RSAKeyGenerations(), lat.Modelled()
	}
	if n, m := boot(); n != 1 || m < RSAKeyGeneration.Min {
		t.Errorf("first boot: %d RSA key generations, %v modelled; want 1 and at least %v", n, m, RSAKeyGeneration.Min)
	}
	if n, m := boot(); n != 0 || m >= RSAKeyGeneration.Min {
		t.Errorf("second boot: %d RSA key generations, %v modelled; want the persisted EK read back", n, m)
	}
}
