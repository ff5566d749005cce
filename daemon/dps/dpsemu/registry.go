package dpsemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/dpsd-project/dpsd/daemon/atomicfile"
	"github.com/dpsd-project/dpsd/daemon/dps"
)

// registryFile is the name of the registry inside the state directory.
const registryFile = "registry.json"

// registryVersion is bumped when the file's shape changes incompatibly.
const registryVersion = 1

// Enrollment is an individual TPM enrollment, in the shape of the DPS
// service API's IndividualEnrollment (the fields the emulator uses).
type Enrollment struct {
	RegistrationID     string          `json:"registrationId"`
	Attestation        Attestation     `json:"attestation"`
	DeviceID           string          `json:"deviceId,omitempty"`
	IoTHubHostName     string          `json:"iotHubHostName,omitempty"`
	ProvisioningStatus string          `json:"provisioningStatus"`
	InitialTwin        json.RawMessage `json:"initialTwin,omitempty"`
	// CredentialPolicyName names the CredentialPolicy under which a
	// registration that sends a CSR gets an operational certificate;
	// empty: the CSR is ignored.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
	// ETag is derived from the fields above, so that putting the same
	// enrollment again does not count as a change.
	ETag                   string    `json:"etag,omitempty"`
	CreatedDateTimeUTC     time.Time `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUTC time.Time `json:"lastUpdatedDateTimeUtc"`
}

// Attestation is the enrollment's attestation mechanism; only "tpm" exists
// in the emulator.
type Attestation struct {
	Type string          `json:"type"`
	TPM  *TPMAttestation `json:"tpm,omitempty"`
}

// TPMAttestation holds the enrolled EK: base64 of its marshalled TPM2B_PUBLIC.
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey"`
}

// Provisioning statuses of an enrollment.
const (
	statusEnabled  = "enabled"
	statusDisabled = "disabled"
)

// Registration is the state DPS holds for a registration ID after the
// device's last completed registration.
type Registration struct {
	RegistrationID         string     `json:"registrationId"`
	Status                 dps.Status `json:"status"`
	Substatus              string     `json:"substatus,omitempty"`
	AssignedHub            string     `json:"assignedHub,omitempty"`
	DeviceID               string     `json:"deviceId,omitempty"`
	Attempts               int        `json:"attempts"`
	ErrorCode              int        `json:"errorCode,omitempty"`
	ErrorMessage           string     `json:"errorMessage,omitempty"`
	CreatedDateTimeUTC     time.Time  `json:"createdDateTimeUtc"`
	LastUpdatedDateTimeUTC time.Time  `json:"lastUpdatedDateTimeUtc"`
	ETag                   string     `json:"etag,omitempty"`
	// EnrollmentETag is the enrollment's ETag at the last assignment: while
	// it is unchanged a re-registration keeps the hub.
	EnrollmentETag string `json:"enrollmentEtag,omitempty"`
}

// deviceRecord is a hub identity created by an assignment. Key is the HMAC
// key delivered in blob #2 (the emulator is a test tool: it keeps its keys
// in its state directory, mode 0600).
type deviceRecord struct {
	Hub            string `json:"hub"`
	RegistrationID string `json:"registrationId"`
	Key            []byte `json:"key"`
	Disabled       bool   `json:"disabled,omitempty"`
}

// registryData is the registry file. Maps are keyed by lowercase
// registration ID (DPS treats them case-insensitively) and by device ID.
type registryData struct {
	Version       int                      `json:"version"`
	Enrollments   map[string]*Enrollment   `json:"enrollments"`
	Registrations map[string]*Registration `json:"registrations"`
	Devices       map[string]*deviceRecord `json:"devices"`
	// CredentialPolicies are keyed by name.
	CredentialPolicies map[string]*CredentialPolicy `json:"credentialPolicies,omitempty"`
}

func newRegistryData() *registryData {
	return &registryData{
		Version:            registryVersion,
		Enrollments:        map[string]*Enrollment{},
		Registrations:      map[string]*Registration{},
		Devices:            map[string]*deviceRecord{},
		CredentialPolicies: map[string]*CredentialPolicy{},
	}
}

// loadRegistry reads dir/registry.json; a missing file is an empty registry.
func loadRegistry(dir string) (*registryData, error) {
	path := filepath.Join(dir, registryFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return newRegistryData(), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading registry: %w", err)
	}
	d := newRegistryData()
	if err := json.Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("decoding registry %s: %w", path, err)
	}
	if d.Version != registryVersion {
		return nil, fmt.Errorf("registry %s has version %d, this dpsemu reads %d: move it aside to start empty", path, d.Version, registryVersion)
	}
	// A section written as null reads back as an empty one.
	if d.Enrollments == nil {
		d.Enrollments = map[string]*Enrollment{}
	}
	if d.Registrations == nil {
		d.Registrations = map[string]*Registration{}
	}
	if d.Devices == nil {
		d.Devices = map[string]*deviceRecord{}
	}
	if d.CredentialPolicies == nil {
		d.CredentialPolicies = map[string]*CredentialPolicy{}
	}
	return d, nil
}

// save writes the registry to dir atomically.
func (d *registryData) save(dir string) error {
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding registry: %w", err)
	}
	return atomicfile.WriteFile(filepath.Join(dir, registryFile), append(b, '\n'), 0o600)
}
