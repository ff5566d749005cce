package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/sas"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// TestSecretHygiene provisions a device, gets hub tokens, re-provisions it
// and then looks for every secret in every place a technician or an
// attacker with file access sees: the daemon's log, the state directory,
// the status output. The secrets are the owner auth (unsealed from
// owner.auth through the TPM, as only someone at the TPM can), each HMAC
// key the emulator delivered (raw, hex, base64) and each SAS signature the
// device made for the hub. None may appear; the files and the socket must
// have the modes that keep other users out.
func TestSecretHygiene(t *testing.T) {
	t.Parallel()
	emu := startEmulator(t, t.TempDir(), "")
	// Every DPS request goes through a recorder, to be searched as well.
	proxy := startRecordingProxy(t, emu)
	d := newDevice(t, emu, proxy.dropIn())
	d.enroll(nil)
	// Debug logging is where a careless line would most likely carry a secret.
	d.start("--log-level", "debug")
	first := d.waitProvisioned()
	d.waitFor("the hub check", func(s apitype.Status) bool { return s.Hub.Result != "" })
	checkModes(t, d)

	keys := [][]byte{emu.deviceKey(first.DeviceID)}
	sigs := [][]byte{d.hubTokenSig()}

	if _, errOut, code := d.cli("reprovision", "--socket", d.socket); code != 0 {
		t.Fatalf("dpsd reprovision: exit %d: %s", code, errOut)
	}
	again := d.waitFor("re-provisioned on request", func(s apitype.Status) bool {
		return s.State == apitype.PhaseProvisioned && s.Reason == apitype.ReasonRequested &&
			s.ProvisionedAt != nil && !s.ProvisionedAt.Equal(*first.ProvisionedAt)
	})
	keys = append(keys, emu.deviceKey(again.DeviceID))
	if bytes.Equal(keys[0], keys[1]) {
		t.Logf("the re-registration kept the same hub key")
	}
	sigs = append(sigs, d.hubTokenSig())
	statusJSON, _, _ := d.cli("status", "--json", "--socket", d.socket)
	statusText, _, _ := d.cli("status", "--socket", d.socket)
	checkModes(t, d)
	d.stop()

	ownerAuth := d.ownerAuth()
	secrets := map[string][]byte{"owner auth": ownerAuth}
	for i, k := range keys {
		secrets["hub key "+string(rune('1'+i))] = k
	}
	for i, s := range sigs {
		secrets["hub token signature "+string(rune('1'+i))] = s
	}

	if !strings.Contains(d.log.String(), "DEBUG") {
		t.Fatalf("the daemon log has no debug lines: --log-level debug had no effect")
	}
	places := map[string][]byte{
		"daemon log":         []byte(d.log.String()),
		"dpsd status --json": []byte(statusJSON),
		"dpsd status":        []byte(statusText),
	}
	files := 0
	err := filepath.Walk(d.state, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		places[p] = b
		files++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 {
		t.Fatalf("the state directory holds %d files, want state.json, identity.key and owner.auth at least", files)
	}
	for place, content := range places {
		for name, secret := range secrets {
			if form, ok := findSecret(content, secret); ok {
				t.Errorf("%s holds the %s (%s)", place, name, form)
			}
		}
		if m := sasSignature.Find(content); m != nil {
			t.Errorf("%s holds a SAS signature: %q", place, m)
		}
	}
	// What DPS saw: EK, SRK and the registration token signed with the
	// challenge key belong there; the owner auth, the hub key and hub
	// tokens do not.
	dpsSaw := proxy.requests()
	if n := bytes.Count(dpsSaw, []byte("/register?")); n < 4 {
		t.Fatalf("the recorder saw %d registration requests, want at least 4 (two registrations)", n)
	}
	for name, secret := range secrets {
		if form, ok := findSecret(dpsSaw, secret); ok {
			t.Errorf("a request to DPS holds the %s (%s)", name, form)
		}
	}

	// The emulator is a test tool, but device images' CI keeps its logs:
	// it must not log the keys it hands out either.
	for i, k := range keys {
		if form, ok := findSecret([]byte(emu.log.String()), k); ok {
			t.Errorf("the dpsemu log holds hub key %d (%s)", i+1, form)
		}
	}
}

// sasSignature is a SAS token's signature field as it would appear in a
// log line or a file.
var sasSignature = regexp.MustCompile(`sig=[A-Za-z0-9%+/=_-]{16,}`)

// findSecret reports whether content holds secret in any of the spellings
// a careless log line or file would use.
func findSecret(content, secret []byte) (string, bool) {
	forms := []struct {
		name string
		b    []byte
	}{
		{"raw", secret},
		{"hex", []byte(hex.EncodeToString(secret))},
		{"HEX", []byte(strings.ToUpper(hex.EncodeToString(secret)))},
		{"base64", []byte(strings.TrimRight(base64.StdEncoding.EncodeToString(secret), "="))},
		{"base64url", []byte(base64.RawURLEncoding.EncodeToString(secret))},
		{"url-encoded base64", []byte(url.QueryEscape(base64.StdEncoding.EncodeToString(secret)))},
	}
	for _, f := range forms {
		if bytes.Contains(content, f.b) {
			return f.name, true
		}
	}
	return "", false
}

// checkModes checks what keeps other local users away from the secrets.
func checkModes(t *testing.T, d *device) {
	t.Helper()
	fi, err := os.Stat(d.state)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o700 {
		t.Errorf("state dir %s has mode %o, want 700", d.state, m)
	}
	entries, err := os.ReadDir(d.state)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode(); !m.IsRegular() || m.Perm() != 0o600 {
			t.Errorf("%s has mode %v, want a regular file with 600", e.Name(), m)
		}
	}
	fi, err = os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if want := localapi.SocketMode(nil); fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != want {
		t.Errorf("status socket has mode %v, want a socket with %o", fi.Mode(), want)
	}
}

// deviceKey reads the HMAC key the emulator delivered to deviceID from its
// registry (it keeps the keys it hands out, as DPS and the hub do).
func (e *emulator) deviceKey(deviceID string) []byte {
	e.t.Helper()
	raw, err := os.ReadFile(filepath.Join(e.dir, "registry.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var reg struct {
		Devices map[string]struct {
			Key []byte `json:"key"`
		} `json:"devices"`
	}
	if err := json.Unmarshal(raw, &reg); err != nil {
		e.t.Fatalf("decoding the emulator's registry: %v", err)
	}
	key := reg.Devices[deviceID].Key
	if len(key) < 16 {
		e.t.Fatalf("the emulator's registry holds no key for %s", deviceID)
	}
	if _, found := findSecret(raw, key); !found {
		e.t.Fatalf("the search does not find the key in the registry it came from")
	}
	return key
}

// hubTokenSig gets a hub token as an app on the device does and returns
// its signature, after checking that the search finds it in the token.
func (d *device) hubTokenSig() []byte {
	d.t.Helper()
	out, errOut, code := d.cli("token", "--json", "--socket", d.socket)
	if code != 0 {
		d.t.Fatalf("dpsd token: exit %d: %s", code, errOut)
	}
	var tok apitype.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		d.t.Fatalf("token --json %q: %v", out, err)
	}
	parsed, err := sas.Parse(tok.SAS)
	if err != nil {
		d.t.Fatalf("parsing the token: %v", err)
	}
	if _, found := findSecret([]byte(tok.SAS), parsed.Sig); !found || sasSignature.FindString(tok.SAS) == "" {
		d.t.Fatalf("the search does not find the signature in its own token %q", tok.SAS)
	}
	return parsed.Sig
}

// ownerAuth unseals owner.auth through the TPM, as anyone with the state
// directory and access to the TPM could, and proves it is the owner auth
// in force by setting it again. The daemon must be stopped.
func (d *device) ownerAuth() []byte {
	d.t.Helper()
	sealed, err := os.ReadFile(filepath.Join(d.state, "owner.auth"))
	if err != nil {
		d.t.Fatal(err)
	}
	dev, err := tpmdev.Open("swtpm:"+d.tpm.Socket, nil)
	if err != nil {
		d.t.Fatal(err)
	}
	defer dev.Close()
	ctx := context.Background()
	auth, err := dev.Unseal(ctx, sealed)
	if err != nil {
		d.t.Fatalf("unsealing owner.auth: %v", err)
	}
	if err := dev.SetOwnerAuth(ctx, auth, auth); err != nil {
		d.t.Fatalf("the unsealed owner auth does not authorize the owner hierarchy: %v", err)
	}
	return auth
}
