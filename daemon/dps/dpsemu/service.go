package dpsemu

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
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

// Registration substatuses (the statuses are dps.Status*).
const (
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
	csr       *x509.CertificateRequest // checked; nil unless a certificate is due
	pollsLeft int
	// ch is the challenge whose key authenticated the operation: its polls
	// are verified against it, so that a newer challenge (a device that
	// restarted, a stale request finishing late) does not orphan it.
	ch *challenge
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
	issuer           *issuer // signs operational certificates
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
		s.hub.SetCertificateName(id, d.RegistrationID)
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
	blob, err := authblob.Build(rand.Reader, ek, srk, ckey, []byte(sas.RegistrationResource(s.idScope, regID)))
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

// authorizeLocked verifies the SAS of an authenticated request against
// the registration's latest challenge key (§4.1, §11.2). The caller holds
// s.mu.
func (s *service) authorizeLocked(regID, authorization string, now time.Time) (*challenge, *apiError) {
	tok, aerr := s.parseAuthorization(authorization)
	if aerr != nil {
		return nil, aerr
	}
	ch, ok := s.challenges[regKey(regID)]
	if !ok {
		return nil, errorf(http.StatusUnauthorized, codeUnauthorized, "no challenge outstanding for %s: send the registration without Authorization first", regID)
	}
	return ch, s.verifyLocked(tok, ch, regID, now)
}

// verifyLocked checks a parsed SAS against a challenge's key.
func (s *service) verifyLocked(tok sas.Token, ch *challenge, regID string, now time.Time) *apiError {
	if err := tok.Verify(ch.key, sas.RegistrationResource(s.idScope, regID), now, sasSkew); err != nil {
		return errorf(http.StatusUnauthorized, codeUnauthorized, "SAS rejected: %v", err)
	}
	return nil
}

// parseAuthorization reads a request's SAS and checks its key name.
func (s *service) parseAuthorization(authorization string) (sas.Token, *apiError) {
	if authorization == "" {
		return sas.Token{}, errorf(http.StatusUnauthorized, codeUnauthorized, "Authorization required")
	}
	tok, err := sas.Parse(authorization)
	if err != nil {
		return sas.Token{}, errorf(http.StatusUnauthorized, codeUnauthorized, "unreadable SAS token: %v", err)
	}
	if tok.KeyName != keyName {
		return sas.Token{}, errorf(http.StatusUnauthorized, codeUnauthorized, "SAS key name %q, want %q", tok.KeyName, keyName)
	}
	return tok, nil
}

// register answers an authenticated PUT register: it starts an operation
// (§11.2). tpm, when the body carries it, must name the challenged keys. A
// csr is checked when the enrollment names a credential policy, and
// ignored otherwise.
func (s *service) register(regID, authorization string, ek, srk []byte, payload json.RawMessage, csrB64 string, now time.Time) (string, *apiError) {
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
	enr, ok := s.data.Enrollments[key]
	if !ok {
		return "", errorf(http.StatusUnauthorized, codeUnauthorized, "registration %s is not enrolled", regID)
	}
	var csr *x509.CertificateRequest
	if csrB64 != "" && enr.CredentialPolicyName != "" {
		if csr, aerr = parseCSR(csrB64, regID); aerr != nil {
			return "", aerr
		}
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
	reg.Status = dps.StatusAssigning
	reg.LastUpdatedDateTimeUTC = now.UTC()

	// Only the latest operation of a registration is kept.
	delete(s.ops, ch.lastOpID)
	op := &operation{
		id:        newOperationID(),
		regKey:    key,
		payload:   payload,
		csr:       csr,
		pollsLeft: s.faults.assignAfterPolls(s.assignAfterPolls),
		ch:        ch,
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
	op, ok := s.ops[opID]
	if !ok || op.regKey != regKey(regID) {
		// Unknown operations are refused like DPS does, but only to a
		// caller whose token verifies against the latest challenge.
		if _, aerr := s.authorizeLocked(regID, authorization, now); aerr != nil {
			return pollResult{}, aerr
		}
		return pollResult{}, errorf(http.StatusNotFound, codeUnknownOperation, "operation %s not found for %s", opID, regID)
	}
	tok, aerr := s.parseAuthorization(authorization)
	if aerr != nil {
		return pollResult{}, aerr
	}
	ch := op.ch
	if aerr := s.verifyLocked(tok, ch, regID, now); aerr != nil {
		return pollResult{}, aerr
	}
	if op.done {
		return pollResult{op.doneStatus, op.doneBody}, nil
	}
	if op.pollsLeft > 0 {
		op.pollsLeft--
		body, _ := json.Marshal(operationStatus{
			OperationID:       op.id,
			Status:            dps.StatusAssigning,
			RegistrationState: &registrationState{RegistrationID: regID, Status: dps.StatusAssigning},
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
		reg.Status, reg.ErrorCode, reg.ErrorMessage = dps.StatusFailed, failNotEnrolled, "the enrollment was deleted"
	case enr.ProvisioningStatus == statusDisabled:
		reg.Status = dps.StatusDisabled
	default:
		hub, ok := s.allocate(enr, prev)
		if !ok {
			reg.Status, reg.ErrorCode = dps.StatusFailed, failNoHub
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
	blob, err := authblob.Build(rand.Reader, ch.ek, ch.srk, hubKey, []byte(sas.DeviceResource(hub, deviceID)))
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, codeInternal, "building blob #2: %v", err)
	}
	if s.faults.garbleKey() {
		garble(blob)
	}
	chain, aerr := s.issueLocked(enr, op.csr, now)
	if aerr != nil {
		return nil, aerr
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
	reg.Status, reg.AssignedHub, reg.DeviceID, reg.EnrollmentETag = dps.StatusAssigned, hub, deviceID, enr.ETag

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
	s.hub.SetCertificateName(deviceID, enr.RegistrationID)
	s.stats.add(statAssigned)
	s.log.Info("device assigned", "registrationId", enr.RegistrationID, "deviceId", deviceID, "hub", hub, "substatus", reg.Substatus, "attempts", reg.Attempts)
	if chain != nil {
		// Counted once delivered: a registry write that failed above
		// issues again at the next poll.
		s.stats.add(statCertificates)
		s.log.Info("certificate issued", "registrationId", enr.RegistrationID, "policy", enr.CredentialPolicyName)
	}

	state := &registrationState{
		TPM:                    &tpmResult{AuthenticationKey: base64.StdEncoding.EncodeToString(blob)},
		RegistrationID:         reg.RegistrationID,
		CreatedDateTimeUTC:     &reg.CreatedDateTimeUTC,
		AssignedHub:            hub,
		DeviceID:               deviceID,
		Status:                 dps.StatusAssigned,
		Substatus:              reg.Substatus,
		LastUpdatedDateTimeUTC: &reg.LastUpdatedDateTimeUTC,
		ETag:                   reg.ETag,
		Payload:                op.payload,
		IssuedCertificateChain: chain,
	}
	if s.faults.badAssignedHub() {
		state.AssignedHub = "not a host name/" + hub
	}
	return state, nil
}

// issueLocked issues the operational certificate of an assignment: for an
// enrollment whose credential policy still exists and a checked CSR, the
// chain (base64 DER, leaf first); nil otherwise.
func (s *service) issueLocked(enr *Enrollment, csr *x509.CertificateRequest, now time.Time) ([]string, *apiError) {
	policy, ok := s.data.CredentialPolicies[enr.CredentialPolicyName]
	if csr == nil || enr.CredentialPolicyName == "" || !ok {
		return nil, nil
	}
	if s.faults.wrongKeyChain() {
		other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, errorf(http.StatusInternalServerError, codeInternal, "%v", err)
		}
		c := *csr
		c.PublicKey = &other.PublicKey
		csr = &c
	}
	ders, err := s.issuer.issue(csr, policy.lifetime(), now)
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, codeInternal, "%v", err)
	}
	chain := make([]string, len(ders))
	for i, der := range ders {
		chain[i] = base64.StdEncoding.EncodeToString(der)
	}
	return chain, nil
}

// parseCSR decodes and checks a registration's csr: base64 of a DER PKCS
// #10 request (no PEM), correctly self-signed, for a P-256/P-384 or RSA
// (2048 bits or more) key, with the registration ID as its common name.
func parseCSR(b64, regID string) (*x509.CertificateRequest, *apiError) {
	der, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr is not base64 (send the DER request, without PEM armour): %v", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr is not a DER PKCS#10 request: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr signature does not verify: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr key is on %s; want P-256 or P-384", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr key is RSA-%d; want 2048 bits or more", k.N.BitLen())
		}
	default:
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr key is %T; want ECDSA or RSA", csr.PublicKey)
	}
	if !strings.EqualFold(csr.Subject.CommonName, regID) {
		return nil, errorf(http.StatusBadRequest, codeBadRequest, "csr subject CN %q must be the registration ID %q", csr.Subject.CommonName, regID)
	}
	return csr, nil
}

// lookup answers the status lookup: the persisted registration's state,
// without blob #2 or a certificate chain, to a caller whose SAS verifies
// against the latest challenge.
func (s *service) lookup(regID, authorization string, now time.Time) (*registrationState, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, aerr := s.authorizeLocked(regID, authorization, now); aerr != nil {
		return nil, aerr
	}
	reg, ok := s.data.Registrations[regKey(regID)]
	if !ok {
		return nil, errorf(http.StatusNotFound, codeNotFound, "no registration for %s", regID)
	}
	return &registrationState{
		RegistrationID:         reg.RegistrationID,
		CreatedDateTimeUTC:     &reg.CreatedDateTimeUTC,
		AssignedHub:            reg.AssignedHub,
		DeviceID:               reg.DeviceID,
		Status:                 reg.Status,
		Substatus:              reg.Substatus,
		ErrorCode:              reg.ErrorCode,
		ErrorMessage:           reg.ErrorMessage,
		LastUpdatedDateTimeUTC: &reg.LastUpdatedDateTimeUTC,
		ETag:                   reg.ETag,
	}, nil
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
