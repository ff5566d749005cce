package e2e

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// TestBusCarriesNoSecret puts a recorder on the TPM bus (between dpsd and
// swtpm), provisions, re-provisions after a clear and gets tokens, then
// searches everything that crossed the bus for the owner auths, the
// challenge credentials, the hub keys and each token's signature. With
// bus_protection = "encrypt" none may show; with "off" the owner auths,
// credentials and signatures must (so the search can fail; the hub key
// crosses only wrapped with the credential).
func TestBusCarriesNoSecret(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		protect string
		exposed bool
	}{
		{"encrypt", false},
		{"off", true},
	} {
		t.Run(tc.protect, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			d := newDevice(t, emu, "")
			bus := tpmtest.RecordBus(t, d.tpm)
			d.writeConfig(fmt.Sprintf("[tpm]\ndevice = %q\nbus_protection = %q\n", bus.Spec(), tc.protect))
			d.enroll(nil)
			exposed := map[string][]byte{} // what "off" shows
			keys := map[string][]byte{}

			d.start()
			first := d.waitProvisioned()
			d.checkBusReport(tc.protect)
			exposed["token signature 1"] = d.hubTokenSig()
			exposed["token signature 2"] = d.hubTokenSig()
			d.stop()
			exposed["owner auth 1"] = d.ownerAuth()
			credentials(t, bus, d.tpm, 0, "first boot", exposed)
			keys["hub key 1"] = emu.deviceKey(first.DeviceID)
			seen := len(bus.Exchanges())

			tpmtest.ClearSwtpm(t, d.tpm)
			d.start()
			again := d.waitFor("re-provisioned after the clear", func(s apitype.Status) bool {
				return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonTPMCleared
			})
			exposed["token signature 3"] = d.hubTokenSig()
			exposed["token signature 4"] = d.hubTokenSig()
			d.stop()
			exposed["owner auth 2"] = d.ownerAuth()
			credentials(t, bus, d.tpm, seen, "after the clear", exposed)
			keys["hub key 2"] = emu.deviceKey(again.DeviceID)

			rec := bus.Bytes()
			for name, s := range exposed {
				if form, found := findSecret(rec, s); found != tc.exposed {
					t.Errorf("%s on the bus: %v (%s), want %v", name, found, form, tc.exposed)
				}
			}
			for name, s := range keys {
				if form, found := findSecret(rec, s); found {
					t.Errorf("%s on the bus (%s)", name, form)
				}
			}
			t.Logf("%d bytes, %d commands on the bus", len(rec), len(bus.Exchanges()))
		})
	}
}

// credentials adds the plain challenge credential of every
// ActivateCredential recorded from exchange from on: unwrapped again on
// the swtpm directly (the daemon is stopped, the SRK they are bound to is
// still the one in the TPM).
func credentials(t *testing.T, bus *tpmtest.BusRecorder, tpm tpmtest.SwtpmInfo, from int, when string, into map[string][]byte) {
	t.Helper()
	cmds := bus.ActivateCredentialsSince(from)
	if len(cmds) < 2 {
		t.Fatalf("%d ActivateCredential %s, want 2 (the challenge and the hub key)", len(cmds), when)
	}
	for i, cmd := range cmds {
		blob, secret, err := tpmtest.ActivateCredentialArgs(cmd)
		if err != nil {
			t.Fatal(err)
		}
		into[fmt.Sprintf("challenge credential %d %s", i+1, when)] = tpmtest.ActivateCredential(t, tpm, blob, secret)
	}
}

// checkBusReport checks that dpsd check reports the protection in force.
func (d *device) checkBusReport(protect string) {
	d.t.Helper()
	out, _, _ := d.cli("check", "--socket", d.socket)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "tpm-bus") {
			if !strings.Contains(line, `bus_protection = "`+protect+`"`) {
				d.t.Errorf("dpsd check: %q, want bus_protection = %q", line, protect)
			}
			return
		}
	}
	d.t.Errorf("dpsd check has no tpm-bus line:\n%s", out)
}

// TestTamperedSaltKeyIsRefused: an active interposer rewrites the EK's
// public area in ReadPublic's answers, the key dpsd salts its sessions
// to. dpsd must refuse and send no command that carries a secret: a
// public area that does not hash to its Name at first boot; a
// substituted key, Name and all, once the record knows the real EK (after
// a clear, when dpsd must take ownership again).
func TestTamperedSaltKeyIsRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		provision bool // provision and clear first, untampered
		// answer makes the interposer's answer from the TPM's.
		answer func(t testing.TB) func(rsp []byte) []byte
		want   string // in lastError
	}{
		{"public altered at first boot", false, func(testing.TB) func([]byte) []byte {
			return func(rsp []byte) []byte {
				alt := slices.Clone(rsp)
				alt[200] ^= 0xff // in the modulus
				return alt
			}
		}, "tampered"},
		{"EK substituted after a clear", true, func(t testing.TB) func([]byte) []byte {
			fake := tpmtest.SubstituteEK(t)
			return func([]byte) []byte { return fake }
		}, "replaced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emu := startEmulator(t, t.TempDir(), "")
			d := newDevice(t, emu, "")
			bus := tpmtest.RecordBus(t, d.tpm)
			d.writeConfig(fmt.Sprintf("[tpm]\ndevice = %q\n", bus.Spec()))
			d.enroll(nil)
			if tc.provision {
				d.start()
				d.waitProvisioned()
				d.stop()
				tpmtest.ClearSwtpm(t, d.tpm)
				// The EK back at its handle, as enroll-info leaves it; the
				// owner auth is empty again, so dpsd must take ownership.
				d.enroll(nil)
			}
			answer := tc.answer(t)
			seen := len(bus.Exchanges())
			bus.Tamper(func(cmd, rsp []byte) []byte {
				if !tpmtest.IsReadPublic(cmd, 0x81010001) || len(rsp) < 300 {
					return nil
				}
				return answer(rsp)
			})
			d.start()
			s := d.waitFor("the refusal", func(s apitype.Status) bool {
				return s.LastError != nil && strings.Contains(*s.LastError, tc.want)
			})
			d.stop()
			if s.State == apitype.PhaseProvisioned {
				t.Errorf("state %s after a tampered salt key", s.State)
			}
			if sent := bus.SecretCommandsSince(seen); len(sent) > 0 {
				t.Errorf("sent %v after the tampered answer, want none of the commands that carry a secret", sent)
			}
		})
	}
}
