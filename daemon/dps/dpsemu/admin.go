package dpsemu

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
)

// maxAdminBody bounds admin request bodies (an enrollment with an initial
// twin, a method payload).
const maxAdminBody = 1 << 20

// Admin error codes, in the same body shape as DPS errors.
const (
	codeAdminBadRequest = 400000
	codeAdminForbidden  = 403000
	codeAdminNotFound   = 404000
	codeAdminConflict   = 409000
	codeDeviceOffline   = 404103 // IoT Hub's DeviceNotOnline
	codeMethodTimeout   = 504101 // IoT Hub's GatewayTimeout for methods
)

// deviceView is the body of GET /devices/{deviceId}.
type deviceView struct {
	DeviceID        string          `json:"deviceId"`
	Hub             string          `json:"hub"`
	Status          string          `json:"status"`
	ConnectionState string          `json:"connectionState"`
	Reported        json.RawMessage `json:"reported"`
	ReportedVersion int             `json:"reportedVersion"`
}

// methodResult is the body of POST /devices/{id}/methods/{name}: the
// device's answer, as IoT Hub's service API returns it.
type methodResult struct {
	Status  int             `json:"status"`
	Payload json.RawMessage `json:"payload"`
}

// adminHandler returns the admin API (design.md, "The emulator").
func (s *service) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /enrollments/{registrationId}", s.adminPutEnrollment)
	mux.HandleFunc("GET /enrollments/{registrationId}", s.adminGetEnrollment)
	mux.HandleFunc("DELETE /enrollments/{registrationId}", s.adminDeleteEnrollment)
	mux.HandleFunc("GET /registrations/{registrationId}", s.adminGetRegistration)
	mux.HandleFunc("GET /devices/{deviceId}", s.adminGetDevice)
	mux.HandleFunc("DELETE /devices/{deviceId}", s.adminDeleteDevice)
	mux.HandleFunc("POST /devices/{deviceId}/methods/{name}", s.adminInvokeMethod)
	mux.HandleFunc("PUT /credentialPolicies/{name}", s.adminPutPolicy)
	mux.HandleFunc("GET /credentialPolicies/{name}", s.adminGetPolicy)
	mux.HandleFunc("DELETE /credentialPolicies/{name}", s.adminDeletePolicy)
	mux.HandleFunc("GET /certificates/device-root", s.adminDeviceRoot)
	mux.HandleFunc("PUT /faults", s.adminPutFaults)
	mux.HandleFunc("GET /faults", s.adminGetFaults)
	mux.HandleFunc("GET /stats", s.adminStats)
	return refuseBrowsers(mux)
}

// refuseBrowsers turns away requests a web page could make: the admin API
// listens on loopback, where any local browser tab can reach it.
func refuseBrowsers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" {
			adminError(w, http.StatusForbidden, codeAdminForbidden, "browser requests are refused")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func adminError(w http.ResponseWriter, status, code int, format string, args ...any) {
	writeError(w, errorf(status, code, format, args...), time.Now())
}

// readAdminJSON decodes a bounded JSON body into v; strict rejects unknown
// fields.
func readAdminJSON(w http.ResponseWriter, r *http.Request, v any, strict bool) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if strict {
		dec.DisallowUnknownFields()
	}
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("data after the JSON value")
	}
	if err != nil {
		status := http.StatusBadRequest
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			status = http.StatusRequestEntityTooLarge
		}
		adminError(w, status, codeAdminBadRequest, "decoding the body: %v", err)
		return false
	}
	return true
}

func (s *service) adminPutEnrollment(w http.ResponseWriter, r *http.Request) {
	var e Enrollment
	if !readAdminJSON(w, r, &e, false) {
		return
	}
	stored, created, err := s.putEnrollment(r.PathValue("registrationId"), e, time.Now())
	switch {
	case errors.Is(err, errEnrollment):
		adminError(w, http.StatusBadRequest, codeAdminBadRequest, "%v", err)
		return
	case err != nil:
		adminError(w, http.StatusInternalServerError, codeInternal, "%v", err)
		return
	}
	s.log.Info("enrollment stored", "registrationId", stored.RegistrationID, "created", created, "provisioningStatus", stored.ProvisioningStatus,
		"credentialPolicyName", stored.CredentialPolicyName)
	writeJSON(w, http.StatusOK, stored)
}

func (s *service) adminGetEnrollment(w http.ResponseWriter, r *http.Request) {
	e, ok := s.enrollment(r.PathValue("registrationId"))
	if !ok {
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no enrollment %q", r.PathValue("registrationId"))
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *service) adminDeleteEnrollment(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("registrationId")
	ok, err := s.deleteEnrollment(id)
	s.answerDelete(w, "enrollment", "registrationId", id, ok, err)
}

// answerDelete answers an admin DELETE of the named thing: 204 when it
// existed, 404 when not, 500 when the registry could not be written.
func (s *service) answerDelete(w http.ResponseWriter, what, idKey, id string, ok bool, err error) {
	switch {
	case err != nil:
		adminError(w, http.StatusInternalServerError, codeInternal, "%v", err)
	case !ok:
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no %s %q", what, id)
	default:
		s.log.Info(what+" deleted", idKey, id)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (s *service) adminGetRegistration(w http.ResponseWriter, r *http.Request) {
	reg, ok := s.registration(r.PathValue("registrationId"))
	if !ok {
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no registration %q", r.PathValue("registrationId"))
		return
	}
	writeJSON(w, http.StatusOK, reg)
}

func (s *service) adminGetDevice(w http.ResponseWriter, r *http.Request) {
	info, ok := s.hub.Device(r.PathValue("deviceId"))
	if !ok {
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no device %q", r.PathValue("deviceId"))
		return
	}
	writeJSON(w, http.StatusOK, deviceView{
		DeviceID:        info.DeviceID,
		Hub:             info.Hub,
		Status:          info.Status,
		ConnectionState: info.ConnectionState,
		Reported:        info.Reported,
		ReportedVersion: info.ReportedVersion,
	})
}

func (s *service) adminDeleteDevice(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("deviceId")
	ok, err := s.deleteDevice(id)
	s.answerDelete(w, "device", "deviceId", id, ok, err)
}

// adminInvokeMethod sends the request body (JSON, or empty for none) as a
// direct method and answers with the device's status and payload. The
// optional ?timeout= (a Go duration) shortens the wait.
func (s *service) adminInvokeMethod(w http.ResponseWriter, r *http.Request) {
	id, name := r.PathValue("deviceId"), r.PathValue("name")
	payload, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		adminError(w, http.StatusBadRequest, codeAdminBadRequest, "reading the body: %v", err)
		return
	}
	ctx := r.Context()
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := time.ParseDuration(t)
		if err != nil || d <= 0 {
			adminError(w, http.StatusBadRequest, codeAdminBadRequest, "timeout %q is not a positive duration", t)
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	status, body, err := s.hub.InvokeMethod(ctx, id, name, payload)
	switch {
	case errors.Is(err, hubemu.ErrDeviceNotFound):
		adminError(w, http.StatusNotFound, codeAdminNotFound, "no device %q", id)
	case errors.Is(err, hubemu.ErrDeviceNotConnected):
		adminError(w, http.StatusNotFound, codeDeviceOffline, "device %q is not online", id)
	case errors.Is(err, hubemu.ErrMethodTimeout), errors.Is(err, context.DeadlineExceeded):
		adminError(w, http.StatusGatewayTimeout, codeMethodTimeout, "device %q did not answer %s in time", id, name)
	case r.Context().Err() != nil:
		// The caller went away; nobody reads an answer.
	case err != nil:
		adminError(w, http.StatusBadRequest, codeAdminBadRequest, "%v", err)
	default:
		if len(body) == 0 {
			body = json.RawMessage("null")
		}
		s.log.Info("direct method answered", "deviceId", id, "method", name, "status", status)
		writeJSON(w, http.StatusOK, methodResult{Status: status, Payload: body})
	}
}

func (s *service) adminPutFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	if !readAdminJSON(w, r, &f, true) {
		return
	}
	if err := f.DPS.validate(); err != nil {
		adminError(w, http.StatusBadRequest, codeAdminBadRequest, "%v", err)
		return
	}
	s.faults.set(f.DPS)
	desc, _ := json.Marshal(f.DPS)
	s.log.Info("faults set", "faults", string(desc))
	writeJSON(w, http.StatusOK, Faults{DPS: s.faults.get()})
}

func (s *service) adminGetFaults(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Faults{DPS: s.faults.get()})
}

func (s *service) adminStats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.stats.snapshot())
}
