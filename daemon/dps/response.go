package dps

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Status is a registration operation's status (REST EnrollmentStatus,
// §5.2); the emulator answers with the same values.
type Status string

// The operation statuses.
const (
	StatusUnassigned Status = "unassigned"
	StatusAssigning  Status = "assigning"
	StatusAssigned   Status = "assigned"
	StatusFailed     Status = "failed"
	StatusDisabled   Status = "disabled"
)

// DefaultKeyName is the key name production DPS sends in every challenge,
// used when a challenge names none.
const DefaultKeyName = "registration"

// Challenge is the 401 answer to the first PUT (§5.2).
type Challenge struct {
	// AuthenticationKey is blob #1, base64-decoded (parse it with
	// tpmdev/authblob).
	AuthenticationKey []byte
	// KeyName goes into the SAS token's skn: the challenge's keyName, or
	// DefaultKeyName when it names none.
	KeyName string
	// ServerDate is the response's Date header; zero when absent.
	ServerDate time.Time
}

// Operation is a registration operation's status, from the authenticated
// PUT or a poll.
type Operation struct {
	// ID is the operationId to poll.
	ID     string
	Status Status
	// RetryAfter is the server's Retry-After, clamped; 0 when absent.
	RetryAfter time.Duration
	// State is registrationState; nil when DPS sent none (it may omit it
	// while assigning). For StatusAssigned it is never nil and carries
	// AssignedHub, DeviceID and TPM.AuthenticationKey.
	State *RegistrationState
	// ServerDate is the response's Date header; zero when absent.
	ServerDate time.Time
}

// RegistrationState is DPS's DeviceRegistrationResult.
type RegistrationState struct {
	RegistrationID string
	Status         Status
	// Substatus: initialAssignment, deviceDataMigrated, deviceDataReset or
	// reprovisionedToInitialAssignment.
	Substatus   string
	AssignedHub string
	DeviceID    string
	TPM         TPMResult
	// Payload is the custom allocation's returned data; nil when absent.
	Payload      json.RawMessage
	ErrorCode    int
	ErrorMessage string
	CreatedAt    time.Time
	LastUpdated  time.Time
	ETag         string
	// IssuedCertificateChain is the operational certificate DPS issued for
	// the registration's csr: DER, leaf first, root last; nil when the
	// enrollment has no credential policy or no csr was sent. Not checked
	// here (daemon/x509cred verifies it).
	IssuedCertificateChain [][]byte
}

// TPMResult is registrationState.tpm.
type TPMResult struct {
	// AuthenticationKey is blob #2, base64-decoded; nil when absent.
	AuthenticationKey []byte
}

// maxBody bounds every response body read; DPS answers are a few KiB.
const maxBody = 64 << 10

// maxHeaderBytes bounds the headers of every response, the proxy's answer
// to CONNECT included; DPS sends about 1 KiB.
const maxHeaderBytes = 64 << 10

// Bounds on values that later become file contents, token resources and
// MQTT topics.
const (
	maxOperationID = 256
	maxHubName     = 253 // a DNS name
	maxDeviceID    = 128 // IoT Hub's limit
	maxBlob        = 8192
	maxKeyName     = 64
	// maxChain: leaf, a few intermediates, root. The body bound (maxBody)
	// limits their size.
	maxChain = 8
)

// readBody reads at most maxBody bytes of a response.
func readBody(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("%w: body larger than %d bytes", ErrProtocol, maxBody)
	}
	return b, nil
}

// decodeObject decodes body, which must be exactly one JSON object.
func decodeObject(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: body is not the expected JSON: %v", ErrProtocol, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the JSON object", ErrProtocol)
	}
	return nil
}

// challengeBody is the 401 body, raw so that a member of the wrong type is
// reported as such rather than mistaken for "no challenge".
type challengeBody struct {
	Status            json.RawMessage `json:"status"`
	AuthenticationKey json.RawMessage `json:"authenticationKey"`
	KeyName           json.RawMessage `json:"keyName"`
}

// parseChallenge reads a 401 body. It reports ok=false when the body is not
// a challenge at all (no authenticationKey: a plain 401 error), and an
// error when it claims to be one but breaks the §5.2 shape: a status member
// (the C SDK takes "no status" as the challenge marker), an
// authenticationKey that is not a base64 string, a keyName that is not a
// short string. An absent, null or empty keyName means DefaultKeyName.
func parseChallenge(body []byte) (ch *Challenge, ok bool, err error) {
	var b challengeBody
	if decodeObject(body, &b) != nil || len(b.AuthenticationKey) == 0 || string(b.AuthenticationKey) == "null" {
		return nil, false, nil
	}
	if len(b.Status) != 0 && string(b.Status) != "null" {
		return nil, true, fmt.Errorf("%w: challenge has a status member", ErrProtocol)
	}
	var keyB64, keyName string
	if err := json.Unmarshal(b.AuthenticationKey, &keyB64); err != nil {
		return nil, true, fmt.Errorf("%w: challenge authenticationKey is not a string", ErrProtocol)
	}
	key, err := decodeBlob("authenticationKey", keyB64)
	if err != nil {
		return nil, true, err
	}
	if len(b.KeyName) != 0 && (json.Unmarshal(b.KeyName, &keyName) != nil || len(keyName) > maxKeyName) {
		return nil, true, fmt.Errorf("%w: challenge with an unusable keyName", ErrProtocol)
	}
	if keyName == "" {
		// Production DPS always names it; the Node SDK signs with this
		// name when it does not, and so does dpsd.
		keyName = DefaultKeyName
	}
	return &Challenge{AuthenticationKey: key, KeyName: keyName}, true, nil
}

// decodeBlob decodes a standard base64 authenticationKey.
func decodeBlob(field, s string) ([]byte, error) {
	if s == "" || len(s) > base64.StdEncoding.EncodedLen(maxBlob) {
		return nil, fmt.Errorf("%w: %s of %d characters", ErrProtocol, field, len(s))
	}
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not base64: %v", ErrProtocol, field, err)
	}
	return b, nil
}

// decodeChain decodes issuedCertificateChain: at most maxChain non-empty
// standard base64 certificates; nil when absent.
func decodeChain(chain []string) ([][]byte, error) {
	if len(chain) == 0 {
		return nil, nil
	}
	if len(chain) > maxChain {
		return nil, fmt.Errorf("%w: issuedCertificateChain of %d certificates, at most %d", ErrProtocol, len(chain), maxChain)
	}
	out := make([][]byte, len(chain))
	for i, c := range chain {
		der, err := base64.StdEncoding.Strict().DecodeString(c)
		if err != nil || len(der) == 0 {
			return nil, fmt.Errorf("%w: issuedCertificateChain[%d] is not base64 DER", ErrProtocol, i)
		}
		out[i] = der
	}
	return out, nil
}

// operationBody is RegistrationOperationStatus.
type operationBody struct {
	OperationID       string             `json:"operationId"`
	Status            Status             `json:"status"`
	RegistrationState *registrationState `json:"registrationState"`
}

// registrationState is DeviceRegistrationResult as sent.
type registrationState struct {
	RegistrationID string `json:"registrationId"`
	Status         Status `json:"status"`
	Substatus      string `json:"substatus"`
	AssignedHub    string `json:"assignedHub"`
	DeviceID       string `json:"deviceId"`
	TPM            *struct {
		AuthenticationKey string `json:"authenticationKey"`
	} `json:"tpm"`
	Payload      json.RawMessage `json:"payload"`
	ErrorCode    int             `json:"errorCode"`
	ErrorMessage string          `json:"errorMessage"`
	CreatedAt    *time.Time      `json:"createdDateTimeUtc"`
	LastUpdated  *time.Time      `json:"lastUpdatedDateTimeUtc"`
	ETag         string          `json:"etag"`
	Chain        []string        `json:"issuedCertificateChain"`
}

// parseOperation reads a 200/202 body of the authenticated PUT or a poll.
func parseOperation(body []byte) (*Operation, error) {
	var b operationBody
	if err := decodeObject(body, &b); err != nil {
		return nil, err
	}
	if b.OperationID == "" || len(b.OperationID) > maxOperationID {
		return nil, fmt.Errorf("%w: operationId missing or longer than %d", ErrProtocol, maxOperationID)
	}
	switch b.Status {
	case StatusUnassigned, StatusAssigning, StatusAssigned, StatusFailed, StatusDisabled:
	default:
		return nil, fmt.Errorf("%w: unknown status %q", ErrProtocol, truncate(string(b.Status)))
	}
	op := &Operation{ID: b.OperationID, Status: b.Status}
	if rs := b.RegistrationState; rs != nil {
		st := &RegistrationState{
			RegistrationID: rs.RegistrationID,
			Status:         rs.Status,
			Substatus:      rs.Substatus,
			AssignedHub:    rs.AssignedHub,
			DeviceID:       rs.DeviceID,
			ErrorCode:      rs.ErrorCode,
			ErrorMessage:   rs.ErrorMessage,
			ETag:           rs.ETag,
		}
		if len(rs.Payload) != 0 && string(rs.Payload) != "null" {
			st.Payload = rs.Payload
		}
		if rs.CreatedAt != nil {
			st.CreatedAt = *rs.CreatedAt
		}
		if rs.LastUpdated != nil {
			st.LastUpdated = *rs.LastUpdated
		}
		if rs.TPM != nil && rs.TPM.AuthenticationKey != "" {
			key, err := decodeBlob("registrationState.tpm.authenticationKey", rs.TPM.AuthenticationKey)
			if err != nil && b.Status == StatusAssigned {
				return nil, fmt.Errorf("%w (%w)", ErrBadAssignment, err)
			}
			if err != nil {
				return nil, err
			}
			st.TPM.AuthenticationKey = key
		}
		chain, err := decodeChain(rs.Chain)
		if err != nil && b.Status == StatusAssigned {
			return nil, fmt.Errorf("%w (%w)", ErrBadAssignment, err)
		}
		if err != nil {
			return nil, err
		}
		st.IssuedCertificateChain = chain
		op.State = st
	}
	if op.Status == StatusAssigned {
		if err := checkAssigned(op.State); err != nil {
			return nil, fmt.Errorf("%w (%w)", ErrBadAssignment, err)
		}
	}
	return op, nil
}

// checkAssigned enforces what every SDK needs from an assignment (§5.2):
// the hub, the device ID and blob #2, with values safe to put into a token
// resource and MQTT topics.
func checkAssigned(st *RegistrationState) error {
	switch {
	case st == nil:
		return fmt.Errorf("%w: assigned without registrationState", ErrProtocol)
	case len(st.TPM.AuthenticationKey) == 0:
		return fmt.Errorf("%w: assigned without registrationState.tpm.authenticationKey", ErrProtocol)
	}
	if err := validHubName(st.AssignedHub); err != nil {
		return err
	}
	return validDeviceID(st.DeviceID)
}

// validHubName accepts a host name: letters, digits, '-' and '.'.
func validHubName(h string) error {
	if h == "" || len(h) > maxHubName {
		return fmt.Errorf("%w: assignedHub missing or longer than %d", ErrProtocol, maxHubName)
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !isAlnum(c) && c != '-' && c != '.' {
			return fmt.Errorf("%w: assignedHub %q is not a host name", ErrProtocol, truncate(h))
		}
	}
	return nil
}

// validDeviceID applies IoT Hub's device ID rules: up to 128 ASCII
// letters, digits and "-.%_*?!(),:=@$'". They exclude "/", "+" and "#",
// which would break the MQTT topics built from it.
func validDeviceID(id string) error {
	if id == "" || len(id) > maxDeviceID {
		return fmt.Errorf("%w: deviceId missing or longer than %d", ErrProtocol, maxDeviceID)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && !strings.ContainsRune("-.%_*?!(),:=@$'", rune(c)) {
			return fmt.Errorf("%w: deviceId %q has character %q", ErrProtocol, truncate(id), c)
		}
	}
	return nil
}

// errorBody is ProvisioningServiceErrorDetails. errorCode is a number in
// every capture, but a string would not be worth failing over.
type errorBody struct {
	ErrorCode  json.RawMessage `json:"errorCode"`
	TrackingID string          `json:"trackingId"`
	Message    string          `json:"message"`
}

// parseError turns a non-success response into an *Error. Any body is
// accepted (a proxy may answer with HTML); what cannot be read is left out.
func parseError(status int, h http.Header, body []byte) *Error {
	e := &Error{HTTPStatus: status}
	var b errorBody
	if json.Unmarshal(body, &b) == nil {
		e.Code = parseCode(string(b.ErrorCode))
		e.TrackingID = truncate(b.TrackingID)
		e.Message = truncate(b.Message)
	}
	if e.Code == 0 {
		e.Code = parseCode(h.Get("x-ms-error-code"))
	}
	return e
}

// parseCode reads an error code sent as a JSON number, a JSON string or a
// header value; 0 when it is none of these.
func parseCode(s string) int {
	n, err := strconv.Atoi(strings.Trim(s, `"`))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// Limits on a server's Retry-After: at least 1 s (0 would spin), at most 10
// minutes (a misconfigured proxy must not park the device for a day).
const (
	minRetryAfter = time.Second
	maxRetryAfter = 10 * time.Minute
)

// retryAfter reads a Retry-After header: delay-seconds or an HTTP-date,
// which is measured from the server's own Date when it sent one (the
// device's clock may be wrong) and from now otherwise. 0 means absent or
// unreadable; anything else is clamped to minRetryAfter..maxRetryAfter.
func retryAfter(v string, serverDate, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		d = maxRetryAfter // also for a number too large for uint64
		if err == nil && secs < uint64(maxRetryAfter/time.Second) {
			d = time.Duration(secs) * time.Second
		}
	} else if t, err := http.ParseTime(v); err == nil {
		if !serverDate.IsZero() {
			now = serverDate
		}
		d = t.Sub(now)
	} else {
		return 0
	}
	return min(max(d, minRetryAfter), maxRetryAfter)
}

// serverDate reads the Date header; zero when absent or unreadable.
func serverDate(h http.Header) time.Time {
	t, err := http.ParseTime(h.Get("Date"))
	if err != nil {
		return time.Time{}
	}
	return t
}

// truncate keeps strings from the network short in errors and logs.
func truncate(s string) string {
	const max = 256
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}
