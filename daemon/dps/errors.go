package dps

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinels callers branch on with errors.Is.
var (
	// ErrRegistrationID: a registration ID breaks DPS's rules.
	ErrRegistrationID = errors.New("invalid registration ID")
	// ErrProtocol: DPS answered, but not in the shape §5.2 describes (a
	// success without a challenge, a body that is not the expected JSON, an
	// `assigned` without its mandatory fields). Not retried soon by itself:
	// it usually means a proxy or endpoint that is not DPS.
	ErrProtocol = errors.New("unexpected DPS response")
	// ErrBadAssignment: DPS answered `assigned` without a usable hub,
	// device ID or key. It also matches ErrProtocol. DPS has replaced the
	// hub key all the same, so the device's previous key is dead.
	ErrBadAssignment = fmt.Errorf("%w: assigned without a usable hub, device ID or key", ErrProtocol)
)

// Error is a failed exchange with DPS: an HTTP error status with its
// ProvisioningServiceErrorDetails body, or (HTTPStatus 0) a network failure.
type Error struct {
	// HTTPStatus is the response status; 0 when no response arrived.
	HTTPStatus int
	// Code is the body's errorCode (or the x-ms-error-code header), e.g.
	// 401002; 0 when DPS sent none.
	Code int
	// Message is the body's message, or the HTTP status text.
	Message string
	// TrackingID is DPS's trackingId, to quote to Azure support.
	TrackingID string
	// RetryAfter is the server's Retry-After, clamped (see retryAfter); 0
	// when absent.
	RetryAfter time.Duration
	// ServerDate is the response's Date header; zero when absent.
	ServerDate time.Time
	// Err is the network error when HTTPStatus is 0.
	Err error
}

// Error implements error.
func (e *Error) Error() string {
	if e.HTTPStatus == 0 {
		return fmt.Sprintf("DPS unreachable: %v", e.Err)
	}
	s := fmt.Sprintf("DPS answered %d %s", e.HTTPStatus, http.StatusText(e.HTTPStatus))
	if e.Code != 0 {
		s += fmt.Sprintf(" (error %d)", e.Code)
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.TrackingID != "" {
		s += " [trackingId " + e.TrackingID + "]"
	}
	return s
}

// Unwrap returns the network error, if any.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether trying again later may succeed: a network
// failure, 429 (throttled) or a 5xx (§5.3).
func (e *Error) Temporary() bool {
	return e.HTTPStatus == 0 || e.HTTPStatus == http.StatusTooManyRequests || e.HTTPStatus >= 500
}

// Permanent reports whether DPS refused the device itself, which retrying
// will not change until someone fixes the enrollment or the device: 400
// (bad request), 401 without a challenge (unknown enrollment, EK mismatch,
// bad or expired token), 403, 404 (unknown scope, registration or
// operation). A disabled enrollment arrives as an Operation with status
// "disabled", not as an Error.
func (e *Error) Permanent() bool {
	switch e.HTTPStatus {
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}
