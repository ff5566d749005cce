package dpsemu

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
)

// maxDPSBody bounds a registration request: the EK and SRK are a few
// hundred bytes; the rest is room for a custom allocation payload.
const maxDPSBody = 64 << 10

// deviceRegistration is the body of PUT register (§5.1). Unknown fields are
// ignored, as DPS does.
type deviceRegistration struct {
	RegistrationID string          `json:"registrationId"`
	TPM            *tpmKeys        `json:"tpm"`
	Payload        json.RawMessage `json:"payload"`
	// CSR is base64 of a DER PKCS #10 request (api-version 2026-11-01):
	// with a credential policy on the enrollment, DPS issues a certificate.
	CSR string `json:"csr"`
}

// tpmKeys carries base64 of the marshalled TPM2B_PUBLIC of the EK and SRK.
type tpmKeys struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey"`
}

// challengeBody is the 401 answer to an unauthenticated TPM registration
// (§5.2): no status member, keyName for the SAS's skn.
type challengeBody struct {
	Message                      string  `json:"message"`
	AuthenticationKey            string  `json:"authenticationKey"`
	UnencryptedAuthenticationKey *string `json:"unencryptedAuthenticationKey"`
	KeyName                      string  `json:"keyName,omitempty"`
}

// operationStatus is RegistrationOperationStatus (§5.2).
type operationStatus struct {
	OperationID       string             `json:"operationId"`
	Status            dps.Status         `json:"status"`
	RegistrationState *registrationState `json:"registrationState,omitempty"`
}

// registrationState is DeviceRegistrationResult (§5.2).
type registrationState struct {
	TPM                    *tpmResult      `json:"tpm,omitempty"`
	RegistrationID         string          `json:"registrationId"`
	CreatedDateTimeUTC     *time.Time      `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string          `json:"assignedHub,omitempty"`
	DeviceID               string          `json:"deviceId,omitempty"`
	Status                 dps.Status      `json:"status"`
	Substatus              string          `json:"substatus,omitempty"`
	ErrorCode              int             `json:"errorCode,omitempty"`
	ErrorMessage           string          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC *time.Time      `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string          `json:"etag,omitempty"`
	Payload                json.RawMessage `json:"payload,omitempty"`
	// IssuedCertificateChain is base64 DER, leaf first, root last: the
	// operational certificate issued for the registration's CSR.
	IssuedCertificateChain []string `json:"issuedCertificateChain,omitempty"`
}

// tpmResult is TpmRegistrationResult: blob #2.
type tpmResult struct {
	AuthenticationKey string `json:"authenticationKey"`
}

// dpsRoute is a parsed DPS path.
type dpsRoute struct {
	idScope, regID string
	opID           string // empty for register and lookup
	lookup         bool   // the registration status lookup
}

// parseDPSPath splits /{idScope}/registrations/{regId}/register,
// /{idScope}/registrations/{regId}/operations/{opId} and the status lookup
// /{idScope}/registrations/{regId}, each segment
// percent-decoded. ok is false for any other path.
func parseDPSPath(u *url.URL) (r dpsRoute, ok bool) {
	segs := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/")
	for i, s := range segs {
		v, err := url.PathUnescape(s)
		if err != nil || v == "" {
			return dpsRoute{}, false
		}
		segs[i] = v
	}
	switch {
	case len(segs) == 3 && segs[1] == "registrations":
		return dpsRoute{idScope: segs[0], regID: segs[2], lookup: true}, true
	case len(segs) == 4 && segs[1] == "registrations" && segs[3] == "register":
		return dpsRoute{idScope: segs[0], regID: segs[2]}, true
	case len(segs) == 5 && segs[1] == "registrations" && segs[3] == "operations":
		return dpsRoute{idScope: segs[0], regID: segs[2], opID: segs[4]}, true
	}
	return dpsRoute{}, false
}

// statusWriter remembers the status written, for /stats.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// ServeHTTP is the DPS device endpoint. It counts every request, applies
// the configured faults, and dispatches; every error is a JSON body.
func (s *service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, routed := parseDPSPath(r.URL)
	kind := statOther
	switch {
	case routed && route.opID != "":
		kind = statPoll
	case routed && route.lookup:
		kind = statLookup
	case routed && r.Header.Get("Authorization") == "":
		kind = statRegisterChallenge
	case routed:
		kind = statRegister
	}
	s.stats.request(kind)
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		if sw.status != 0 {
			s.stats.status(sw.status)
		}
	}()

	latency, fault, retryAfter := s.faults.take()
	if latency > 0 && !sleep(r.Context(), latency) {
		return
	}
	switch fault {
	case faultDrop:
		s.stats.add(statDropped)
		// net/http closes the connection without an answer.
		panic(http.ErrAbortHandler)
	case faultThrottle:
		s.stats.add(statThrottled)
		sw.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		writeError(sw, errorf(http.StatusTooManyRequests, codeThrottled, "Request throttled (injected fault)"), time.Now())
		return
	case faultServerError:
		s.stats.add(statServerError)
		writeError(sw, errorf(http.StatusServiceUnavailable, codeUnavailable, "Service unavailable (injected fault)"), time.Now())
		return
	}

	if err := s.serveDPS(sw, r, route, routed); err != nil {
		if err.status == http.StatusMethodNotAllowed {
			sw.Header().Set("Allow", route.method())
		}
		s.log.Info("DPS request refused", "method", r.Method, "path", r.URL.Path, "status", err.status, "reason", err.message)
		writeError(sw, err, time.Now())
	}
}

// serveDPS handles one request that no fault intercepted.
func (s *service) serveDPS(w http.ResponseWriter, r *http.Request, route dpsRoute, routed bool) *apiError {
	switch {
	case !routed:
		return errorf(http.StatusNotFound, codeNotFound, "no such resource: %s", r.URL.Path)
	case !strings.EqualFold(route.idScope, s.idScope):
		return errorf(http.StatusNotFound, codeNotFound, "unknown ID scope %q", route.idScope)
	case r.Method != route.method():
		return errorf(http.StatusMethodNotAllowed, codeMethodNotAllowed, "%s takes %s, not %s", route.what(), route.method(), r.Method)
	}
	if err := dps.ValidRegistrationID(route.regID); err != nil {
		return errorf(http.StatusBadRequest, codeBadRequest, "%v", err)
	}
	now := time.Now()
	auth := r.Header.Get("Authorization")

	if route.opID != "" {
		res, err := s.poll(route.regID, route.opID, auth, now)
		if err != nil {
			return err
		}
		if res.status == http.StatusAccepted {
			w.Header().Set("Retry-After", s.faults.retryAfter(s.retryAfter))
		}
		writeRawJSON(w, res.status, res.body)
		return nil
	}

	body, err := readRegistration(w, r, route.regID)
	if err != nil {
		return err
	}
	if route.lookup {
		return s.serveLookup(w, route.regID, auth, body, now)
	}
	ek, srk, err := decodeKeys(body.TPM)
	if err != nil {
		return err
	}
	if auth == "" {
		if ek == nil || srk == nil {
			return errorf(http.StatusBadRequest, codeBadRequest, "tpm.endorsementKey and tpm.storageRootKey are required")
		}
		blob, err := s.issueChallenge(route.regID, ek, srk)
		if err != nil {
			return err
		}
		ch := challengeBody{
			Message:           "Authorization required, resend request using supplied key",
			AuthenticationKey: base64.StdEncoding.EncodeToString(blob),
			KeyName:           keyName,
		}
		if s.faults.omitKeyName() {
			ch.KeyName = ""
		}
		writeJSON(w, http.StatusUnauthorized, ch)
		return nil
	}
	opID, err := s.register(route.regID, auth, ek, srk, body.Payload, body.CSR, now)
	if err != nil {
		return err
	}
	w.Header().Set("Retry-After", s.faults.retryAfter(s.retryAfter))
	writeJSON(w, http.StatusAccepted, operationStatus{OperationID: opID, Status: dps.StatusAssigning})
	return nil
}

// method is the HTTP method a route takes.
func (r dpsRoute) method() string {
	switch {
	case r.opID != "":
		return http.MethodGet
	case r.lookup:
		return http.MethodPost
	}
	return http.MethodPut
}

// what names a route in errors.
func (r dpsRoute) what() string {
	switch {
	case r.opID != "":
		return "operations"
	case r.lookup:
		return "the status lookup"
	}
	return "register"
}

// serveLookup answers the registration status lookup (POST
// /{idScope}/registrations/{regId}): the last completed registration's
// state, authenticated like a poll. It never carries a certificate chain,
// and a csr in its body is refused, as DPS does.
func (s *service) serveLookup(w http.ResponseWriter, regID, auth string, body deviceRegistration, now time.Time) *apiError {
	if body.CSR != "" {
		return errorf(http.StatusBadRequest, codeBadRequest, "csr is not accepted by the registration status lookup; send it with PUT register")
	}
	state, err := s.lookup(regID, auth, now)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, state)
	return nil
}

// readRegistration reads and decodes a PUT register body: JSON content
// type, at most maxDPSBody bytes, and a registrationId matching the path
// when present.
func readRegistration(w http.ResponseWriter, r *http.Request, regID string) (deviceRegistration, *apiError) {
	var body deviceRegistration
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return body, errorf(http.StatusUnsupportedMediaType, codeUnsupportedType, "Content-Type must be application/json, not %q", r.Header.Get("Content-Type"))
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxDPSBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return body, errorf(http.StatusRequestEntityTooLarge, codeTooLarge, "request body over %d bytes", maxDPSBody)
		}
		return body, errorf(http.StatusBadRequest, codeBadRequest, "reading the body: %v", err)
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return body, errorf(http.StatusBadRequest, codeBadRequest, "body is not a DeviceRegistration: %v", err)
	}
	if body.RegistrationID != "" && !strings.EqualFold(body.RegistrationID, regID) {
		return body, errorf(http.StatusBadRequest, codeBadRequest, "registrationId %q differs from the path's %q", body.RegistrationID, regID)
	}
	if string(body.Payload) == "null" {
		body.Payload = nil
	}
	return body, nil
}

// decodeKeys base64-decodes the EK and SRK; absent ones are nil.
func decodeKeys(t *tpmKeys) (ek, srk []byte, aerr *apiError) {
	if t == nil {
		return nil, nil, nil
	}
	var err error
	if t.EndorsementKey != "" {
		if ek, err = base64.StdEncoding.DecodeString(t.EndorsementKey); err != nil {
			return nil, nil, errorf(http.StatusBadRequest, codeBadRequest, "tpm.endorsementKey is not base64: %v", err)
		}
	}
	if t.StorageRootKey != "" {
		if srk, err = base64.StdEncoding.DecodeString(t.StorageRootKey); err != nil {
			return nil, nil, errorf(http.StatusBadRequest, codeBadRequest, "tpm.storageRootKey is not base64: %v", err)
		}
	}
	return ek, srk, nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// writeJSON sends v as the JSON body DPS sends.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only the package's own types are written; they always encode.
		http.Error(w, "encoding the answer failed", http.StatusInternalServerError)
		return
	}
	writeRawJSON(w, status, b)
}

func writeRawJSON(w http.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}
