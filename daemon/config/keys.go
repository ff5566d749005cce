package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// tables are the top-level tables a file may hold.
var tables = map[string]struct{}{
	"provisioning": {}, "tpm": {}, "hub": {}, "token": {},
	"network": {}, "status": {}, "state": {},
}

// spec is how one key's TOML value is checked and stored.
type spec struct {
	set func(c *Config, v any) error
}

// specs is every key, by dotted path. Each setter checks the type and the
// value on its own; checks spanning keys are in checkMerged.
var specs = map[string]spec{
	"provisioning.global_endpoint": text(func(c *Config, s string) (err error) {
		c.Provisioning.GlobalEndpoint, err = httpsURL(s)
		return err
	}),
	"provisioning.id_scope": text(func(c *Config, s string) error {
		if s != "" && !validIDScope(s) {
			return fmt.Errorf("%q is not an ID scope (letters and digits, at most 64, e.g. \"0ne00000A0A\")", s)
		}
		c.Provisioning.IDScope = s
		return nil
	}),
	"provisioning.registration_id": text(func(c *Config, s string) error {
		if s != "" && dps.ValidRegistrationID(s) != nil {
			return fmt.Errorf("%q is not a DPS registration ID (at most 128 letters, digits and : . _ -, "+
				"starting and ending with a letter or digit)", s)
		}
		c.Provisioning.RegistrationID = s
		return nil
	}),
	"provisioning.payload": text(func(c *Config, s string) (err error) {
		c.Provisioning.Payload, err = jsonObject(s)
		return err
	}),
	"provisioning.api_version": text(func(c *Config, s string) error {
		if !validAPIVersion(s) {
			return fmt.Errorf("%q is not an api-version (YYYY-MM-DD, optionally -preview)", s)
		}
		c.Provisioning.APIVersion = s
		return nil
	}),

	"tpm.device": text(func(c *Config, s string) error {
		if err := checkDevice(s); err != nil {
			return err
		}
		c.TPM.Device = s
		return nil
	}),
	"tpm.ownership": text(func(c *Config, s string) (err error) {
		c.TPM.Ownership, err = oneOf(s, OwnershipTake, OwnershipShared)
		return err
	}),
	"tpm.owner_auth_file": text(func(c *Config, s string) (err error) {
		c.TPM.OwnerAuthFile, err = optionalAbsPath(s)
		return err
	}),
	"tpm.endorsement_auth_file": text(func(c *Config, s string) (err error) {
		c.TPM.EndorsementAuthFile, err = optionalAbsPath(s)
		return err
	}),
	"tpm.ek_template": text(func(c *Config, s string) (err error) {
		c.TPM.EKTemplate, err = oneOf(s, EKTemplateTCG, EKTemplateAzureSDK)
		return err
	}),
	"tpm.bus_protection": text(func(c *Config, s string) (err error) {
		c.TPM.BusProtection, err = oneOf(s, BusEncrypt, BusOff)
		return err
	}),
	"tpm.check_interval": duration(func(c *Config) *time.Duration { return &c.TPM.CheckInterval },
		time.Second, 24*time.Hour),
	"tpm.identity_handle": text(func(c *Config, s string) (err error) {
		c.TPM.IdentityHandle, err = persistentHandle(s)
		return err
	}),

	"hub.verify":         boolean(func(c *Config) *bool { return &c.Hub.Verify }),
	"hub.stay_connected": boolean(func(c *Config) *bool { return &c.Hub.StayConnected }),
	"hub.report_twin":    boolean(func(c *Config) *bool { return &c.Hub.ReportTwin }),
	"hub.endpoint_override": text(func(c *Config, s string) error {
		c.Hub.EndpointOverride = s
		return unlessEmpty(s, checkHostPort)
	}),
	"hub.auth": text(func(c *Config, s string) (err error) {
		c.Hub.Auth, err = oneOf(s, AuthSAS, AuthX509)
		return err
	}),
	"hub.cert_key_handle": text(func(c *Config, s string) (err error) {
		c.Hub.CertKeyHandle, err = persistentHandle(s)
		return err
	}),
	"hub.cert_file": text(func(c *Config, s string) (err error) {
		c.Hub.CertFile, err = optionalAbsPath(s)
		return err
	}),
	"hub.renew_before": text(func(c *Config, s string) error {
		if s == "" {
			c.Hub.RenewBefore = 0
			return nil
		}
		return duration(func(c *Config) *time.Duration { return &c.Hub.RenewBefore },
			time.Second, 720*time.Hour).set(c, s)
	}),

	"token.allow": stringList(func(c *Config, items []string) error {
		for _, it := range items {
			if !validName(strings.TrimPrefix(it, "@")) {
				return fmt.Errorf("%q is not a user name or \"@group\"", it)
			}
		}
		c.Token.Allow = items
		return nil
	}),
	"token.max_ttl": duration(func(c *Config) *time.Duration { return &c.Token.MaxTTL },
		time.Minute, 30*24*time.Hour),

	"network.ca_file": text(func(c *Config, s string) (err error) {
		c.Network.CAFile, err = optionalAbsPath(s)
		return err
	}),
	"network.proxy": text(func(c *Config, s string) error {
		c.Network.Proxy = s
		return unlessEmpty(s, checkProxy)
	}),
	"network.timeout": duration(func(c *Config) *time.Duration { return &c.Network.Timeout },
		time.Second, 10*time.Minute),

	"status.socket": text(func(c *Config, s string) error {
		p, err := absPath(s)
		if err != nil {
			return err
		}
		// sun_path holds 108 bytes including the terminating NUL.
		if len(p) > 107 {
			return fmt.Errorf("%q is longer than a Unix socket path may be (107 bytes)", s)
		}
		c.Status.Socket = p
		return nil
	}),
	"status.group": text(func(c *Config, s string) error {
		if !validName(s) {
			return fmt.Errorf("%q is not a group name", s)
		}
		c.Status.Group = s
		return nil
	}),

	"state.dir": text(func(c *Config, s string) (err error) {
		c.State.Dir, err = absPath(s)
		return err
	}),
}

// checkMerged checks what no single key can: it runs on the merged result.
// Unless scoped, a missing ID scope is no error (see LoadUnscoped).
func checkMerged(c *Config, mainPath string, origins map[string]origin, scoped bool) []error {
	var errs []error
	if scoped && c.Provisioning.IDScope == "" {
		dropIn := filepath.Join(filepath.Dir(mainPath), DropInDir, "50-id-scope.toml")
		errs = append(errs, &Error{File: mainPath, Key: "provisioning.id_scope",
			Msg: "required: set it in a drop-in, e.g. " + dropIn +
				" holding [provisioning] id_scope = \"<the DPS ID scope>\" (image builders ship one)"})
	}
	if c.TPM.OwnerAuthFile != "" && c.TPM.Ownership != OwnershipShared {
		o := origins["tpm.owner_auth_file"]
		errs = append(errs, o.src.errorAt(o.key,
			"only used with ownership = \"shared\" (with \"take\" dpsd sets the owner auth itself)"))
	}
	if c.Hub.CertFile != "" && c.Hub.Auth != AuthX509 {
		o := origins["hub.cert_file"]
		errs = append(errs, o.src.errorAt(o.key, "only used with auth = \"x509\" (the certificate's chain)"))
	}
	if h := c.Hub.CertKeyHandle; h != 0 {
		o := origins["hub.cert_key_handle"]
		switch {
		case c.Hub.Auth != AuthX509:
			errs = append(errs, o.src.errorAt(o.key, "only used with auth = \"x509\" (the certificate's key)"))
		case h == c.TPM.IdentityHandle:
			errs = append(errs, o.src.errorAt(o.key, fmt.Sprintf("%q is tpm.identity_handle too: the keys need a handle each", h.String())))
		}
	}
	if c.Hub.Auth == AuthX509 && strings.TrimSuffix(c.Provisioning.APIVersion, "-preview") < dps.APIVersionCertificates {
		// YYYY-MM-DD compares as text.
		o, ok := origins["provisioning.api_version"]
		if !ok {
			o = origins["hub.auth"]
		}
		errs = append(errs, o.src.errorAt(o.key, fmt.Sprintf(
			"auth = \"x509\" needs provisioning.api_version %s or later (DPS issues certificates from it on); it is %q",
			dps.APIVersionCertificates, c.Provisioning.APIVersion)))
	}
	return errs
}

// text is a key whose value is a string.
func text(set func(c *Config, s string) error) spec {
	return spec{set: func(c *Config, v any) error {
		s, ok := v.(string)
		if !ok {
			return wrongType("a string", v)
		}
		return set(c, s)
	}}
}

// boolean is a key whose value is true or false.
func boolean(field func(c *Config) *bool) spec {
	return spec{set: func(c *Config, v any) error {
		b, ok := v.(bool)
		if !ok {
			return wrongType("a boolean", v)
		}
		*field(c) = b
		return nil
	}}
}

// duration is a key whose value is a Go duration string within [lo, hi].
// Integers are refused: a bare 300 could mean seconds or nanoseconds.
func duration(field func(c *Config) *time.Duration, lo, hi time.Duration) spec {
	return spec{set: func(c *Config, v any) error {
		s, ok := v.(string)
		if !ok {
			return wrongType(`a duration string such as "90s", "5m" or "2h"`, v)
		}
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf(`%q is not a duration (write e.g. "90s", "5m" or "2h")`, s)
		}
		if d < lo || d > hi {
			return fmt.Errorf("%q is out of range %s..%s", s, shortDuration(lo), shortDuration(hi))
		}
		*field(c) = d
		return nil
	}}
}

// stringList is a key whose value is an array of strings.
func stringList(set func(c *Config, items []string) error) spec {
	return spec{set: func(c *Config, v any) error {
		arr, ok := v.([]any)
		if !ok {
			return wrongType("an array of strings", v)
		}
		items := make([]string, 0, len(arr))
		for i, e := range arr {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("element %d: %w", i+1, wrongType("a string", e))
			}
			items = append(items, s)
		}
		return set(c, items)
	}}
}

// wrongType says what a key wanted and what it got.
func wrongType(want string, got any) error {
	return fmt.Errorf("expected %s, got %s", want, describe(got))
}

// describe names a decoded TOML value's type, with the value when short.
func describe(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("a string (%q)", v)
	case int64:
		return fmt.Sprintf("an integer (%d)", v)
	case float64:
		return fmt.Sprintf("a float (%v)", v)
	case bool:
		return fmt.Sprintf("a boolean (%t)", v)
	case time.Time:
		return "a date/time"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	case []map[string]any:
		return "an array of tables"
	}
	return fmt.Sprintf("%T", v)
}

// shortDuration prints d without the zero units time.Duration.String adds
// ("24h", not "24h0m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// The syntax checks below are written out rather than regexps: regexp had
// no other user in the daemon, and compiling four patterns at init cost
// every start ~150 KB of allocations and a few milliseconds (docs/memory.md).

// validIDScope: 1 to 64 letters and digits.
func validIDScope(s string) bool {
	return len(s) >= 1 && len(s) <= 64 && all(s, isAlnum)
}

// validAPIVersion: YYYY-MM-DD, optionally with -preview.
func validAPIVersion(s string) bool {
	s = strings.TrimSuffix(s, "-preview")
	return len(s) == len("2006-01-02") && s[4] == '-' && s[7] == '-' &&
		all(s[:4]+s[5:7]+s[8:], isDigit)
}

// validName says whether s can be a user or group name: what Debian's
// adduser accepts (with --allow-bad-names for upper case), a trailing $
// being for Samba machine accounts.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 32 || !(isAlnum(s[0]) || s[0] == '_') {
		return false
	}
	return all(strings.TrimSuffix(s[1:], "$"), func(c byte) bool {
		return isAlnum(c) || strings.IndexByte("_.-", c) >= 0
	})
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isAlnum(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// all reports whether every byte of s satisfies ok.
func all(s string, ok func(byte) bool) bool {
	for i := range len(s) {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

// oneOf returns s as T if it is one of the allowed values.
func oneOf[T ~string](s string, allowed ...T) (T, error) {
	names := make([]string, len(allowed))
	for i, a := range allowed {
		if string(a) == s {
			return a, nil
		}
		names[i] = string(a)
	}
	return "", fmt.Errorf("%q is not one of %s", s, strings.Join(names, ", "))
}

// httpsURL checks a DPS endpoint and returns it normalised: host lowercased,
// no trailing slash.
func httpsURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.Opaque != "" {
		return "", fmt.Errorf("%q is not an https URL (e.g. \"https://global.azure-devices-provisioning.net\")", s)
	}
	if u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("%q must not carry user info, a query or a fragment", s)
	}
	return "https://" + strings.ToLower(u.Host) + strings.TrimSuffix(u.EscapedPath(), "/"), nil
}

// jsonObject checks a payload and returns it compacted; "" means none.
func jsonObject(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil || obj == nil {
		return "", errors.New("not a JSON object (write e.g. '{\"modelId\": \"dtmi:example:device;1\"}')")
	}
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		return "", fmt.Errorf("compacting the JSON: %w", err)
	}
	return b.String(), nil
}

// checkDevice checks a TPM device spec: auto | /path | swtpm:PATH |
// mssim:HOST:PORT.
func checkDevice(s string) error {
	switch {
	case s == "auto", filepath.IsAbs(s):
		return nil
	case strings.HasPrefix(s, "swtpm:"):
		if s == "swtpm:" {
			return errors.New(`"swtpm:" lacks the path of swtpm's socket (swtpm:PATH)`)
		}
		return nil
	case strings.HasPrefix(s, "mssim:"):
		if err := checkHostPort(strings.TrimPrefix(s, "mssim:")); err != nil {
			return fmt.Errorf("mssim:HOST:PORT: %w", err)
		}
		return nil
	}
	return fmt.Errorf("%q is not auto, a device path, swtpm:PATH or mssim:HOST:PORT", s)
}

// unlessEmpty runs check on s unless s is "" (the key's "not set").
// Setters may store before checking: a failed Load returns no Config.
func unlessEmpty(s string, check func(string) error) error {
	if s == "" {
		return nil
	}
	return check(s)
}

// checkHostPort checks HOST:PORT with a numeric port.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not HOST:PORT", s)
	case host == "":
		return fmt.Errorf("%q lacks the host", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("%q: port %q is not a number in 1..65535", s, port)
	}
	return nil
}

// checkProxy checks a proxy URL.
func checkProxy(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a proxy URL (e.g. \"http://proxy.example:3128\")", s)
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
		return nil
	}
	return fmt.Errorf("%q: scheme %q is not one of http, https, socks5, socks5h", s, u.Scheme)
}

// absPath checks that s is an absolute path and returns it cleaned.
func absPath(s string) (string, error) {
	if !filepath.IsAbs(s) {
		return "", fmt.Errorf("%q is not an absolute path", s)
	}
	return filepath.Clean(s), nil
}

// optionalAbsPath is absPath, or "" for "not set".
func optionalAbsPath(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return absPath(s)
}

// persistentHandle checks identity_handle and cert_key_handle: "" (none)
// or a handle the owner may make persistent that is not one dpsd itself
// uses.
func persistentHandle(s string) (tpmhandle.Handle, error) {
	if s == "" {
		return 0, nil
	}
	h, err := tpmhandle.Parse(s)
	switch {
	case err != nil:
		return 0, err
	case h == tpmhandle.SRK:
		return 0, fmt.Errorf("%q is the SRK's handle", s)
	case h == tpmhandle.EK:
		return 0, fmt.Errorf("%q is the EK's handle", s)
	}
	return h, nil
}
