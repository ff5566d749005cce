package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/internal/harness"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// TestX509OpenSSLClient: another program on the device connects to the
// hub as the device with the certificate dpsd wrote to cert_file and the
// TPM key it persisted at cert_key_handle, through tpm2-openssl; the hub
// refuses the same CONNECT without that certificate or with one for
// another key.
func TestX509OpenSSLClient(t *testing.T) {
	t.Parallel()
	bin := testenv.LookPath(t, "openssl")
	requireTPM2Provider(t, bin)
	chain := filepath.Join(t.TempDir(), "identity.crt")
	emu, d, s := x509Provisioned(t, "720h", "cert_key_handle = \"0x81000101\"\ncert_file = \""+chain+"\"\n")
	// swtpm serves one client at a time and tpm2-abrmd holds it; the hub
	// keeps one session per device.
	d.stop()
	tpmEnv := resourceManager(t, d)

	// A certificate of the device's name that the device root did not issue.
	otherKey, otherCert := filepath.Join(d.dir, "other.key"), filepath.Join(d.dir, "other.crt")
	if out, err := exec.Command(bin, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-subj", "/CN="+s.RegistrationID, "-days", "1", "-keyout", otherKey, "-out", otherCert).CombinedOutput(); err != nil {
		t.Fatalf("openssl req: %v: %s", err, out)
	}

	_, port, err := net.SplitHostPort(emu.hub)
	if err != nil {
		t.Fatal(err)
	}
	connect := connectPacket(s.DeviceID, s.AssignedHub+"/"+s.DeviceID+"/?api-version=2021-04-12")
	accepted, refused := []byte{0x20, 0x02, 0x00, 0x00}, []byte{0x20, 0x02, 0x00, 0x05}
	for _, tc := range []struct {
		name string
		auth []string // s_client's client authentication flags
		want []byte   // the hub's CONNACK
	}{
		// The chain's leaf (-cert) and its intermediates (-cert_chain).
		{"TPM key at the handle with cert_file", []string{"-provider", "tpm2", "-provider", "default",
			"-key", "handle:0x81000101", "-cert", chain, "-cert_chain", chain}, accepted},
		{"no client certificate", []string{"-provider", "tpm2", "-provider", "default"}, refused},
		// A software key: without the tpm2 provider, which would sign with it in the TPM.
		{"certificate for another key", []string{"-key", otherKey, "-cert", otherCert}, refused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"s_client", "-CAfile", filepath.Join(emu.dir, "ca.pem"), "-servername", s.AssignedHub,
				"-connect", net.JoinHostPort("127.0.0.1", port), "-quiet"}, tc.auth...)
			got, errOut := mqttAnswer(t, bin, tpmEnv, args, connect)
			if !bytes.Equal(got, tc.want) {
				t.Errorf("openssl %v: hub answered % x, want % x; stderr:\n%s", args, got, tc.want, errOut)
			}
			t.Logf("openssl %v: % x", args, got)
		})
	}
}

// resourceManager runs tpm2-abrmd on a bus of its own in front of d's
// swtpm and returns the environment that points tpm2-openssl at it. A
// device has a resource manager in the kernel (/dev/tpmrm0); without one
// the provider's transient objects (digest sequences, imported public
// keys) fill the TPM's three object slots within one handshake.
func resourceManager(t *testing.T, d *device) []string {
	t.Helper()
	abrmd, bus := testenv.LookPath(t, "tpm2-abrmd"), testenv.LookPath(t, "dbus-daemon")
	send := testenv.LookPath(t, "dbus-send")
	addr := "unix:path=" + filepath.Join(d.dir, "bus")
	env := append(os.Environ(), "DBUS_SESSION_BUS_ADDRESS="+addr)
	start := func(cmd *exec.Cmd) {
		cmd.Env = env
		p, err := harness.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = p.Stop(10 * time.Second)
			if t.Failed() {
				t.Logf("%s:\n%s", cmd.Path, p.Log)
			}
		})
	}
	const name = "com.intel.tss2.Tabrmd.dpsde2e"
	owned := func() bool { // tpm2-abrmd takes its name once it serves
		cmd := exec.Command(send, "--session", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
			"org.freedesktop.DBus.NameHasOwner", "string:"+name)
		cmd.Env = env
		out, err := cmd.Output()
		return err == nil && bytes.Contains(out, []byte("boolean true"))
	}
	start(exec.Command(bus, "--session", "--nofork", "--address="+addr))
	testenv.WaitUntil(t, "the bus", func() bool { _, err := os.Stat(filepath.Join(d.dir, "bus")); return err == nil })
	start(exec.Command(abrmd, "--session", "--allow-root", "--dbus-name="+name, "--tcti="+d.tpm.TCTI()))
	testenv.WaitUntil(t, "tpm2-abrmd on the bus", owned)
	return []string{"DBUS_SESSION_BUS_ADDRESS=" + addr, "TPM2OPENSSL_TCTI=tabrmd:bus_name=" + name + ",bus_type=session"}
}

// requireTPM2Provider calls Missing when OpenSSL has no tpm2 provider
// module (package tpm2-openssl) or tpm2-tss no TCTI for tpm2-abrmd
// (libtss2-tcti-tabrmd0), both in the library directory of OpenSSL's.
func requireTPM2Provider(t *testing.T, bin string) {
	t.Helper()
	out, err := exec.Command(bin, "version", "-m").Output()
	if err != nil {
		t.Fatalf("openssl version -m: %v", err)
	}
	m := regexp.MustCompile(`MODULESDIR: "([^"]*)"`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("openssl version -m names no MODULESDIR: %q", out)
	}
	for _, f := range []string{filepath.Join(string(m[1]), "tpm2.so"), filepath.Join(filepath.Dir(string(m[1])), "libtss2-tcti-tabrmd.so.0")} {
		if _, err := os.Stat(f); err != nil {
			testenv.Missing(t, f+" is not installed (scripts/install-deps.sh test installs tpm2-openssl and libtss2-tcti-tabrmd0)")
		}
	}
}

// mqttAnswer runs openssl with args and env added to its environment,
// writes connect to the connection and returns the hub's first four bytes
// (a CONNACK), fewer when the connection ends before, and openssl's stderr.
func mqttAnswer(t *testing.T, bin string, env, args []string, connect []byte) ([]byte, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = bytes.NewReader(connect) // -quiet ignores the EOF after it
	var errOut bytes.Buffer
	cmd.Stderr = &errOut
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	n, _ := io.ReadFull(stdout, got)
	// An accepted session stays open: end it.
	cancel()
	_ = cmd.Wait()
	return got[:n], errOut.String()
}

// connectPacket is an MQTT 3.1.1 CONNECT with a clean session, a user name
// and no password: what a device authenticated by its certificate sends.
func connectPacket(clientID, user string) []byte {
	str := func(b []byte, s string) []byte {
		return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
	}
	body := str(nil, "MQTT")
	body = append(body, 4, 0x82, 0, 60) // level 3.1.1; user name, clean session; keep-alive 60 s
	body = str(body, clientID)
	body = str(body, user)
	pkt := []byte{0x10}
	for n := len(body); ; {
		b := byte(n % 128)
		if n /= 128; n > 0 {
			b |= 0x80
		}
		pkt = append(pkt, b)
		if n == 0 {
			break
		}
	}
	return append(pkt, body...)
}
