package dpsemu

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"
)

// Error codes the emulator puts in ProvisioningServiceErrorDetails bodies
// (protocol §5.2). 401002 is what production DPS sends for an unknown
// registration and a bad token; the others follow DPS's pattern of the HTTP
// status followed by three digits, and are the emulator's own choice
// (clients branch on the HTTP status, not on these).
const (
	codeBadRequest       = 400001 // malformed JSON, bad registration ID, missing tpm
	codeUnauthorized     = 401002 // unknown registration, EK mismatch, bad or expired SAS
	codeNotFound         = 404001 // unknown path or ID scope
	codeUnknownOperation = 404002
	codeMethodNotAllowed = 405001
	codeTooLarge         = 413001
	codeUnsupportedType  = 415001
	codeThrottled        = 429001
	codeInternal         = 500001 // the registry could not be written
	codeUnavailable      = 503001 // injected by the serverErrors fault
)

// errorBody is ProvisioningServiceErrorDetails, the JSON DPS sends for every
// error outside the TPM challenge.
type errorBody struct {
	ErrorCode    int       `json:"errorCode"`
	TrackingID   string    `json:"trackingId"`
	Message      string    `json:"message"`
	TimestampUTC time.Time `json:"timestampUtc"`
}

// apiError is a refusal that knows its HTTP status and DPS error code; the
// DPS handlers return it and one place writes it.
type apiError struct {
	status  int
	code    int
	message string
}

func errorf(status, code int, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

// writeError sends e as an errorBody with DPS's x-ms-error-code header.
func writeError(w http.ResponseWriter, e *apiError, now time.Time) {
	w.Header().Set("x-ms-error-code", fmt.Sprint(e.code))
	writeJSON(w, e.status, errorBody{
		ErrorCode:    e.code,
		TrackingID:   newTrackingID(),
		Message:      e.message,
		TimestampUTC: now.UTC(),
	})
}

// newTrackingID returns a random UUID-shaped id, as DPS's trackingId is.
func newTrackingID() string {
	var b [16]byte
	rand.Read(b[:]) // crypto/rand.Read never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
