// Package state keeps what dpsd must remember across restarts, in the
// directory of [state] dir (normally /var/lib/dpsd):
//
//	state.json        the provisioning record (Record)
//	identity.key      the hub credential: the SRK-wrapped HMAC key, opaque here
//	identity.key.new  a credential staged during a registration, not yet in use
//	owner.auth        the owner auth dpsd set, sealed under the SRK, opaque here
//	identity.crt      [hub] auth = "x509": the issued chain, PEM, leaf first
//	identity.tlskey   the certificate's SRK-wrapped TPM signing key, opaque here
//	                  (both staged as .new and switched like identity.key)
//
// Every file is replaced whole and atomically: the bytes go to NAME.tmp,
// which is fsynced, renamed over NAME, and the directory is fsynced so that
// the rename itself survives a power cut. A kill -9 or power loss at any
// point therefore leaves each file either as it was or as it was meant to
// become, never half written; at worst a NAME.tmp is left behind, which no
// reader looks at and the next write of NAME replaces.
//
// The identity is switched in two steps so that the device never loses a
// working key: StageIdentity writes the new key beside the old one, the
// caller saves the Record naming it (IdentityDigest), and CommitIdentity
// renames it over identity.key. After a crash, the caller compares the
// staged key with the record's IdentityDigest: equal means the record was
// saved and CommitIdentity finishes the switch; different means the
// registration never completed and DiscardStaged drops it. Between those
// points there is exactly one identity.key, the old one or the new one.
//
// CheckWritable proves, before a registration, that a switch can be
// written: it writes, flushes and removes .probe.tmp.
//
// A missing state.json means a fresh device. Nothing is written when nothing
// changed (Save compares with the file), so a restart writes no file.
//
// One process (the daemon) owns the directory; Store does no locking.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/filelimit"
)

// The files in Store.Dir.
const (
	StateFile          = "state.json"
	IdentityFile       = "identity.key"
	StagedIdentityFile = "identity.key.new"
	OwnerAuthFile      = "owner.auth"
	// CertificateFile and TLSKeyFile are the X.509 credential (Certificate).
	CertificateFile = "identity.crt"
	TLSKeyFile      = "identity.tlskey"
	// StagedSuffix marks a file staged by a switch, not yet in use.
	StagedSuffix = ".new"
)

// Format is the layout of state.json this package writes and reads. A file
// of a later format was written by a newer dpsd and is refused as corrupt
// rather than misread.
const Format = 1

// maxFileSize bounds every file read here, far above what dpsd writes
// (about 1 KiB each): a larger file was not written by dpsd and is refused
// before it is read.
const maxFileSize = 1 << 20

// ErrCorrupt says state.json exists but cannot be used. The daemon reports
// it and carries on as a fresh device; the next Save replaces the file.
var ErrCorrupt = errors.New("state file corrupt")

// Record is the provisioning record in state.json. The provisioning engine
// writes it when a registration completes and reads it at start; the
// status API shows parts of it. Strings are empty and times zero when not
// known yet.
type Record struct {
	// Format is the file's layout version; Save sets it to Format.
	Format int `json:"format"`
	// Version is the dpsd version that wrote the record (written by the
	// engine; read by people debugging a device).
	Version string `json:"version,omitempty"`
	// RegistrationID is the DPS registration ID the device registered
	// with. Written by the engine after `assigned`; read at start (empty
	// means never provisioned) and shown in status.
	RegistrationID string `json:"registrationId,omitempty"`
	// IDScope is the DPS ID scope registered with; written by the engine,
	// shown in status.
	IDScope string `json:"idScope,omitempty"`
	// AssignedHub is the IoT Hub host name DPS assigned; written by the
	// engine, read at start by the hub client and shown in status.
	AssignedHub string `json:"assignedHub,omitempty"`
	// DeviceID is the hub device ID DPS assigned; written by the engine,
	// read at start by the hub client and shown in status.
	DeviceID string `json:"deviceId,omitempty"`
	// EKDigest is hex SHA-256 of the EK's TPM2B_PUBLIC at registration;
	// read at start by the engine: a different EK means a replaced TPM.
	EKDigest string `json:"ekDigest,omitempty"`
	// SRKName is the hex Name of the SRK the identity is wrapped under;
	// read by the engine at start and every check_interval: a different or
	// missing SRK with the same EK means the TPM was cleared.
	SRKName string `json:"srkName,omitempty"`
	// ProvisionedAt is when DPS last said `assigned`; written by the
	// engine, shown in status. Save stores it in UTC.
	ProvisionedAt time.Time `json:"provisionedAt,omitzero"`
	// Reason is why the last registration happened;
	// written by the engine, shown in status.
	Reason apitype.Reason `json:"reason,omitempty"`
	// ConfigFingerprint is config.ProvisioningFingerprint() at
	// registration; read at start by the engine: a different one means
	// reason config-changed.
	ConfigFingerprint string `json:"configFingerprint,omitempty"`
	// IdentityDigest is hex SHA-256 of the identity.key contents this
	// record belongs to; written by the engine before CommitIdentity, read
	// at start to finish or undo an identity switch a crash interrupted.
	IdentityDigest string `json:"identityDigest,omitempty"`
	// CertificateDigest names the X.509 credential (identity.tlskey and
	// identity.crt) this record belongs to, as IdentityDigest names
	// identity.key; empty with SAS. Written by the engine (its digest of
	// a Certificate) before CommitCertificate.
	CertificateDigest string `json:"certificateDigest,omitempty"`
	// OwnerAuthSealed is true when dpsd had set the TPM's owner auth, and
	// kept it sealed in owner.auth, at registration. Written by the
	// engine; read by `dpsd check` to tell a deleted owner.auth from a
	// TPM someone else owns.
	OwnerAuthSealed bool `json:"ownerAuthSealed,omitempty"`
	// PendingReason is why a registration is due that has not completed
	// (as in status). Written by the engine when a technician asks
	// (before the request is answered) and before each authenticated
	// registration, since DPS may replace the hub key from then on; the
	// record a completed registration writes clears it. Read at start: a
	// set reason resumes the registration.
	PendingReason apitype.Reason `json:"pendingReason,omitempty"`
	// HubAccepted says that the assigned hub accepted the identity this
	// record names; nil when it has not (yet), or refused it since.
	// Written by the engine after a hub check or session; read at start,
	// so that a restart does not connect to the hub again (it allows one
	// connection per device ID, and the device's app may hold it).
	HubAccepted *HubAcceptance `json:"hubAccepted,omitempty"`
}

// HubAcceptance is the hub's acceptance of one identity.
type HubAcceptance struct {
	// KeyDigest is hex SHA-256 of the identity key's TPM2B_PUBLIC: it
	// names the key, whichever file holds it.
	KeyDigest string `json:"keyDigest"`
	// Hub and DeviceID are where it was accepted.
	Hub      string `json:"hub"`
	DeviceID string `json:"deviceId"`
	// At is when; Save stores it in UTC.
	At time.Time `json:"at"`
}

// Store reads and writes the files in Dir. The zero Store is not usable;
// Dir must be absolute (the config guarantees it).
type Store struct {
	Dir string
}

func (s Store) path(name string) string { return filepath.Join(s.Dir, name) }

// Load reads state.json. A missing file is a fresh device: found is false
// and err nil. A file that is not a record of a known format gives an error
// wrapping ErrCorrupt. Load writes nothing (not even the directory).
func (s Store) Load() (st Record, found bool, err error) {
	path := s.path(StateFile)
	b, err := filelimit.Read(path, maxFileSize)
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, false, nil
	}
	if errors.Is(err, filelimit.ErrTooLarge) {
		return Record{}, false, fmt.Errorf("reading the provisioning record: %w: %w: not a record dpsd wrote; "+
			"dpsd registers the device again and replaces it (to keep it, move it away first)", ErrCorrupt, err)
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("reading the provisioning record: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return Record{}, false, fmt.Errorf("reading %s: %w: %w", path, ErrCorrupt, err)
	}
	if st.Format < 1 || st.Format > Format {
		return Record{}, false, fmt.Errorf("reading %s: %w: format %d, this dpsd reads 1..%d",
			path, ErrCorrupt, st.Format, Format)
	}
	return st, true, nil
}

// Save writes st to state.json, with Format set and times in UTC, unless
// the file already holds exactly that: then it writes nothing and returns
// false, so that re-saving an unchanged record costs no flash write.
func (s Store) Save(st Record) (written bool, err error) {
	st.Format = Format
	if !st.ProvisionedAt.IsZero() {
		st.ProvisionedAt = st.ProvisionedAt.UTC()
	}
	if h := st.HubAccepted; h != nil {
		utc := *h // st is a copy, *h is the caller's
		utc.At = utc.At.UTC()
		st.HubAccepted = &utc
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return false, fmt.Errorf("encoding the provisioning record: %w", err)
	}
	b = append(b, '\n')
	if old, err := filelimit.Read(s.path(StateFile), maxFileSize); err == nil && bytes.Equal(old, b) {
		return false, nil
	}
	if err := s.writeAtomic(StateFile, b); err != nil {
		return false, fmt.Errorf("saving the provisioning record: %w", err)
	}
	return true, nil
}
