package provision

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// fakeTPM is a TPM in memory: one EK for life, an SRK and owner auth that
// a clear removes, and keys that load only under the SRK generation they
// were wrapped under.
type fakeTPM struct {
	mu       sync.Mutex
	ek       []byte
	srkGen   int  // bumped by each clear
	hasSRK   bool // the SRK of srkGen exists
	ownerSet bool
	commands int
}

var _ tpmDevice = (*fakeTPM)(nil)

func newFakeTPM() *fakeTPM { return &fakeTPM{ek: []byte("ek public"), srkGen: 1} }

// clear is tpm2_clear: the SRK, the owner auth and every key wrapped under
// the SRK are gone.
func (f *fakeTPM) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.srkGen++
	f.hasSRK, f.ownerSet = false, false
}

// cmd counts a command and returns the lock's release.
func (f *fakeTPM) cmd() func() {
	f.mu.Lock()
	f.commands++
	return f.mu.Unlock
}

func (f *fakeTPM) Path() string                                  { return "fake" }
func (f *fakeTPM) Busy() time.Duration                           { return 0 }
func (f *fakeTPM) Close() error                                  { return nil }
func (f *fakeTPM) EKCertificate(context.Context) ([]byte, error) { return nil, nil }

func (f *fakeTPM) Stats() tpmdev.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return tpmdev.Stats{Total: f.commands}
}

func (f *fakeTPM) ReadEK(context.Context) (tpmdev.EK, error) {
	defer f.cmd()()
	return tpmdev.EK{Public: f.ek}, nil
}

func (f *fakeTPM) EnsureEK(context.Context, tpmdev.EKTemplate, []byte, []byte) (tpmdev.EK, error) {
	defer f.cmd()()
	return tpmdev.EK{Public: f.ek}, nil
}

func (f *fakeTPM) srk() tpmdev.SRK {
	name := fmt.Sprintf("srk-%d", f.srkGen)
	return tpmdev.SRK{Public: []byte(name), Name: []byte(name)}
}

func (f *fakeTPM) ReadSRK(context.Context) (tpmdev.SRK, error) {
	defer f.cmd()()
	if !f.hasSRK {
		return tpmdev.SRK{}, tpmdev.ErrNotFound
	}
	return f.srk(), nil
}

func (f *fakeTPM) EnsureSRK(context.Context, []byte) (tpmdev.SRK, error) {
	defer f.cmd()()
	f.hasSRK = true
	return f.srk(), nil
}

func (f *fakeTPM) Ownership(context.Context) (tpmdev.Ownership, error) {
	defer f.cmd()()
	return tpmdev.Ownership{OwnerAuthSet: f.ownerSet}, nil
}

func (f *fakeTPM) SetOwnerAuth(context.Context, []byte, []byte) error {
	defer f.cmd()()
	f.ownerSet = true
	return nil
}

// wrap makes a key under the current SRK: a keyed-hash public area (what
// WrappedKey.UnmarshalBinary accepts) whose unique field names it, and a
// private part naming the SRK generation.
func (f *fakeTPM) wrap(name []byte) *tpmdev.WrappedKey {
	unique := sha256.Sum256(name)
	area := binary.BigEndian.AppendUint16(nil, 0x0008)     // TPM_ALG_KEYEDHASH
	area = binary.BigEndian.AppendUint16(area, 0x000B)     // nameAlg SHA-256
	area = binary.BigEndian.AppendUint32(area, 0x00020072) // attributes
	area = binary.BigEndian.AppendUint16(area, 0)          // authPolicy
	area = binary.BigEndian.AppendUint16(area, 0x0005)     // scheme HMAC
	area = binary.BigEndian.AppendUint16(area, 0x000B)     // its hash
	area = binary.BigEndian.AppendUint16(area, uint16(len(unique)))
	area = append(area, unique[:]...)
	priv := []byte(fmt.Sprintf("gen-%d", f.srkGen))
	return &tpmdev.WrappedKey{
		Public:  append(binary.BigEndian.AppendUint16(nil, uint16(len(area))), area...),
		Private: append(binary.BigEndian.AppendUint16(nil, uint16(len(priv))), priv...),
	}
}

func (f *fakeTPM) loads(k *tpmdev.WrappedKey) error {
	if !f.hasSRK || string(k.Private[2:]) != fmt.Sprintf("gen-%d", f.srkGen) {
		return tpmdev.ErrKeyInvalidated
	}
	return nil
}

func (f *fakeTPM) Seal(_ context.Context, secret []byte) ([]byte, error) {
	defer f.cmd()()
	return append([]byte(fmt.Sprintf("gen-%d:", f.srkGen)), secret...), nil
}

func (f *fakeTPM) Unseal(_ context.Context, sealed []byte) ([]byte, error) {
	defer f.cmd()()
	prefix := fmt.Sprintf("gen-%d:", f.srkGen)
	if len(sealed) < len(prefix) || string(sealed[:len(prefix)]) != prefix {
		return nil, tpmdev.ErrKeyInvalidated
	}
	return sealed[len(prefix):], nil
}

func (f *fakeTPM) LoadCheck(_ context.Context, k *tpmdev.WrappedKey) error {
	defer f.cmd()()
	return f.loads(k)
}

func (f *fakeTPM) HMAC(_ context.Context, k *tpmdev.WrappedKey, data []byte) ([]byte, error) {
	defer f.cmd()()
	if err := f.loads(k); err != nil {
		return nil, err
	}
	m := hmac.New(sha256.New, k.Public)
	m.Write(data)
	return m.Sum(nil), nil
}

func (f *fakeTPM) Import(_ context.Context, blob, _ []byte) (*tpmdev.WrappedKey, error) {
	defer f.cmd()()
	if !f.hasSRK {
		return nil, tpmdev.ErrNotFound
	}
	return f.wrap(blob), nil
}

func (f *fakeTPM) PersistAt(context.Context, *tpmdev.WrappedKey, string, []byte) error {
	defer f.cmd()()
	return nil
}

// errNoSigningKeys: the fake TPM plays SAS devices only; X.509 runs on
// swtpm (daemon/e2e).
var errNoSigningKeys = errors.New("fakeTPM makes no signing keys")

func (f *fakeTPM) CreateSigningKey(context.Context, tpmdev.KeyAlgorithm) (*tpmdev.SigningKey, error) {
	return nil, errNoSigningKeys
}

func (f *fakeTPM) KeySigner(*tpmdev.SigningKey) (crypto.Signer, error) { return nil, errNoSigningKeys }

// fakeDPS assigns every registration at once to hub.example, with a new
// key each time, unless err is set.
type fakeDPS struct {
	mu         sync.Mutex
	err        error
	challenges int
	assigned   int
}

var _ DPS = (*fakeDPS)(nil)

func (d *fakeDPS) Challenge(context.Context, string, []byte, []byte, json.RawMessage) (*dps.Challenge, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.challenges++
	if d.err != nil {
		return nil, d.err
	}
	return &dps.Challenge{AuthenticationKey: []byte("challenge"), KeyName: "registration"}, nil
}

func (d *fakeDPS) Register(_ context.Context, regID string, _, _ []byte, _ json.RawMessage, _ string) (*dps.Operation, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.assigned++
	return &dps.Operation{ID: "op", Status: dps.StatusAssigned, State: &dps.RegistrationState{
		RegistrationID: regID, Status: dps.StatusAssigned, AssignedHub: "hub.example", DeviceID: regID,
		TPM: dps.TPMResult{AuthenticationKey: []byte(fmt.Sprintf("identity %d", d.assigned))},
	}}, nil
}

func (d *fakeDPS) Poll(context.Context, string, string, string) (*dps.Operation, error) {
	return nil, errors.New("fakeDPS assigns at once")
}

func (d *fakeDPS) ServerTime(context.Context) (time.Time, error) { return time.Now(), nil }

func (d *fakeDPS) counts() (challenges, assigned int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.challenges, d.assigned
}

// fakeHub answers each check with err (nil: accepted); a session lasts
// until it is cancelled.
type fakeHub struct {
	mu     sync.Mutex
	err    error
	checks int
}

var _ hubClient = (*fakeHub)(nil)

func (h *fakeHub) Check(context.Context, hub.Config, map[string]any) (time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks++
	return time.Millisecond, h.err
}

func (h *fakeHub) Stay(ctx context.Context, _ hub.Config, _ map[string]any, _ hub.Handlers, onState func(bool, error)) error {
	onState(true, nil)
	<-ctx.Done()
	return ctx.Err()
}

func (h *fakeHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checks
}
