package dpsemu

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
	"github.com/dpsd-project/dpsd/daemon/sas"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
)

// Protocol constants (docs/dps-tpm-protocol.md).
const (
	// keyName is the skn DPS names in its challenge and expects back (§4.1).
	keyName = "registration"
	// hmacKeySize is the size of the challenge and hub keys (§6: 32 bytes).
	hmacKeySize = 32
	// sasSkew is how far past its expiry a DPS SAS is still accepted. DPS's
	// own allowance is unknown (§12.4); the service-side SDK helper and the
	// hub emulator use five minutes, so the DPS side does too.
	sasSkew = hubemu.DefaultTokenGrace
)

// Registration statuses (REST EnrollmentStatus) and substatuses.
const (
	regAssigning = "assigning"
	regAssigned  = "assigned"
	regFailed    = "failed"
	regDisabled  = "disabled"

	subInitial       = "initialAssignment"
	subReprovisioned = "reprovisionedToInitialAssignment"
	subDataReset     = "deviceDataReset"
)

// Error codes of a terminal "failed" registration state (§5.2).
const (
	failNoHub       = 400208 // the enrollment names a hub this emulator does not serve
	failNotEnrolled = 401002 // the enrollment was deleted while the operation ran
)

// challenge is what a registration's latest 401 handed out: the key that
// signs its SAS, and the EK and SRK the device sent (blob #2 goes to them).
type challenge struct {
	key      []byte
	ek, srk  []byte
	lastOpID string
}

// operation is one authenticated registration being polled.
type operation struct {
	id        string
	regKey    string
	payload   json.RawMessage
	pollsLeft int
	// done: status and body of the terminal answer, repeated to later polls.
	done       bool
	doneStatus int
	doneBody   []byte
}

// service is the DPS side: enrollments, challenges, operations and the
// persisted registry, and the hub identities it creates in hubemu.
type service struct {
	log              *slog.Logger
	dir              string
	idScope          string
	hubs             []string
	hub              *hubemu.Server
	faults           *faultState
	stats            *stats
	assignAfterPolls int // default number of "assigning" polls
	retryAfter       int // seconds, in every 202

	mu         sync.Mutex
	data       *registryData
	challenges map[string]*challenge    // by lowercase registration ID; in memory only
	ops        map[string]*operation    // by operation ID; in memory only
	pending    map[string]*Registration // registrations in progress, not yet persisted
}

// regKey is the map key of a registration ID: DPS treats them
// case-insensitively.
func regKey(id string) string { return strings.ToLower(id) }

// repopulateHub gives hubemu every device identity the registry holds,
// after a restart.
func (s *service) repopulateHub() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, d := range s.data.Devices {
		hub, ok := s.configuredHub(d.Hub)
		if !ok {
			s.log.Warn("device's hub is no longer served; it cannot connect until it registers again", "device", id, "hub", d.Hub)
			continue
		}
		s.hub.UpsertDevice(hub, id, d.Key)
		if d.Disabled {
			s.hub.SetDeviceEnabled(id, false)
		}
	}
}

// configuredHub returns the served hub name equal to name, ignoring case.
func (s *service) configuredHub(name string) (string, bool) {
	for _, h := range s.hubs {
		if strings.EqualFold(h, name) {
			return h, true
		}
	}
	return "", false
}

// hashHub picks a hub for a registration ID: SHA-256 spreads IDs evenly and
// keeps the choice stable across restarts with the same --hub list.
func (s *service) hashHub(key string) string {
	sum := sha256.Sum256([]byte(key))
	return s.hubs[binary.BigEndian.Uint64(sum[:8])%uint64(len(s.hubs))]
}

// saveLocked persists the registry; the caller holds s.mu.
func (s *service) saveLocked() error {
	if err := s.data.save(s.dir); err != nil {
		s.log.Error("writing registry failed", "err", err)
		return err
	}
	return nil
}

// issueChallenge answers a PUT register without Authorization: it checks
// the enrollment and the device's keys and builds blob #1 with a fresh
// challenge key (§11.1).
func (s *service) issueChallenge(regID string, ek, srk []byte) ([]byte, *apiError) {
	key := regKey(regID)
	s.mu.Lock()
	enr, ok := s.data.Enrollments[key]
	s.mu.Unlock()
	if !ok {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "registration %s is not enrolled", regID)
	}
	if err := checkEK(enr, ek); err != nil {
		return nil, err
	}
	ckey := make([]byte, hmacKeySize)
	rand.Read(ckey)
	// Build checks the SRK is a storage key it can wrap to. The device's
	// keys are its only inputs that can fail (an RSA modulus the structure
	// checks let through, such as an even one), so a failure is the
	// request's fault.
	blob, err := authblob.Build(rand.Reader, ek, srk, ckey, []byte(s.idScope+"/registrations/"+regID))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "tpm keys unusable: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.challenges[key] = &challenge{key: ckey, ek: bytes.Clone(ek), srk: bytes.Clone(srk)}
	return blob, nil
}

// checkEK checks the device's EK against the enrollment (§8): a usable EK
// with the enrolled RSA modulus. SameEK validates both keys; the enrolled
// one was validated when it was enrolled.
func checkEK(enr *Enrollment, ek []byte) *apiError {
	enrolled, err := base64.StdEncoding.DecodeString(enr.Attestation.TPM.EndorsementKey)
	if err != nil {
		return errorf(http.StatusInternalServerError, codeInternal, "enrollment's endorsement key is not base64")
	}
	same, err := authblob.SameEK(enrolled, ek)
	switch {
	case err != nil:
		return errorf(http.StatusBadRequest, codeBadRequest, "tpm.endorsementKey: %v", err)
	case !same:
		return errorf(http.StatusUnauthorized, codeUnauthorized, "endorsement key does not match the enrollment of %s", enr.RegistrationID)
	}
	return nil
}

// authorize verifies the SAS of an authenticated request against the
// registration's latest challenge key (§4.1, §11.2). The caller holds s.mu.
func (s *service) authorizeLocked(regID, authorization string, now time.Time) (*challenge, *apiError) {
	if authorization == "" {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "Authorization required")
	}
	tok, err := sas.Parse(authorization)
	if err != nil {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "unreadable SAS token: %v", err)
	}
	if tok.KeyName != keyName {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "SAS key name %q, want %q", tok.KeyName, keyName)
	}
	ch, ok := s.challenges[regKey(regID)]
	if !ok {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "no challenge outstanding for %s: send the registration without Authorization first", regID)
	}
	if err := tok.Verify(ch.key, s.idScope+"/registrations/"+regID, now, sasSkew); err != nil {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "SAS rejected: %v", err)
	}
	return ch, nil
}

// register answers an authenticated PUT register: it starts an operation
// (§11.2). tpm, when the body carries it, must name the challenged keys.
func (s *service) register(regID, authorization string, ek, srk []byte, payload json.RawMessage, now time.Time) (string, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, aerr := s.authorizeLocked(regID, authorization, now)
	if aerr != nil {
		return "", aerr
	}
	if (ek != nil && !bytes.Equal(ek, ch.ek)) || (srk != nil && !bytes.Equal(srk, ch.srk)) {
		return "", errorf(http.StatusUnauthorized, codeUnauthorized, "tpm keys differ from the ones challenged")
	}
	key := regKey(regID)
	if _, ok := s.data.Enrollments[key]; !ok {
		return "", errorf(http.StatusUnauthorized, codeUnauthorized, "registration %s is not enrolled", regID)
	}

	reg := s.pending[key]
	if reg == nil {
		reg = &Registration{RegistrationID: regID, CreatedDateTimeUTC: now.UTC()}
		if prev, ok := s.data.Registrations[key]; ok {
			c := *prev
			reg = &c
		}
		s.pending[key] = reg
	}
	reg.Attempts++
	reg.Status = regAssigning
	reg.LastUpdatedDateTimeUTC = now.UTC()

	// Only the latest operation of a registration is kept.
	delete(s.ops, ch.lastOpID)
	op := &operation{
		id:        newOperationID(),
		regKey:    key,
		payload:   payload,
		pollsLeft: s.faults.assignAfterPolls(s.assignAfterPolls),
	}
	ch.lastOpID = op.id
	s.ops[op.id] = op
	return op.id, nil
}

// pollResult is the answer to a poll: a status and a body to send as JSON
// (or pre-encoded bytes for a terminal answer).
type pollResult struct {
	status int
	body   []byte
}

// poll answers GET operations/{id} (§11.3): "assigning" until the
// operation's polls run out, then the terminal state, computed once.
func (s *service) poll(regID, opID, authorization string, now time.Time) (pollResult, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, aerr := s.authorizeLocked(regID, authorization, now)
	if aerr != nil {
		return pollResult{}, aerr
	}
	op, ok := s.ops[opID]
	if !ok || op.regKey != regKey(regID) {
		return pollResult{}, errorf(http.StatusNotFound, codeUnknownOperation, "operation %s not found for %s", opID, regID)
	}
	if op.done {
		return pollResult{op.doneStatus, op.doneBody}, nil
	}
	if op.pollsLeft > 0 {
		op.pollsLeft--
		body, _ := json.Marshal(operationStatus{
			OperationID:       op.id,
			Status:            regAssigning,
			RegistrationState: &registrationState{RegistrationID: regID, Status: regAssigning},
		})
		return pollResult{http.StatusAccepted, body}, nil
	}
	state, aerr := s.finishLocked(regID, op, ch, now)
	if aerr != nil {
		return pollResult{}, aerr
	}
	body, err := json.Marshal(operationStatus{OperationID: op.id, Status: state.Status, RegistrationState: state})
	if err != nil {
		return pollResult{}, errorf(http.StatusInternalServerError, codeInternal, "encoding the answer: %v", err)
	}
	op.done, op.doneStatus, op.doneBody = true, http.StatusOK, body
	return pollResult{http.StatusOK, body}, nil
}

// finishLocked decides the terminal state of an operation: assigned (a new
// hub key, delivered in blob #2 and written to the registry and hubemu),
// disabled, or failed. The caller holds s.mu.
func (s *service) finishLocked(regID string, op *operation, ch *challenge, now time.Time) (*registrationState, *apiError) {
	key := op.regKey
	reg := s.pending[key]
	if reg == nil { // a second operation after the first finished
		reg = &Registration{RegistrationID: regID, CreatedDateTimeUTC: now.UTC()}
		if prev, ok := s.data.Registrations[key]; ok {
			c := *prev
			reg = &c
		}
	}
	prev := s.data.Registrations[key]
	reg.LastUpdatedDateTimeUTC = now.UTC()
	reg.ETag = newETag()
	reg.ErrorCode, reg.ErrorMessage = 0, ""

	enr, ok := s.data.Enrollments[key]
	switch {
	case !ok:
		reg.Status, reg.ErrorCode, reg.ErrorMessage = regFailed, failNotEnrolled, "the enrollment was deleted"
	case enr.ProvisioningStatus == statusDisabled:
		reg.Status = regDisabled
	default:
		hub, ok := s.allocate(enr, prev)
		if !ok {
			reg.Status, reg.ErrorCode = regFailed, failNoHub
			reg.ErrorMessage = fmt.Sprintf("the enrollment names hub %s, which this emulator does not serve", enr.IoTHubHostName)
			break
		}
		return s.assignLocked(reg, enr, prev, hub, op, ch, now)
	}
	if err := s.commitLocked(key, reg); err != nil {
		return nil, err
	}
	return &registrationState{
		RegistrationID:         reg.RegistrationID,
		CreatedDateTimeUTC:     &reg.CreatedDateTimeUTC,
		Status:                 reg.Status,
		ErrorCode:              reg.ErrorCode,
		ErrorMessage:           reg.ErrorMessage,
		LastUpdatedDateTimeUTC: &reg.LastUpdatedDateTimeUTC,
		ETag:                   reg.ETag,
	}, nil
}

// allocate picks the hub: the enrollment's, else the previous assignment's
// while the enrollment is unchanged and the hub still served, else by hash.
func (s *service) allocate(enr *Enrollment, prev *Registration) (string, bool) {
	if enr.IoTHubHostName != "" {
		return s.configuredHub(enr.IoTHubHostName)
	}
	if prev != nil && prev.AssignedHub != "" && prev.EnrollmentETag == enr.ETag {
		if hub, ok := s.configuredHub(prev.AssignedHub); ok {
			return hub, true
		}
	}
	return s.hashHub(regKey(enr.RegistrationID)), true
}

// assignLocked completes an assignment: a fresh hub key (every registration
// rotates it, so a key lost with a cleared TPM stops working), blob #2 to
// the challenged EK and SRK, the registry written, then hubemu updated.
func (s *service) assignLocked(reg *Registration, enr *Enrollment, prev *Registration, hub string, op *operation, ch *challenge, now time.Time) (*registrationState, *apiError) {
	deviceID := enr.DeviceID
	if deviceID == "" {
		deviceID = enr.RegistrationID
	}
	hubKey := make([]byte, hmacKeySize)
	rand.Read(hubKey)
	blob, err := authblob.Build(rand.Reader, ch.ek, ch.srk, hubKey, []byte(hub+"/devices/"+deviceID))
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, codeInternal, "building blob #2: %v", err)
	}
	if s.faults.garbleKey() {
		garble(blob)
	}

	reg.Substatus = subInitial
	var oldDevice string
	if prev != nil && prev.DeviceID != "" {
		switch {
		case prev.DeviceID != deviceID || !strings.EqualFold(prev.AssignedHub, hub):
			reg.Substatus = subDataReset
			oldDevice = prev.DeviceID
		default:
			reg.Substatus = subReprovisioned
		}
	}
	reg.Status, reg.AssignedHub, reg.DeviceID, reg.EnrollmentETag = regAssigned, hub, deviceID, enr.ETag

	// Commit to disk before hubemu, so that a restart never forgets a key
	// the hub has accepted.
	before := map[string]*deviceRecord{}
	for _, id := range []string{oldDevice, deviceID} {
		if r, ok := s.data.Devices[id]; ok {
			before[id] = r
		}
	}
	delete(s.data.Devices, oldDevice)
	s.data.Devices[deviceID] = &deviceRecord{Hub: hub, RegistrationID: enr.RegistrationID, Key: hubKey}
	if err := s.commitLocked(op.regKey, reg); err != nil {
		delete(s.data.Devices, deviceID)
		for id, r := range before {
			s.data.Devices[id] = r
		}
		return nil, err
	}
	if oldDevice != "" {
		// A moved or renamed identity starts with a fresh twin, as the
		// deviceDataReset substatus says.
		s.hub.DeleteDevice(oldDevice)
	}
	s.hub.UpsertDevice(hub, deviceID, hubKey)
	s.stats.add(statAssigned)
	s.log.Info("device assigned", "registrationId", enr.RegistrationID, "deviceId", deviceID, "hub", hub, "substatus", reg.Substatus, "attempts", reg.Attempts)

	state := &registrationState{
		TPM:                    &tpmResult{AuthenticationKey: base64.StdEncoding.EncodeToString(blob)},
		RegistrationID:         reg.RegistrationID,
		CreatedDateTimeUTC:     &reg.CreatedDateTimeUTC,
		AssignedHub:            hub,
		DeviceID:               deviceID,
		Status:                 regAssigned,
		Substatus:              reg.Substatus,
		LastUpdatedDateTimeUTC: &reg.LastUpdatedDateTimeUTC,
		ETag:                   reg.ETag,
		Payload:                op.payload,
	}
	return state, nil
}

// commitLocked makes reg the registration's persisted state and writes the
// registry; on failure the in-memory registry is left as it was.
func (s *service) commitLocked(key string, reg *Registration) *apiError {
	old, had := s.data.Registrations[key]
	s.data.Registrations[key] = reg
	if err := s.saveLocked(); err != nil {
		if had {
			s.data.Registrations[key] = old
		} else {
			delete(s.data.Registrations, key)
		}
		return errorf(http.StatusInternalServerError, codeInternal, "writing the registry failed")
	}
	delete(s.pending, key)
	return nil
}

// garble flips one byte of the outer HMAC of the blob's duplicate, so the
// blob still parses but TPM2_Import refuses it (TPM_RC_INTEGRITY).
func garble(blob []byte) {
	b, err := authblob.Parse(blob)
	if err != nil {
		return // Build's own output always parses
	}
	// Duplicate = be16(32) ‖ outerHMAC ‖ dupSensitive: byte 2 is the
	// HMAC's first. The slice aliases blob.
	b.Duplicate[2] ^= 0xff
}

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
func validDeviceID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-.%_;:!'()*+=@$,", c) >= 0) {
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
	for _, f := range []string{e.Attestation.TPM.EndorsementKey, e.DeviceID, strings.ToLower(e.IoTHubHostName), e.ProvisioningStatus, string(e.InitialTwin)} {
		fmt.Fprintf(h, "%d:%s;", len(f), f)
	}
	return base64.StdEncoding.EncodeToString([]byte(`"` + hex.EncodeToString(h.Sum(nil)[:16]) + `"`))
}

// newETag is a random etag in DPS's shape: base64 of a quoted id.
func newETag() string {
	return base64.StdEncoding.EncodeToString([]byte(`"` + newTrackingID() + `"`))
}

// newOperationID returns an id shaped as DPS's: <digit>.<16 hex>.<uuid>.
func newOperationID() string {
	var b [8]byte
	rand.Read(b[:])
	return "4." + hex.EncodeToString(b[:]) + "." + newTrackingID()
}
