// Package apitype holds the wire types of the status socket. The daemon's
// handlers, the Go client and every `--json` output use these same types, so
// that the human views are rendered from exactly what the API returns.
//
// It imports nothing but the standard library. Fields may be added; none are
// renamed (scripts on devices parse them).
package apitype

import "time"

// SocketHost is the Host header of every request to the status socket. The
// server refuses any other Host, so that a request relayed from a browser or
// a TCP forwarder is not served.
const SocketHost = "local-dpsd"

// ServiceUser is the account dpsd.service runs as (User= of the unit).
// Clients trust a status socket served by it or by root.
const ServiceUser = "dpsd"

// Phase is the daemon's provisioning phase.
type Phase string

// The phases, in the order a first boot walks through them, then the
// resting states.
const (
	PhaseStarting        Phase = "starting"
	PhaseWaitingForTPM   Phase = "waiting-for-tpm"
	PhaseWaitingForTime  Phase = "waiting-for-time"
	PhaseTakingOwnership Phase = "taking-ownership"
	PhaseRegistering     Phase = "registering"
	PhaseAssigning       Phase = "assigning"
	PhaseProvisioned     Phase = "provisioned"
	// PhaseFailed: the last attempt failed; the daemon retries at NextAttemptAt.
	PhaseFailed Phase = "failed"
	// PhaseDisabled: DPS says the enrollment is disabled; retried slowly.
	PhaseDisabled Phase = "disabled"
)

// Reason says why the current (or last) provisioning happened.
type Reason string

// The reasons for a (re)provisioning.
const (
	ReasonFirstBoot     Reason = "first-boot"
	ReasonTPMCleared    Reason = "tpm-cleared"
	ReasonHubRejected   Reason = "hub-rejected"
	ReasonConfigChanged Reason = "config-changed"
	ReasonRequested     Reason = "requested"
	// ReasonCertRenewal: the X.509 certificate is due for renewal (or
	// expired); a registration with a new key and CSR renews it.
	ReasonCertRenewal Reason = "certificate-renewal"
)

// Status is the body of GET /v1/status.
type Status struct {
	State          Phase      `json:"state"`
	Reason         Reason     `json:"reason,omitempty"`
	RegistrationID string     `json:"registrationId,omitempty"`
	IDScope        string     `json:"idScope,omitempty"`
	AssignedHub    string     `json:"assignedHub,omitempty"`
	DeviceID       string     `json:"deviceId,omitempty"`
	ProvisionedAt  *time.Time `json:"provisionedAt"`
	Attempts       int        `json:"attempts"`
	NextAttemptAt  *time.Time `json:"nextAttemptAt"`
	LastError      *string    `json:"lastError"`
	TPM            TPMStatus  `json:"tpm"`
	Hub            HubStatus  `json:"hub"`
	Credential     Credential `json:"credential"`
	Version        string     `json:"version"`
}

// Credential is how the device authenticates to its hub: "sas" (tokens
// signed with the key DPS gave) or "x509" (a certificate DPS issued for a
// key in the TPM). The certificate's fields are empty for sas, and for
// x509 until one is issued.
type Credential struct {
	Type      string     `json:"type"`
	Subject   string     `json:"subject"`
	Serial    string     `json:"serial"` // hex
	NotBefore *time.Time `json:"notBefore"`
	NotAfter  *time.Time `json:"notAfter"`
	RenewAt   *time.Time `json:"renewAt"`
	// KeyHandle is the persistent handle of the certificate's key, when
	// it is persisted for other apps; empty otherwise.
	KeyHandle string `json:"keyHandle"`
}

// The credential types.
const (
	CredentialSAS  = "sas"
	CredentialX509 = "x509"
)

// TPMStatus is what the daemon knows of its TPM.
type TPMStatus struct {
	Device string `json:"device"`
	// EKDigest is hex SHA-256 of the EK's marshalled TPM2B_PUBLIC.
	EKDigest string `json:"ekDigest,omitempty"`
	// SRKName is the hex TPM Name of the SRK (nameAlg || digest).
	SRKName      string `json:"srkName,omitempty"`
	OwnerAuthSet bool   `json:"ownerAuthSet"`
	InLockout    bool   `json:"inLockout"`
	// Commands is the number of TPM commands the daemon has sent since start.
	Commands int `json:"commands"`
}

// HubStatus is the result of the last check of the credential against the
// assigned IoT Hub.
type HubStatus struct {
	CheckedAt *time.Time `json:"checkedAt"`
	// Result is empty while the credential was never checked.
	Result HubResult `json:"result,omitempty"`
	Error  string    `json:"error,omitempty"`
	// Connected is true while a stay_connected session is up.
	Connected bool `json:"connected,omitempty"`
}

// HubResult is the outcome of the last check against the hub.
type HubResult string

// The hub results.
const (
	// HubOK: the hub accepted the credential.
	HubOK HubResult = "ok"
	// HubRejected: the hub refused the credential (CONNACK 2, 4 or 5).
	HubRejected HubResult = "rejected"
	// HubUnreachable: the hub could not be reached to ask.
	HubUnreachable HubResult = "unreachable"
)

// EnrollInfo is the body of GET /v1/enroll-info: what an operator types into
// a DPS individual enrollment.
type EnrollInfo struct {
	// RegistrationID is the configured or EK-derived registration ID.
	RegistrationID string `json:"registrationId"`
	// EndorsementKey is the standard base64 of the EK's marshalled
	// TPM2B_PUBLIC (with its size prefix), exactly as DPS stores it.
	EndorsementKey string `json:"endorsementKey"`
	// EKCertificate is the PEM of the EK certificate from NV, if the TPM has one.
	EKCertificate string `json:"ekCertificate,omitempty"`
}

// CheckStatus is the outcome of one diagnostic.
type CheckStatus string

// Outcomes of a check.
const (
	CheckPass CheckStatus = "pass"
	CheckWarn CheckStatus = "warn"
	CheckFail CheckStatus = "fail"
)

// Check is one named diagnostic with a one-line fix when it does not pass.
type Check struct {
	Name   string      `json:"name"`
	Status CheckStatus `json:"status"`
	Detail string      `json:"detail,omitempty"`
	Fix    string      `json:"fix,omitempty"`
}

// CheckReport is the body of GET /v1/check.
type CheckReport struct {
	Checks []Check `json:"checks"`
}

// Failed reports whether any check failed (`dpsd check` exits 1).
func (r CheckReport) Failed() bool {
	for _, c := range r.Checks {
		if c.Status == CheckFail {
			return true
		}
	}
	return false
}

// DefaultMaxTokenTTL is the longest ttl POST /v1/token grants when
// [token] max_ttl does not say otherwise.
const DefaultMaxTokenTTL = 24 * time.Hour

// Token is the body of POST /v1/token.
type Token struct {
	// SAS is the complete "SharedAccessSignature sr=…&sig=…&se=…" string.
	SAS       string    `json:"sas"`
	Hub       string    `json:"hub"`
	DeviceID  string    `json:"deviceId"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// Error is the body of every non-2xx answer of the status API.
type Error struct {
	Error string `json:"error"`
	// Fix says what the caller can do about it, when there is something.
	Fix string `json:"fix,omitempty"`
}
