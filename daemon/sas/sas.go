// Package sas builds and verifies the shared access signature tokens DPS and
// IoT Hub accept (docs/dps-tpm-protocol.md §4).
//
// A token is "SharedAccessSignature sr=…&sig=…&se=…[&skn=…]" where sig is
// HMAC-SHA256 over the sr value exactly as it appears in the token, a line
// feed, and se. The device signs inside the TPM, so New takes a Signer; the
// emulator holds the key and uses Parse and Verify.
package sas

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Errors Verify and Parse return; callers branch on them with errors.Is.
var (
	// ErrMalformed: the string is not a SAS token of the §4 shape.
	ErrMalformed = errors.New("malformed SAS token")
	// ErrSignature: the signature does not match the key.
	ErrSignature = errors.New("SAS signature mismatch")
	// ErrExpired: se is in the past, beyond the allowed skew.
	ErrExpired = errors.New("SAS token expired")
	// ErrResource: the token was made for another resource.
	ErrResource = errors.New("SAS token for another resource")
)

// Scheme is the token's leading word, followed by one space.
const Scheme = "SharedAccessSignature"

// maxTokenLen bounds what Parse reads. A hub resource (host ≤ 253, device
// ID ≤ 128) fully percent-encoded stays far below it.
const maxTokenLen = 4096

// RegistrationResource is the resource a DPS registration's token is for
// (§4.1): "{idScope}/registrations/{registrationId}". DPS also puts it,
// as the trailer, into the challenge it encrypts to the EK.
func RegistrationResource(idScope, registrationID string) string {
	return idScope + "/registrations/" + registrationID
}

// DeviceResource is the resource a hub device token is for (§4.2):
// "{hub}/devices/{deviceId}". DPS puts it, as the trailer, into the
// hub key it encrypts to the EK.
func DeviceResource(hub, deviceID string) string {
	return hub + "/devices/" + deviceID
}

// Signer computes HMAC-SHA256 of data with the identity key, in the TPM.
type Signer func(ctx context.Context, data []byte) ([]byte, error)

// New makes a token for resource (RegistrationResource or DeviceResource)
// valid until expiry. It emits the Node/C# form:
// sr percent-encoded with uppercase hex (so "/" is "%2F"), sig the
// percent-encoded standard base64 of the HMAC, se in decimal seconds, and
// skn only when keyName is not empty (DPS wants skn=registration; a hub
// device token has none).
func New(ctx context.Context, resource string, expiry time.Time, keyName string, sign Signer) (string, error) {
	if resource == "" {
		return "", errors.New("making SAS token: empty resource")
	}
	if expiry.Unix() <= 0 {
		return "", fmt.Errorf("making SAS token: expiry %v is not after 1970", expiry)
	}
	sr := escape(resource)
	se := strconv.FormatInt(expiry.Unix(), 10)
	sig, err := sign(ctx, []byte(sr+"\n"+se))
	if err != nil {
		return "", fmt.Errorf("signing SAS token: %w", err)
	}
	var b strings.Builder
	b.WriteString(Scheme + " sr=" + sr)
	b.WriteString("&sig=" + escape(base64.StdEncoding.EncodeToString(sig)))
	b.WriteString("&se=" + se)
	if keyName != "" {
		b.WriteString("&skn=" + escape(keyName))
	}
	return b.String(), nil
}

// escape percent-encodes like JavaScript's encodeURIComponent as far as a
// resource or base64 needs: everything but letters, digits and "-_.~",
// with uppercase hex and "%20" for a space.
func escape(s string) string {
	return strings.ReplaceAll(url.QueryEscape(s), "+", "%20")
}

// Token is a parsed SAS token.
type Token struct {
	// RawSR is sr exactly as sent: the signed text (§4.1 step 2).
	RawSR string
	// Resource is sr percent-decoded.
	Resource string
	// Sig is the decoded signature.
	Sig []byte
	// Expiry is se.
	Expiry time.Time
	// KeyName is skn, decoded; empty when absent.
	KeyName string
}

// Parse reads a token as found in an Authorization header or an MQTT
// password (§4.1 step 1–2). Fields may come in any order; sr, sig and se are
// required, skn is optional; an unknown or repeated field is an error. se
// must be canonical decimal, so that the signed text can be rebuilt from
// Expiry.
func Parse(s string) (Token, error) {
	fail := func(format string, args ...any) (Token, error) {
		return Token{}, fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
	}
	if len(s) > maxTokenLen {
		return fail("%d bytes, limit %d", len(s), maxTokenLen)
	}
	rest, ok := strings.CutPrefix(s, Scheme+" ")
	if !ok {
		return fail("does not start with %q", Scheme+" ")
	}
	fields := map[string]string{}
	for part := range strings.SplitSeq(rest, "&") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return fail("field %q has no '='", truncate(part))
		}
		switch name {
		case "sr", "sig", "se", "skn":
		default:
			return fail("unknown field %q", truncate(name))
		}
		if _, dup := fields[name]; dup {
			return fail("field %s repeated", name)
		}
		fields[name] = value
	}
	var t Token
	var err error
	for _, name := range []string{"sr", "sig", "se"} {
		if fields[name] == "" {
			return fail("field %s missing or empty", name)
		}
	}
	t.RawSR = fields["sr"]
	if t.Resource, err = url.PathUnescape(t.RawSR); err != nil {
		return fail("sr: %v", err)
	}
	// PathUnescape keeps a literal "+", which base64 needs when a client did
	// not encode it.
	sig, err := url.PathUnescape(fields["sig"])
	if err != nil {
		return fail("sig: %v", err)
	}
	if t.Sig, err = base64.StdEncoding.Strict().DecodeString(sig); err != nil {
		return fail("sig is not base64: %v", err)
	}
	if len(t.Sig) != sha256.Size {
		return fail("sig of %d bytes, want %d (HMAC-SHA256)", len(t.Sig), sha256.Size)
	}
	se, err := url.PathUnescape(fields["se"])
	if err != nil {
		return fail("se: %v", err)
	}
	secs, err := strconv.ParseInt(se, 10, 64)
	if err != nil || secs <= 0 || strconv.FormatInt(secs, 10) != se {
		return fail("se %q is not a positive decimal number of seconds", truncate(se))
	}
	t.Expiry = time.Unix(secs, 0)
	if t.KeyName, err = url.PathUnescape(fields["skn"]); err != nil {
		return fail("skn: %v", err)
	}
	return t, nil
}

// truncate keeps error messages short when the input is hostile.
func truncate(s string) string {
	const max = 32
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// Verify checks a DPS token (§4.1 steps 3–5): the signature over the raw sr
// with key (constant-time), the decoded sr equal to resource ignoring case,
// and the expiry not before now-skew.
func (t Token) Verify(key []byte, resource string, now time.Time, skew time.Duration) error {
	return t.verify(key, resource, strings.EqualFold, now, skew)
}

// VerifyScope checks a hub token (§4.2): as Verify, but the decoded sr may
// also be a segment prefix of resource, so that a token for
// "{hub}/devices/{id}" covers "{hub}/devices/{id}/messages/events".
func (t Token) VerifyScope(key []byte, resource string, now time.Time, skew time.Duration) error {
	return t.verify(key, resource, covers, now, skew)
}

// covers reports whether scope equals resource or is a prefix of it that
// ends at a "/", ignoring case and a trailing "/" on scope.
func covers(scope, resource string) bool {
	scope = strings.TrimSuffix(scope, "/")
	if scope == "" || len(resource) < len(scope) || !strings.EqualFold(resource[:len(scope)], scope) {
		return false
	}
	return len(resource) == len(scope) || resource[len(scope)] == '/'
}

// verify runs the checks in the order of §4.1: signature, resource, expiry.
func (t Token) verify(key []byte, resource string, match func(sr, resource string) bool, now time.Time, skew time.Duration) error {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(t.RawSR + "\n" + strconv.FormatInt(t.Expiry.Unix(), 10)))
	if !hmac.Equal(m.Sum(nil), t.Sig) {
		return ErrSignature
	}
	if !match(t.Resource, resource) {
		return fmt.Errorf("%w: token for %q, request for %q", ErrResource, t.Resource, resource)
	}
	if t.Expiry.Add(skew).Before(now) {
		return fmt.Errorf("%w: at %s (now %s, skew %s)", ErrExpired, t.Expiry.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), skew)
	}
	return nil
}
