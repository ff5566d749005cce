// Package config reads dpsd's TOML configuration: the main file (normally
// /etc/dpsd/config.toml) and the drop-ins beside it in config.d/*.toml,
// merged key by key in name order, the later file winning.
//
// Reading is strict: an unknown key, a value of the wrong type or a value out
// of range is an error that names the file, the line and the dotted key, so
// that `dpsd check-config` can point an admin at the exact spot:
//
//	/etc/dpsd/config.toml:12: tpm.ownership: "tak" is not one of take, shared
//
// This package is the only importer of github.com/BurntSushi/toml.
package config

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// Config is the validated configuration. Its sections mirror the TOML
// tables; each field's doc names its key.
type Config struct {
	Provisioning Provisioning
	TPM          TPM
	Hub          Hub
	Token        Token
	Network      Network
	Status       Status
	State        State

	// Files are the files Load read, in the order they were applied (the
	// main file, when present, then the drop-ins); for the daemon's log.
	Files []string
}

// Provisioning is the [provisioning] table: where and as whom the device
// registers with DPS.
type Provisioning struct {
	// GlobalEndpoint (global_endpoint) is the DPS base URL: https, no query,
	// host lowercased and no trailing slash after Load.
	GlobalEndpoint string
	// IDScope (id_scope) is the DPS instance's ID scope; required.
	IDScope string
	// RegistrationID (registration_id) is the DPS registration ID; empty
	// means derived from the EK.
	RegistrationID string
	// Payload (payload) is the custom allocation payload: a JSON object,
	// compacted by Load; empty when unset.
	Payload string
	// APIVersion (api_version) is the DPS REST api-version query value.
	APIVersion string
}

// TPM is the [tpm] table.
type TPM struct {
	// Device (device) says which TPM to open: "auto", a device path,
	// "swtpm:PATH" or "mssim:HOST:PORT" (the syntax tpmdev.Open takes).
	Device string
	// Ownership (ownership) is the owner hierarchy policy.
	Ownership Ownership
	// OwnerAuthFile (owner_auth_file) holds the owner auth for the shared
	// policy; empty when the owner hierarchy has no auth.
	OwnerAuthFile string
	// EndorsementAuthFile (endorsement_auth_file) holds the endorsement
	// hierarchy's auth; empty when it has none.
	EndorsementAuthFile string
	// EKTemplate (ek_template) selects the EK template to create when the
	// EK is missing.
	EKTemplate EKTemplate
	// CheckInterval (check_interval) is how often the running daemon looks
	// for a TPM clear.
	CheckInterval time.Duration
	// BusProtection (bus_protection) says whether secrets cross the TPM
	// bus encrypted.
	BusProtection BusProtection
	// IdentityHandle (identity_handle) is the owner persistent handle,
	// such as 0x81000100, where the hub key is also made persistent for
	// other Azure SDK apps; 0: none. Never the SRK's or the EK's.
	IdentityHandle tpmhandle.Handle
}

// Ownership is the owner hierarchy policy (tpm.ownership).
type Ownership string

// The ownership policies (see "Ownership policy" in docs/design.md).
const (
	// OwnershipTake: set a random owner auth on first boot and after a
	// clear, sealed under the SRK.
	OwnershipTake Ownership = "take"
	// OwnershipShared: never change hierarchy auth; use the auth files.
	OwnershipShared Ownership = "shared"
)

// EKTemplate names the template of the Endorsement Key (tpm.ek_template).
type EKTemplate string

// The EK templates dpsd can create.
const (
	// EKTemplateTCG is the TCG EK Credential Profile's RSA-2048 template.
	EKTemplateTCG EKTemplate = "tcg"
	// EKTemplateAzureSDK is the Azure SDKs' variant with an empty unique
	// field, for devices whose EK was created by them.
	EKTemplateAzureSDK EKTemplate = "azure-sdk"
)

// BusProtection says how secrets cross the TPM bus (tpm.bus_protection;
// "The TPM bus" in docs/design.md).
type BusProtection string

// The bus protections.
const (
	// BusEncrypt: secrets only in sessions salted to the EK, encrypted
	// (AES-128-CFB parameter encryption).
	BusEncrypt BusProtection = "encrypt"
	// BusOff: password sessions and parameters in clear, for TPMs that
	// cannot do salted sessions.
	BusOff BusProtection = "off"
)

// Hub is the [hub] table: what the daemon does with the assigned IoT Hub.
type Hub struct {
	// Verify (verify): connect once after provisioning to check the
	// credential.
	Verify bool
	// StayConnected (stay_connected): keep the MQTT session open.
	StayConnected bool
	// ReportTwin (report_twin): report dpsd's facts as twin reported
	// properties.
	ReportTwin bool
	// EndpointOverride (endpoint_override) is a HOST:PORT to dial instead of
	// the assigned hub; empty: dial the hub itself.
	EndpointOverride string
	// Auth (auth) is how the device authenticates to the hub: a SAS key
	// from DPS, or an X.509 certificate DPS issues for a TPM key.
	Auth HubAuth
	// RenewBefore (renew_before) is how long before its expiry an X.509
	// certificate is renewed; 0: at two thirds of its lifetime.
	RenewBefore time.Duration
	// CertKeyHandle (cert_key_handle) is the persistent handle ("0x81...")
	// where the certificate's TPM key is also kept for other programs
	// (tpm2-openssl handle: URIs); 0: none. x509 only.
	CertKeyHandle tpmhandle.Handle
	// CertFile (cert_file) is an absolute path where the chain in use is
	// also written (PEM, mode 0640: readable by the service's group) for
	// apps; empty: none. x509 only.
	CertFile string
}

// HubAuth is the hub credential (hub.auth).
type HubAuth string

// The hub credentials.
const (
	// AuthSAS: an HMAC key DPS imports into the TPM signs SAS tokens.
	AuthSAS HubAuth = "sas"
	// AuthX509: DPS issues a certificate for a signing key made in the TPM
	// (docs/dps-x509-issuance.md); TLS client authentication.
	AuthX509 HubAuth = "x509"
)

// Token is the [token] table: who may get hub SAS tokens from the daemon.
type Token struct {
	// Allow (allow) lists user names and "@group" names.
	Allow []string
	// MaxTTL (max_ttl) caps a token's lifetime.
	MaxTTL time.Duration
}

// Network is the [network] table.
type Network struct {
	// CAFile (ca_file) is a PEM file of extra trust anchors; empty: none.
	CAFile string
	// Proxy (proxy) is the HTTPS proxy URL; empty: HTTPS_PROXY from the
	// environment.
	Proxy string
	// Timeout (timeout) bounds each network exchange.
	Timeout time.Duration
}

// Status is the [status] table: the local status socket.
type Status struct {
	// Socket (socket) is the absolute path of the Unix socket.
	Socket string
	// Group (group) is the socket's group; its members may read status.
	Group string
}

// State is the [state] table.
type State struct {
	// Dir (dir) is the absolute directory of state.json and the key files.
	Dir string
}

// Default returns the configuration that applies to every key a file does
// not set; the reference config (contrib/config.toml) spells out the same
// values. IDScope is empty: it has no default and Load requires it.
func Default() *Config {
	return &Config{
		Provisioning: Provisioning{
			GlobalEndpoint: dps.DefaultEndpoint,
			APIVersion:     dps.DefaultAPIVersion,
		},
		TPM: TPM{
			Device:        "auto",
			Ownership:     OwnershipTake,
			EKTemplate:    EKTemplateTCG,
			BusProtection: BusEncrypt,
			CheckInterval: 5 * time.Minute,
		},
		Hub: Hub{
			Verify:     true,
			ReportTwin: true,
			Auth:       AuthSAS,
		},
		Token: Token{
			Allow:  []string{},
			MaxTTL: apitype.DefaultMaxTokenTTL,
		},
		Network: Network{
			Timeout: dps.DefaultTimeout,
		},
		Status: Status{
			Socket: "/run/dpsd/status.sock",
			Group:  "dpsd",
		},
		State: State{
			Dir: "/var/lib/dpsd",
		},
	}
}

// ProvisioningFingerprint is a digest (hex SHA-256) of the settings that
// decide which registration the device holds: ID scope, registration ID,
// endpoint, payload, and auth when it is x509. The daemon stores it in state.json and provisions
// again with reason config-changed when it differs. Load normalises the
// endpoint and compacts the payload, so reformatting a file changes nothing.
func (c *Config) ProvisioningFingerprint() string {
	h := sha256.New()
	// A version label, so that a future change of the inputs is a change of
	// the fingerprint rather than a silent collision.
	h.Write([]byte("dpsd provisioning fingerprint v1\x00"))
	for _, field := range [][]byte{
		[]byte(c.Provisioning.IDScope),
		[]byte(c.Provisioning.RegistrationID),
		[]byte(c.Provisioning.GlobalEndpoint),
		[]byte(c.Provisioning.Payload),
	} {
		// Length prefixes keep ("ab","c") and ("a","bc") apart.
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(field))))
		h.Write(field)
	}
	if c.Hub.Auth == AuthX509 {
		// The credential is part of the registration (a certificate is
		// issued only when asked for); added only for x509, so that a SAS
		// device's fingerprint, and its record, stay as they were.
		h.Write([]byte("\x00auth=x509"))
	}
	return hex.EncodeToString(h.Sum(nil))
}
