package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

const (
	testdata  = "../../testdata/config"
	reference = "../../contrib/config.toml"
)

// withScope is Default() with an ID scope, read from files.
func withScope(scope string, files ...string) *Config {
	c := Default()
	c.Provisioning.IDScope = scope
	c.Files = files
	return c
}

func TestLoadGood(t *testing.T) {
	t.Parallel()
	minimal := filepath.Join(testdata, "minimal.toml")
	dropins := filepath.Join(testdata, "dropins")
	merged := withScope("0ne00000A0A",
		filepath.Join(dropins, "config.toml"),
		filepath.Join(dropins, "config.d", "10-scope.toml"),
		filepath.Join(dropins, "config.d", "20-tpm.toml"),
		filepath.Join(dropins, "config.d", "30-later.toml"))
	merged.Provisioning.Payload = `{"modelId":"dtmi:main;1"}`
	merged.TPM.CheckInterval = 10 * time.Minute // main file, untouched by drop-ins
	merged.TPM.Device = "mssim:127.0.0.1:2321"  // 30-later.toml beats 20-tpm.toml
	merged.Token.Allow = []string{"bob"}        // arrays are replaced, not appended
	merged.TPM.BusProtection = BusOff

	tests := []struct {
		path string
		want *Config
	}{
		{minimal, withScope("0ne00000A0A", minimal)},
		{filepath.Join(dropins, "config.toml"), merged},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			got, err := Load(tt.path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Load:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// The reference config documents the defaults: with an ID scope added it
// must load to exactly Default(), and it must spell out every key.
func TestReferenceConfig(t *testing.T) {
	t.Parallel()
	_, err := Load(reference)
	want := reference + ": provisioning.id_scope: required: set it in a drop-in, e.g. " +
		filepath.Join(filepath.Dir(reference), "config.d", "50-id-scope.toml") +
		` holding [provisioning] id_scope = "<the DPS ID scope>" (image builders ship one)`
	if err == nil || err.Error() != want {
		t.Errorf("Load(reference) = %v\nwant %s", err, want)
	}

	dir := t.TempDir()
	data, err := os.ReadFile(reference)
	if err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "config.toml")
	scope := filepath.Join(dir, DropInDir, "50-id-scope.toml")
	writeFile(t, main, string(data))
	writeFile(t, scope, "[provisioning]\nid_scope = \"0ne00000A0A\"\n")
	got, err := Load(main)
	if err != nil {
		t.Fatalf("Load(reference + id_scope): %v", err)
	}
	if want := withScope("0ne00000A0A", main, scope); !reflect.DeepEqual(got, want) {
		t.Errorf("reference config differs from Default():\n got %+v\nwant %+v", got, want)
	}

	var tree map[string]any
	md, err := toml.Decode(string(data), &tree)
	if err != nil {
		t.Fatal(err)
	}
	var inReference []string
	for _, k := range md.Keys() {
		if len(k) == 2 {
			inReference = append(inReference, k.String())
		}
	}
	for path := range specs {
		if !slices.Contains(inReference, path) {
			t.Errorf("reference config lacks %s", path)
		}
	}
}

// Every file in testdata/config/bad must fail with exactly this error (FILE
// stands for the file's path).
func TestLoadBad(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"api-version.toml":         `FILE:3: provisioning.api_version: "latest" is not an api-version (YYYY-MM-DD, optionally -preview)`,
		"bus-protection.toml":      `FILE:5: tpm.bus_protection: "none" is not one of encrypt, off`,
		"array-of-tables.toml":     `FILE:4: hub: expected a table, got an array of tables`,
		"cert-key-handle-sas.toml": `FILE:5: hub.cert_key_handle: only used with auth = "x509" (the certificate's key)`,
		"device-mssim.toml":        `FILE:5: tpm.device: mssim:HOST:PORT: "localhost:tcp": port "tcp" is not a number in 1..65535`,
		"device.toml":              `FILE:5: tpm.device: "tpm0" is not auto, a device path, swtpm:PATH or mssim:HOST:PORT`,
		"duplicate-key.toml":       `FILE:3: provisioning.id_scope: Key 'provisioning.id_scope' has already been defined.`,
		"duration-integer.toml":    `FILE:5: tpm.check_interval: expected a duration string such as "90s", "5m" or "2h", got an integer (300)`,
		"duration-range.toml":      `FILE:5: token.max_ttl: "0s" is out of range 1m..720h`,
		"duration-syntax.toml":     `FILE:5: network.timeout: "30 seconds" is not a duration (write e.g. "90s", "5m" or "2h")`,
		"ek-template.toml":         `FILE:5: tpm.ek_template: "ecc" is not one of tcg, azure-sdk`,
		"endpoint-http.toml":       `FILE:2: provisioning.global_endpoint: "http://global.azure-devices-provisioning.net" is not an https URL (e.g. "https://global.azure-devices-provisioning.net")`,
		"id-scope.toml":            `FILE:2: provisioning.id_scope: "0ne-0000" is not an ID scope (letters and digits, at most 64, e.g. "0ne00000A0A")`,
		"hub-auth.toml":            `FILE:5: hub.auth: "cert" is not one of sas, x509`,
		"identity-handle-srk.toml": `FILE:5: tpm.identity_handle: "0x81000001" is the SRK's handle`,
		"identity-handle.toml":     `FILE:5: tpm.identity_handle: "0x81800000" is outside the owner's persistent range 0x81000000..0x817fffff`,
		"missing-id-scope.toml": `FILE: provisioning.id_scope: required: set it in a drop-in, e.g. ` + filepath.Join(testdata, "bad", DropInDir, "50-id-scope.toml") +
			` holding [provisioning] id_scope = "<the DPS ID scope>" (image builders ship one)`,
		"owner-auth-take.toml":    `FILE:5: tpm.owner_auth_file: only used with ownership = "shared" (with "take" dpsd sets the owner auth itself)`,
		"ownership.toml":          `FILE:6: tpm.ownership: "tak" is not one of take, shared`,
		"payload.toml":            `FILE:3: provisioning.payload: not a JSON object (write e.g. '{"modelId": "dtmi:example:device;1"}')`,
		"proxy.toml":              `FILE:5: network.proxy: "ftp://proxy.example:21": scheme "ftp" is not one of http, https, socks5, socks5h`,
		"renew-before.toml":       `FILE:5: hub.renew_before: "0s" is out of range 1s..720h`,
		"registration-id.toml":    `FILE:3: provisioning.registration_id: "-device-1" is not a DPS registration ID (at most 128 letters, digits and : . _ -, starting and ending with a letter or digit)`,
		"several.toml":            "FILE:6: tpm.ownership: \"tak\" is not one of take, shared\nFILE:9: hub.verify: expected a boolean, got an integer (1)",
		"socket-relative.toml":    `FILE:5: status.socket: "run/dpsd/status.sock" is not an absolute path`,
		"state-dir-relative.toml": `FILE:5: state.dir: "var/lib/dpsd" is not an absolute path`,
		"syntax.toml":             `FILE:5: tpm.device: expected value but found '\n' instead`,
		"table-as-value.toml":     `FILE:1: tpm: expected a table, got a string`,
		"table-case.toml":         `FILE:1: Provisioning: unknown table (did you mean provisioning?)`,
		"token-allow-type.toml":   `FILE:5: token.allow: element 2: expected a string, got an integer (1000)`,
		"token-allow.toml":        `FILE:5: token.allow: "@" is not a user name or "@group"`,
		"unknown-key.toml":        `FILE:5: tpm.devise: unknown key (did you mean tpm.device?)`,
		"unknown-table.toml":      `FILE:4: tmp: unknown table (did you mean tpm?)`,
		"wrong-type.toml":         `FILE:5: hub.verify: expected a boolean, got a string ("yes")`,
		"x509-api-version.toml":   `FILE:3: provisioning.api_version: auth = "x509" needs provisioning.api_version 2026-11-01 or later (DPS issues certificates from it on); it is "2021-06-01"`,
	}
	files, err := filepath.Glob(filepath.Join(testdata, "bad", "*.toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := tests[filepath.Base(f)]; !ok {
			t.Errorf("%s has no expected error in this table", f)
		}
	}
	for name, want := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(testdata, "bad", name)
			want = strings.ReplaceAll(want, "FILE", path)
			c, err := Load(path)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			if err.Error() != want {
				t.Errorf("Load error:\n got %s\nwant %s", err, want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != path {
				t.Errorf("error %#v is not an *Error naming %s", err, path)
			}
		})
	}
}

// Values that only look odd, and the normalisation Load applies.
func TestLoadValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		toml  string
		check func(c *Config) bool
	}{
		{"endpoint normalised", `provisioning.global_endpoint = "https://DPS.Example:8443/"`,
			func(c *Config) bool { return c.Provisioning.GlobalEndpoint == "https://dps.example:8443" }},
		{"payload compacted", "provisioning.payload = '''\n{ \"a\" : [1, 2] }\n'''",
			func(c *Config) bool { return c.Provisioning.Payload == `{"a":[1,2]}` }},
		{"registration id of 128", `provisioning.registration_id = "a` + strings.Repeat("-", 126) + `z"`,
			func(c *Config) bool { return len(c.Provisioning.RegistrationID) == 128 }},
		{"shared with owner auth", "tpm.ownership = \"shared\"\ntpm.owner_auth_file = \"/etc/dpsd//owner\"",
			func(c *Config) bool {
				return c.TPM.Ownership == OwnershipShared && c.TPM.OwnerAuthFile == "/etc/dpsd/owner"
			}},
		{"identity handle", `tpm.identity_handle = "0X810001aB"`,
			func(c *Config) bool { return c.TPM.IdentityHandle == 0x810001ab }},
		{"device path", `tpm.device = "/dev/tpm0"`, func(c *Config) bool { return c.TPM.Device == "/dev/tpm0" }},
		{"swtpm", `tpm.device = "swtpm:/tmp/swtpm.sock"`, func(c *Config) bool { return c.TPM.Device == "swtpm:/tmp/swtpm.sock" }},
		{"mssim ipv6", `tpm.device = "mssim:[::1]:2321"`, func(c *Config) bool { return c.TPM.Device == "mssim:[::1]:2321" }},
		{"short check interval", `tpm.check_interval = "1s"`, func(c *Config) bool { return c.TPM.CheckInterval == time.Second }},
		{"token allow", `token.allow = ["alice", "@apps", "svc_1$"]`,
			func(c *Config) bool { return slices.Equal(c.Token.Allow, []string{"alice", "@apps", "svc_1$"}) }},
		{"proxy", `network.proxy = "http://proxy.example:3128"`,
			func(c *Config) bool { return c.Network.Proxy == "http://proxy.example:3128" }},
		{"endpoint override", `hub.endpoint_override = "127.0.0.1:8883"`,
			func(c *Config) bool { return c.Hub.EndpointOverride == "127.0.0.1:8883" }},
		{"state dir cleaned", `state.dir = "/var/lib/dpsd/"`, func(c *Config) bool { return c.State.Dir == "/var/lib/dpsd" }},
		{"x509", "hub.auth = \"x509\"\nhub.renew_before = \"36h\"\nprovisioning.api_version = \"2026-11-01\"",
			func(c *Config) bool { return c.Hub.Auth == AuthX509 && c.Hub.RenewBefore == 36*time.Hour }},
		{"cert file", "hub.auth = \"x509\"\nhub.cert_file = \"/run/dpsd//identity.crt\"\nprovisioning.api_version = \"2026-11-01\"",
			func(c *Config) bool { return c.Hub.CertFile == "/run/dpsd/identity.crt" }},
		{"cert key handle", "hub.auth = \"x509\"\nhub.cert_key_handle = \"0X81000101\"\nprovisioning.api_version = \"2026-11-01\"",
			func(c *Config) bool { return c.Hub.CertKeyHandle == 0x81000101 }},
		{"x509 preview", "hub.auth = \"x509\"\nprovisioning.api_version = \"2027-01-01-preview\"",
			func(c *Config) bool { return c.Hub.Auth == AuthX509 && c.Hub.RenewBefore == 0 }},
		{"booleans", "hub.verify = false\nhub.stay_connected = true\nhub.report_twin = false",
			func(c *Config) bool { return !c.Hub.Verify && c.Hub.StayConnected && !c.Hub.ReportTwin }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			writeFile(t, path, "provisioning.id_scope = \"0ne00000A0A\"\n"+tt.toml+"\n")
			c, err := Load(path)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !tt.check(c) {
				t.Errorf("unexpected config: %+v", c)
			}
		})
	}
}

func TestLoadFiles(t *testing.T) {
	t.Parallel()
	t.Run("nothing there", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config.toml")
		_, err := Load(path)
		if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path+" does not exist") {
			t.Errorf("Load = %v, want a not-exist error naming %s", err, path)
		}
	})
	t.Run("only drop-ins", func(t *testing.T) {
		dir := t.TempDir()
		dropIn := filepath.Join(dir, DropInDir, "scope.toml")
		writeFile(t, dropIn, "[provisioning]\nid_scope = \"0ne00000A0A\"\n")
		c, err := Load(filepath.Join(dir, "config.toml"))
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		if want := withScope("0ne00000A0A", dropIn); !reflect.DeepEqual(c, want) {
			t.Errorf("Load = %+v, want %+v", c, want)
		}
	})
	t.Run("bad drop-in is named", func(t *testing.T) {
		dir := t.TempDir()
		main := filepath.Join(dir, "config.toml")
		dropIn := filepath.Join(dir, DropInDir, "20-bad.toml")
		writeFile(t, main, "[provisioning]\nid_scope = \"0ne00000A0A\"\n")
		writeFile(t, dropIn, "# a comment\n[tpm]\nownership = \"tak\"\n")
		_, err := Load(main)
		want := dropIn + `:3: tpm.ownership: "tak" is not one of take, shared`
		if err == nil || err.Error() != want {
			t.Errorf("Load = %v, want %s", err, want)
		}
	})
	t.Run("too many errors", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "config.toml")
		writeFile(t, path, "[tpm]\n"+manyUnknownKeys(maxErrorsPerFile+5))
		_, err := Load(path)
		lines := strings.Split(err.Error(), "\n")
		if len(lines) != maxErrorsPerFile+1 || lines[len(lines)-1] != path+": too many errors; fix these first" {
			t.Errorf("Load = %v; want %d errors and a last line saying there are too many", err, maxErrorsPerFile)
		}
	})
	t.Run("a drop-in unsets a default", func(t *testing.T) {
		dir := t.TempDir()
		main := filepath.Join(dir, "config.toml")
		writeFile(t, main, "[provisioning]\nid_scope = \"0ne00000A0A\"\n[tpm]\nidentity_handle = \"0x81000100\"\n")
		writeFile(t, filepath.Join(dir, DropInDir, "90.toml"), "tpm.identity_handle = \"\"\n")
		c, err := Load(main)
		if err != nil || c.TPM.IdentityHandle != 0 {
			t.Errorf("Load = %+v, %v; want no identity handle", c, err)
		}
	})
}

func TestProvisioningFingerprint(t *testing.T) {
	t.Parallel()
	load := func(extra string) string {
		t.Helper()
		path := filepath.Join(t.TempDir(), "config.toml")
		writeFile(t, path, "[provisioning]\n"+extra+"\n")
		c, err := Load(path)
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		return c.ProvisioningFingerprint()
	}
	base := load(`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'")
	same := []string{
		`id_scope = "0ne00000A0A"` + "\npayload = '{ \"a\" : 1 }'",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\nglobal_endpoint = \"https://GLOBAL.azure-devices-provisioning.net/\"",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\napi_version = \"2019-03-31\"",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\n[hub]\nauth = \"sas\"",
	}
	for _, s := range same {
		if got := load(s); got != base {
			t.Errorf("fingerprint of %q changed; only formatting or api_version differs", s)
		}
	}
	differ := []string{
		`id_scope = "0ne00000B0B"` + "\npayload = '{\"a\":1}'",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":2}'",
		`id_scope = "0ne00000A0A"`,
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\nregistration_id = \"device-1\"",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\nglobal_endpoint = \"https://127.0.0.1:8443\"",
		`id_scope = "0ne00000A0A"` + "\npayload = '{\"a\":1}'\napi_version = \"2026-11-01\"\n[hub]\nauth = \"x509\"",
	}
	for _, s := range differ {
		if got := load(s); got == base {
			t.Errorf("fingerprint of %q did not change", s)
		}
	}
}

// manyUnknownKeys returns n lines that each set an unknown key.
func manyUnknownKeys(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "unknown_%d = 1\n", i)
	}
	return b.String()
}

// writeFile writes content to path, creating its directory.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkLoad measures a start's config read: the reference config plus
// one drop-in.
func BenchmarkLoad(b *testing.B) {
	data, err := os.ReadFile(reference)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	main := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(main, data, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, DropInDir), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, DropInDir, "50-id-scope.toml"),
		[]byte("[provisioning]\nid_scope = \"0ne00000A0A\"\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(main); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLoadRefusesWorldWritable: a config file, drop-in or drop-in
// directory that every user may write is refused with the file and the
// fix: whoever writes the config decides what dpsd does.
func TestLoadRefusesWorldWritable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chmod  string // relative to the config's directory
		mode   os.FileMode
		wantOK bool
	}{
		{"main file", "config.toml", 0o666, false},
		{"drop-in", DropInDir + "/50-x.toml", 0o646, false},
		{"drop-in directory", DropInDir, 0o777, false},
		{"sticky drop-in directory", DropInDir, 0o777 | os.ModeSticky, false},
		{"group-writable drop-in", DropInDir + "/50-x.toml", 0o664, true},
		{"private files", "config.toml", 0o600, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			main := filepath.Join(dir, "config.toml")
			writeFile(t, main, "[provisioning]\nid_scope = \"0ne00000A0A\"\n")
			writeFile(t, filepath.Join(dir, DropInDir, "50-x.toml"), "[tpm]\nownership = \"take\"\n")
			target := filepath.Join(dir, tt.chmod)
			if err := os.Chmod(target, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, err := Load(main)
			switch {
			case tt.wantOK && err != nil:
				t.Errorf("Load: %v", err)
			case !tt.wantOK && (err == nil || !strings.Contains(err.Error(), target+": may be written by every user") ||
				!strings.Contains(err.Error(), "chmod o-w "+target)):
				t.Errorf("Load = %v, want a refusal naming %s and the fix", err, target)
			}
		})
	}
}

// A config that another user owns, or in a directory where every user
// may replace files, decides what dpsd does as much as a world-writable
// one.
func TestLoadRefusesForeignOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to chown (CI runs as root)")
		}
		t.Skip("needs root to chown")
	}
	const stranger = 2001
	tests := []struct {
		name   string
		target string // relative to the config's directory; "." is the directory
		chown  int    // -1: leave the owner
		mode   os.FileMode
		want   string // in the error; "" for no error
	}{
		{"main file of another user", "config.toml", stranger, 0, "belongs to uid 2001"},
		{"drop-in of another user", DropInDir + "/50-x.toml", stranger, 0, "belongs to uid 2001"},
		{"drop-in directory of another user", DropInDir, stranger, 0, "belongs to uid 2001"},
		{"directory every user may write", ".", -1, 0o777, "may be written by every user"},
		{"sticky directory", ".", -1, 0o777 | os.ModeSticky, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			main := filepath.Join(dir, "config.toml")
			writeFile(t, main, "[provisioning]\nid_scope = \"0ne00000A0A\"\n")
			writeFile(t, filepath.Join(dir, DropInDir, "50-x.toml"), "[tpm]\nownership = \"take\"\n")
			target := filepath.Join(dir, tt.target)
			if tt.chown >= 0 {
				if err := os.Chown(target, tt.chown, -1); err != nil {
					t.Fatal(err)
				}
			}
			if tt.mode != 0 {
				if err := os.Chmod(target, tt.mode); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Load(main)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Load: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), filepath.Clean(target)+": "+tt.want)):
				t.Errorf("Load = %v, want %q about %s", err, tt.want, target)
			}
		})
	}
}

// LoadUnscoped is Load less the ID scope: every other error stays.
func TestLoadUnscoped(t *testing.T) {
	for _, tt := range []struct {
		name, conf string
		wantLoad   bool // Load succeeds
		wantUnscop bool // LoadUnscoped succeeds
	}{
		{"with an ID scope", "[provisioning]\nid_scope = \"0ne00000A0A\"\n", true, true},
		{"without an ID scope", "[tpm]\nownership = \"take\"\n", false, true},
		{"without an ID scope and a bad key", "[tpm]\nownership = \"maybe\"\n", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "config.toml")
			writeFile(t, path, tt.conf)
			if _, err := Load(path); (err == nil) != tt.wantLoad {
				t.Errorf("Load: %v", err)
			}
			c, err := LoadUnscoped(path)
			if (err == nil) != tt.wantUnscop || (err == nil && c == nil) {
				t.Errorf("LoadUnscoped: %v", err)
			}
		})
	}
}
