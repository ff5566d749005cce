package tpmdev_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// TestBusCarriesNoSecret runs every operation that sends or receives a
// secret through a bus recorder and searches the recording for each
// secret: none may show with protection on, each must show with it off
// (so that the search can fail).
func TestBusCarriesNoSecret(t *testing.T) {
	for _, tc := range []struct {
		protect tpmdev.BusProtection
		want    bool // secrets found on the bus
	}{
		{tpmdev.BusEncrypt, false},
		{tpmdev.BusOff, true},
	} {
		t.Run(tc.protect.String(), func(t *testing.T) {
			info := tpmtest.StartSwtpm(t, "")
			bus := tpmtest.RecordBus(t, info)
			dev, err := tpmdev.Open(bus.Spec(), tpmtest.Logger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			dev.SetBusProtection(tc.protect)
			ctx := context.Background()
			secrets := map[string][]byte{}

			ek, srk := provision(t, dev)
			owner := randomBytes(t, 32)
			secrets["owner auth"] = owner
			sealed, err := dev.Seal(ctx, owner)
			if err != nil {
				t.Fatal(err)
			}
			if err := dev.SetOwnerAuth(ctx, nil, owner); err != nil {
				t.Fatal(err)
			}
			if got, err := dev.Unseal(ctx, sealed); err != nil || !bytes.Equal(got, owner) {
				t.Fatalf("Unseal: %v", err)
			}
			// The hub key crosses only inside the duplicate, wrapped with
			// the credential: the credential is what off exposes.
			key := randomBytes(t, 32)
			wk, err := dev.ActivateAndImport(ctx, buildBlobFor(t, ek, srk, key), nil)
			if err != nil {
				t.Fatal(err)
			}
			// Owner-authorized: persisting the key.
			if err := dev.Persist(ctx, wk, 0x81000100, owner); err != nil {
				t.Fatal(err)
			}
			for i, n := range []int{64, 3000} { // one TPM2_HMAC; a sequence
				data := bytes.Repeat([]byte{byte('a' + i)}, n)
				mac, err := dev.HMAC(ctx, wk, data)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(mac, goHMAC(key, data)) {
					t.Fatalf("HMAC of %d bytes differs from software", n)
				}
				secrets["HMAC of "+string(rune('0'+i))] = mac
			}
			if err := dev.SetOwnerAuth(ctx, owner, owner); err != nil {
				t.Fatalf("owner auth in force: %v", err)
			}
			secrets["credential"] = recordedCredential(t, bus, info)
			tpmtest.AssertNoTransientHandles(t, dev)

			rec := bus.Bytes()
			if bytes.Contains(rec, key) {
				t.Error("the hub key crossed the bus")
			}
			for name, s := range secrets {
				if found := bytes.Contains(rec, s) || bytes.Contains(rec, []byte(hex.EncodeToString(s))); found != tc.want {
					t.Errorf("%s on the bus: %v, want %v", name, found, tc.want)
				}
			}
			if tc.protect == tpmdev.BusEncrypt {
				if n := passwordsOnBus(bus); n != 0 {
					t.Errorf("%d password sessions with a non-empty auth on the bus", n)
				}
			}
		})
	}
}

// recordedCredential unwraps, straight on the swtpm, the last credential
// the recorder saw activated: the plain value the bus must not show.
func recordedCredential(t *testing.T, bus *tpmtest.BusRecorder, info tpmtest.SwtpmInfo) []byte {
	t.Helper()
	cmds := bus.ActivateCredentialsSince(0)
	if len(cmds) == 0 {
		t.Fatal("no ActivateCredential on the bus")
	}
	blob, secret, err := tpmtest.ActivateCredentialArgs(cmds[len(cmds)-1])
	if err != nil {
		t.Fatalf("the recorded ActivateCredential: %v", err)
	}
	return tpmtest.ActivateCredential(t, info, blob, secret)
}

// passwordsOnBus counts password authorizations (TPM_RS_PW) with a
// non-empty value in the recorded commands.
func passwordsOnBus(bus *tpmtest.BusRecorder) int {
	n := 0
	for _, e := range bus.Exchanges() {
		cmd := e.Command
		if len(cmd) < 10 || tpm2.TPMST(binary.BigEndian.Uint16(cmd)) != tpm2.TPMSTSessions {
			continue
		}
		// Sessions follow the handles; find them by scanning for
		// TPM_RS_PW and reading its auth (nonce 0, attrs, hmac size).
		for i := 10; i+9 <= len(cmd); i++ {
			if tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[i:])) == tpm2.TPMRSPW &&
				binary.BigEndian.Uint16(cmd[i+4:]) == 0 && binary.BigEndian.Uint16(cmd[i+7:]) != 0 {
				n++
			}
		}
	}
	return n
}

// provisionedOnBus is an swtpm with its EK and SRK, behind a bus recorder.
func provisionedOnBus(t *testing.T) *tpmtest.BusRecorder {
	t.Helper()
	info := tpmtest.StartSwtpm(t, "")
	setup, err := tpmdev.Open(info.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	provision(t, setup)
	setup.Close()
	return tpmtest.RecordBus(t, info)
}

// TestTamperedSaltKeyIsRefused: an interposer that rewrites the EK's
// public area in ReadPublic's answer (to a key of its own) is caught
// before any secret is sent: the area no longer hashes to the Name.
func TestTamperedSaltKeyIsRefused(t *testing.T) {
	ctx := context.Background()
	bus := provisionedOnBus(t)
	bus.Tamper(func(cmd, rsp []byte) []byte {
		if !tpmtest.IsReadPublic(cmd, tpmdev.EKHandle) || len(rsp) < 300 {
			return nil
		}
		alt := bytes.Clone(rsp)
		alt[200] ^= 0xff // inside the modulus
		return alt
	})
	dev, err := tpmdev.Open(bus.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.ReadEK(ctx); !errors.Is(err, tpmdev.ErrBusTampered) {
		t.Errorf("ReadEK: %v, want ErrBusTampered", err)
	}
	if _, err := dev.Seal(ctx, []byte("secret")); !errors.Is(err, tpmdev.ErrBusTampered) {
		t.Errorf("Seal: %v, want ErrBusTampered", err)
	}
	if err := dev.SetOwnerAuth(ctx, nil, []byte("secret")); !errors.Is(err, tpmdev.ErrBusTampered) {
		t.Errorf("SetOwnerAuth: %v, want ErrBusTampered", err)
	}
	if sent := bus.SecretCommandsSince(0); len(sent) > 0 {
		t.Errorf("sent %v after the tampered answer, want none of the commands that carry a secret", sent)
	}
	if bytes.Contains(bus.Bytes(), []byte("secret")) {
		t.Error("the secret crossed the bus")
	}
}

// TestForgedMissingEKIsRefused: an error answer carries no HMAC, so an
// interposer can say "no EK at 0x81010001" for free. Once an EK is pinned,
// that must not send dpsd to salt its sessions to another key (the SRK,
// whose public the interposer could forge as well) or to none.
func TestForgedMissingEKIsRefused(t *testing.T) {
	ctx := context.Background()
	bus := provisionedOnBus(t)
	dev, err := tpmdev.Open(bus.Spec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := dev.ReadEK(ctx); err != nil { // pins the EK
		t.Fatal(err)
	}
	mark, markBytes := len(bus.Exchanges()), len(bus.Bytes())
	// TPM_ST_NO_SESSIONS, size 10, TPM_RC_HANDLE | TPM_RC_1.
	handleError := []byte{0x80, 0x01, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x01, 0x8b}
	bus.Tamper(func(cmd, rsp []byte) []byte {
		if tpmtest.IsReadPublic(cmd, tpmdev.EKHandle) {
			return handleError
		}
		return nil
	})
	if _, err := dev.Seal(ctx, []byte("secret")); !errors.Is(err, tpmdev.ErrBusTampered) {
		t.Errorf("Seal with the pinned EK reported missing: %v, want ErrBusTampered", err)
	}
	if sent := bus.SecretCommandsSince(mark); len(sent) > 0 {
		t.Errorf("sent %v after the forged answer, want none of the commands that carry a secret", sent)
	}
	if bytes.Contains(bus.Bytes()[markBytes:], []byte("secret")) {
		t.Error("the secret crossed the bus")
	}
}

// The session tokens reuse is kept across operations; when the TPM loses
// it (a reset, a clear by another client that flushes sessions), the next
// token starts another instead of failing.
func TestKeptSessionLostIsReplaced(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		key := randomBytes(t, 32)
		wk := importKey(t, dev, ek, srk, key)
		data := []byte("resource\n1700000000")
		for i := range 3 {
			mac, err := dev.HMAC(ctx, wk, data)
			if err != nil {
				t.Fatalf("token %d: %v", i+1, err)
			}
			if !bytes.Equal(mac, goHMAC(key, data)) {
				t.Fatalf("token %d: HMAC differs from software", i+1)
			}
			if i > 0 {
				continue
			}
			// Flush every session behind the Device's back.
			err = dev.Exec(ctx, func(tpm transport.TPM) error {
				rsp, err := (tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x02000000, PropertyCount: 64}).Execute(tpm)
				if err != nil {
					return err
				}
				hs, err := rsp.CapabilityData.Data.Handles()
				if err != nil {
					return err
				}
				if len(hs.Handle) != 1 {
					return fmt.Errorf("%d sessions loaded after a token, want the kept one", len(hs.Handle))
				}
				_, err = (tpm2.FlushContext{FlushHandle: hs.Handle[0]}).Execute(tpm)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestPrepareTokens: prepared ahead, the first token sends nothing but
// Load, HMAC and FlushContext.
func TestPrepareTokens(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		key := randomBytes(t, 32)
		wk := importKey(t, dev, ek, srk, key)
		if err := dev.PrepareTokens(ctx); err != nil {
			t.Fatal(err)
		}
		before := dev.Stats()
		data := []byte("resource\n1700000000")
		mac, err := dev.HMAC(ctx, wk, data)
		if err != nil || !bytes.Equal(mac, goHMAC(key, data)) {
			t.Fatalf("HMAC: %v", err)
		}
		after := dev.Stats()
		if n := after.Total - before.Total; n != 3 {
			t.Errorf("the first token took %d TPM commands, want 3 (Load, HMAC, FlushContext)", n)
		}
		if s := after.ByCommand["StartAuthSession"].Count - before.ByCommand["StartAuthSession"].Count; s != 0 {
			t.Errorf("the first token started %d sessions, want 0", s)
		}
	})
}

// TestOwnerAuthWithZeroBytes: an owner auth is any byte string, and a
// random one has a zero byte somewhere about one time in nine. The TPM
// drops only the trailing zeros; every command that proves the auth in an
// HMAC session must key its HMAC with exactly what remains.
func TestOwnerAuthWithZeroBytes(t *testing.T) {
	fill := func(set map[int]byte) []byte {
		b := bytes.Repeat([]byte{0xa5}, 32)
		for i, v := range set {
			b[i] = v
		}
		return b
	}
	for _, tc := range []struct {
		name string
		auth []byte
	}{
		{"no zero", fill(nil)},
		{"leading zero", fill(map[int]byte{0: 0})},
		{"inner zero", fill(map[int]byte{13: 0})},
		{"trailing zero", fill(map[int]byte{31: 0})},
		{"inner and trailing zeros", fill(map[int]byte{5: 0, 30: 0, 31: 0})},
		{"one byte then zeros", fill(map[int]byte{1: 0, 2: 0, 3: 0})[:4]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
				ctx := context.Background()
				ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				owner := tc.auth
				if err := dev.SetOwnerAuth(ctx, nil, owner); err != nil {
					t.Fatalf("setting the owner auth: %v", err)
				}
				// CreatePrimary and EvictControl, both owner-authorized.
				srk, err := dev.EnsureSRK(ctx, owner)
				if err != nil {
					t.Fatalf("EnsureSRK with the owner auth: %v", err)
				}
				wk := importKey(t, dev, ek, srk, randomBytes(t, 32))
				// Proving the auth must still take all of it.
				wrong := bytes.Clone(owner)
				wrong[len(wrong)-1] ^= 0x5a
				if err := dev.Persist(ctx, wk, 0x81000100, wrong); !errors.Is(err, tpmdev.ErrAuthFail) {
					t.Fatalf("Persist with an owner auth wrong in its last byte: %v, want ErrAuthFail", err)
				}
				if err := dev.Persist(ctx, wk, 0x81000100, owner); err != nil {
					t.Fatalf("Persist with the owner auth: %v", err)
				}
				if err := dev.SetOwnerAuth(ctx, owner, nil); err != nil {
					t.Fatalf("clearing the owner auth: %v", err)
				}
			})
		})
	}
}
