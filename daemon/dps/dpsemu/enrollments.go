package dpsemu

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
)

// registration returns the state DPS holds for a registration ID: the one
// in progress if any, else the last completed one.
func (s *service) registration(regID string) (Registration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := regKey(regID)
	if r, ok := s.pending[key]; ok {
		return *r, true
	}
	if r, ok := s.data.Registrations[key]; ok {
		return *r, true
	}
	return Registration{}, false
}

// errEnrollment is the class of admin errors about the request itself.
var errEnrollment = errors.New("invalid enrollment")

// putEnrollment creates or replaces an enrollment. A change of
// provisioningStatus also enables or disables the device's hub identity: the
// emulator has one switch for "this device may not come in".
func (s *service) putEnrollment(pathID string, e Enrollment, now time.Time) (Enrollment, bool, error) {
	if e.RegistrationID == "" {
		e.RegistrationID = pathID
	}
	if err := dps.ValidRegistrationID(pathID); err != nil {
		return Enrollment{}, false, fmt.Errorf("%w: %v", errEnrollment, err)
	}
	switch {
	case !strings.EqualFold(e.RegistrationID, pathID):
		return Enrollment{}, false, fmt.Errorf("%w: registrationId %q differs from the path's %q", errEnrollment, e.RegistrationID, pathID)
	case !strings.EqualFold(e.Attestation.Type, "tpm") || e.Attestation.TPM == nil:
		return Enrollment{}, false, fmt.Errorf("%w: attestation must be {\"type\":\"tpm\",\"tpm\":{\"endorsementKey\":…}}", errEnrollment)
	}
	e.Attestation.Type = "tpm"
	ek, err := base64.StdEncoding.DecodeString(e.Attestation.TPM.EndorsementKey)
	if err != nil {
		return Enrollment{}, false, fmt.Errorf("%w: attestation.tpm.endorsementKey is not base64: %v", errEnrollment, err)
	}
	if err := authblob.ValidateEK(ek); err != nil {
		return Enrollment{}, false, fmt.Errorf("%w: attestation.tpm.endorsementKey: %v", errEnrollment, err)
	}
	if e.DeviceID != "" && !validDeviceID(e.DeviceID) {
		return Enrollment{}, false, fmt.Errorf("%w: deviceId %q: up to 128 ASCII letters, digits and -.%%_;:!'()*+=@$,", errEnrollment, e.DeviceID)
	}
	if e.IoTHubHostName != "" {
		hub, ok := s.configuredHub(e.IoTHubHostName)
		if !ok {
			return Enrollment{}, false, fmt.Errorf("%w: iotHubHostName %q is not one of the served hubs %v", errEnrollment, e.IoTHubHostName, s.hubs)
		}
		e.IoTHubHostName = hub
	}
	switch strings.ToLower(e.ProvisioningStatus) {
	case "", statusEnabled:
		e.ProvisioningStatus = statusEnabled
	case statusDisabled:
		e.ProvisioningStatus = statusDisabled
	default:
		return Enrollment{}, false, fmt.Errorf("%w: provisioningStatus %q, want enabled or disabled", errEnrollment, e.ProvisioningStatus)
	}
	if len(e.InitialTwin) > 0 && !json.Valid(e.InitialTwin) {
		return Enrollment{}, false, fmt.Errorf("%w: initialTwin is not JSON", errEnrollment)
	}
	e.ETag = enrollmentETag(&e)

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.data.CredentialPolicies[e.CredentialPolicyName]; e.CredentialPolicyName != "" && !ok {
		return Enrollment{}, false, fmt.Errorf("%w: credentialPolicyName %q: no such credential policy (PUT /credentialPolicies/{name} first)", errEnrollment, e.CredentialPolicyName)
	}
	key := regKey(pathID)
	old, existed := s.data.Enrollments[key]
	e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC = now.UTC(), now.UTC()
	if existed {
		e.CreatedDateTimeUTC = old.CreatedDateTimeUTC
		if old.ETag == e.ETag {
			e.LastUpdatedDateTimeUTC = old.LastUpdatedDateTimeUTC
		}
	}
	s.data.Enrollments[key] = &e
	dev, devRec := s.deviceOfLocked(key)
	var wasDisabled bool
	if devRec != nil {
		wasDisabled = devRec.Disabled
		devRec.Disabled = e.ProvisioningStatus == statusDisabled
	}
	if err := s.saveLocked(); err != nil {
		if existed {
			s.data.Enrollments[key] = old
		} else {
			delete(s.data.Enrollments, key)
		}
		if devRec != nil {
			devRec.Disabled = wasDisabled
		}
		return Enrollment{}, false, fmt.Errorf("writing the registry: %w", err)
	}
	if devRec != nil {
		s.hub.SetDeviceEnabled(dev, !devRec.Disabled)
	}
	return e, !existed, nil
}

// deviceOfLocked returns the hub identity assigned to a registration.
func (s *service) deviceOfLocked(key string) (string, *deviceRecord) {
	reg, ok := s.data.Registrations[key]
	if !ok || reg.DeviceID == "" {
		return "", nil
	}
	d, ok := s.data.Devices[reg.DeviceID]
	if !ok || regKey(d.RegistrationID) != key {
		return "", nil
	}
	return reg.DeviceID, d
}

// validDeviceID applies IoT Hub's rule for device IDs: up to 128 ASCII
// letters, digits and `- . % _ ; : ! ' ( ) * + = @ $ ,`.
func validDeviceID(id string) bool { return validName(id, 128, "-.%_;:!'()*+=@$,") }

// validName: 1 to max ASCII letters, digits and bytes of punct.
func validName(s string, max int, punct string) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(punct, c) >= 0) {
			return false
		}
	}
	return true
}

// enrollment returns an enrollment by registration ID.
func (s *service) enrollment(regID string) (Enrollment, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.data.Enrollments[regKey(regID)]
	if !ok {
		return Enrollment{}, false
	}
	return *e, true
}

// deleteEnrollment removes an enrollment and the registration state DPS
// holds for it. As in Azure, the hub identity stays (DELETE /devices/{id}
// removes it).
func (s *service) deleteEnrollment(regID string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := regKey(regID)
	enr, ok := s.data.Enrollments[key]
	if !ok {
		return false, nil
	}
	reg, hadReg := s.data.Registrations[key]
	delete(s.data.Enrollments, key)
	delete(s.data.Registrations, key)
	if err := s.saveLocked(); err != nil {
		s.data.Enrollments[key] = enr
		if hadReg {
			s.data.Registrations[key] = reg
		}
		return false, fmt.Errorf("writing the registry: %w", err)
	}
	// The challenge stays: an operation in flight then ends "failed", which
	// tells the device more than a 401 would.
	delete(s.pending, key)
	return true, nil
}

// deleteDevice removes a hub identity from hubemu and the registry. The
// registration state stays: the device's next registration creates the
// identity again, as DPS re-provisioning does.
func (s *service) deleteDevice(deviceID string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, inRegistry := s.data.Devices[deviceID]
	if inRegistry {
		delete(s.data.Devices, deviceID)
		if err := s.saveLocked(); err != nil {
			s.data.Devices[deviceID] = rec
			return false, fmt.Errorf("writing the registry: %w", err)
		}
	}
	inHub := s.hub.DeleteDevice(deviceID)
	return inRegistry || inHub, nil
}

// enrollmentETag is a quoted hash of what decides an assignment, base64
// encoded as DPS's etags are.
func enrollmentETag(e *Enrollment) string {
	h := sha256.New()
	fields := []string{e.Attestation.TPM.EndorsementKey, e.DeviceID, strings.ToLower(e.IoTHubHostName), e.ProvisioningStatus, string(e.InitialTwin)}
	if e.CredentialPolicyName != "" {
		// Only when set, so that the etags of older enrollments stay.
		fields = append(fields, e.CredentialPolicyName)
	}
	for _, f := range fields {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return base64.StdEncoding.EncodeToString([]byte(`"` + hex.EncodeToString(h.Sum(nil)[:16]) + `"`))
}
