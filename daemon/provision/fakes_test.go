package provision

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/x509cred/x509credtest"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
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
	signers  map[string]*ecdsa.PrivateKey // by public area
	// persisted are the public areas of keys at persistent handles.
	persisted map[string][]byte
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

func (f *fakeTPM) Persist(_ context.Context, k *tpmdev.WrappedKey, at tpmhandle.Handle, _ []byte) error {
	handle := at.String()
	defer f.cmd()()
	if f.persisted == nil {
		f.persisted = map[string][]byte{}
	}
	f.persisted[handle] = k.Public
	return nil
}

// persistedAt is the public area of the key persisted at handle.
func (f *fakeTPM) persistedAt(handle string) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.persisted[handle]
}

// CreateSigningKey makes a P-256 key in software, wrapped as the TPM
// wraps one: an ECC signing public area and a private part naming the SRK
// generation.
func (f *fakeTPM) CreateSigningKey(context.Context, tpmdev.KeyAlgorithm) (*tpmdev.SigningKey, error) {
	defer f.cmd()()
	if !f.hasSRK {
		return nil, tpmdev.ErrNotFound
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	pub, err := priv.PublicKey.ECDH()
	if err != nil {
		return nil, err
	}
	point := pub.Bytes()                                   // 0x04 || X || Y
	area := binary.BigEndian.AppendUint16(nil, 0x0023)     // TPM_ALG_ECC
	area = binary.BigEndian.AppendUint16(area, 0x000B)     // nameAlg SHA-256
	area = binary.BigEndian.AppendUint32(area, 0x00040472) // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|sign
	area = binary.BigEndian.AppendUint16(area, 0)          // authPolicy
	area = binary.BigEndian.AppendUint16(area, 0x0010)     // symmetric: null
	area = binary.BigEndian.AppendUint16(area, 0x0018)     // scheme ECDSA
	area = binary.BigEndian.AppendUint16(area, 0x000B)     // its hash
	area = binary.BigEndian.AppendUint16(area, 0x0003)     // NIST P-256
	area = binary.BigEndian.AppendUint16(area, 0x0010)     // kdf: null
	for _, coord := range [][]byte{point[1:33], point[33:]} {
		area = binary.BigEndian.AppendUint16(area, 32)
		area = append(area, coord...)
	}
	k := f.wrap(nil)
	k.Public = append(binary.BigEndian.AppendUint16(nil, uint16(len(area))), area...)
	if f.signers == nil {
		f.signers = map[string]*ecdsa.PrivateKey{}
	}
	f.signers[string(k.Public)] = priv
	return (*tpmdev.SigningKey)(k), nil
}

func (f *fakeTPM) KeySigner(k *tpmdev.SigningKey) (crypto.Signer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	priv, ok := f.signers[string(k.Public)]
	if !ok {
		return nil, errors.New("fakeTPM made no such signing key")
	}
	return &fakeSigner{f: f, key: k, priv: priv}, nil
}

// fakeSigner signs in software, only while the key would load.
type fakeSigner struct {
	f    *fakeTPM
	key  *tpmdev.SigningKey
	priv *ecdsa.PrivateKey
}

func (s *fakeSigner) Public() crypto.PublicKey { return &s.priv.PublicKey }

func (s *fakeSigner) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	defer s.f.cmd()()
	if err := s.f.loads((*tpmdev.WrappedKey)(s.key)); err != nil {
		return nil, err
	}
	return s.priv.Sign(r, digest, opts)
}

// fakeDPS assigns every registration at once to hub.example, with a new
// key each time, unless err is set.
type fakeDPS struct {
	mu         sync.Mutex
	err        error
	challenges int
	assigned   int
	// certs, when set, issues certificates for CSRs (withCSR).
	certs *certPolicy
}

// withCSR is Options.DPSWithCSR of a fakeDPS: DPS issuing certificates
// from a fresh root, as an enrollment with a credential policy does.
func (d *fakeDPS) withCSR(t testing.TB) func(csr []byte) DPS {
	ca := x509credtest.NewCA(t, "fake device root", nil)
	return func(csr []byte) DPS { return &issuing{fakeDPS: d, t: t, ca: ca, csr: csr} }
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

// issuing is fakeDPS with a CSR and a credential policy: the assignment
// carries a chain for the CSR's key from ca, valid for life from now, or
// for another key when wrongKey is set.
type issuing struct {
	*fakeDPS
	t   testing.TB
	ca  *x509credtest.CA
	csr []byte
}

// certPolicy is what issuing certificates follow.
type certPolicy struct {
	mu       sync.Mutex
	life     time.Duration
	wrongKey bool
	issued   int
}

func (d *issuing) Register(ctx context.Context, regID string, ek, srk []byte, payload json.RawMessage, sas string) (*dps.Operation, error) {
	op, err := d.fakeDPS.Register(ctx, regID, ek, srk, payload, sas)
	if err != nil {
		return nil, err
	}
	req, err := x509.ParseCertificateRequest(d.csr)
	if err != nil {
		return nil, err
	}
	p := d.fakeDPS.certs
	p.mu.Lock()
	defer p.mu.Unlock()
	pub := req.PublicKey
	if p.wrongKey {
		pub = &x509credtest.NewKey(d.t).PublicKey
	}
	leaf := d.ca.Issue(d.t, req.Subject.CommonName, pub, func(c *x509.Certificate) { c.NotAfter = time.Now().Add(p.life) })
	p.issued++
	op.State.IssuedCertificateChain = [][]byte{leaf.Raw, d.ca.Cert.Raw}
	return op, nil
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
	// certs are the client certificates of the sessions, in order.
	certs []*tls.Certificate
}

var _ hubClient = (*fakeHub)(nil)

func (h *fakeHub) Check(context.Context, hub.Config, map[string]any) (time.Duration, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks++
	return time.Millisecond, h.err
}

func (h *fakeHub) Stay(ctx context.Context, cfg hub.Config, _ map[string]any, _ hub.Handlers, onState func(bool, error)) error {
	h.mu.Lock()
	h.certs = append(h.certs, cfg.Certificate)
	h.mu.Unlock()
	onState(true, nil)
	<-ctx.Done()
	return ctx.Err()
}

func (h *fakeHub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.checks
}
