package provision

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/atomicfile"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/filelimit"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/daemon/x509cred"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// This file is the X.509 hub credential ([hub] auth = "x509";
// docs/dps-x509-issuance.md): a signing key made in the TPM under the SRK,
// the certificate DPS issues for it with the registration, and their files.

// certificate is an issued, verified operational certificate and its key.
type certificate struct {
	key     *tpmdev.SigningKey
	chain   [][]byte // DER, leaf first
	leaf    *x509.Certificate
	renewAt time.Time
}

// ErrCertificateAuth: the device authenticates to its hub with a
// certificate, so there is no SAS token to hand out.
var ErrCertificateAuth = errors.New("this device authenticates with a certificate: there are no SAS tokens to hand out")

func (e *Engine) x509Mode() bool { return e.cfg.Hub.Auth == config.AuthX509 }

// certRequest is a registration's half of a certificate: a fresh TPM key
// and the CSR DPS signs.
type certRequest struct {
	key    *tpmdev.SigningKey
	signer crypto.Signer
	csr    []byte
}

// newCertRequest makes a signing key under the SRK (P-256 where the TPM
// has it) and a CSR for it naming regID.
func (e *Engine) newCertRequest(ctx context.Context, dev tpmDevice, regID string) (*certRequest, error) {
	key, err := dev.CreateSigningKey(ctx, tpmdev.KeyAuto)
	if err != nil {
		return nil, fmt.Errorf("creating the certificate's key in the TPM: %w", err)
	}
	signer, err := dev.KeySigner(key)
	if err != nil {
		return nil, fmt.Errorf("using the certificate's key: %w", err)
	}
	csr, err := x509cred.CreateCSR(signer, regID)
	if err != nil {
		return nil, err
	}
	return &certRequest{key: key, signer: signer, csr: csr}, nil
}

// acceptChain checks the chain DPS issued for req before anything is
// replaced: its own root, our key, our registration ID, valid now.
func (e *Engine) acceptChain(req *certRequest, chain [][]byte, regID string) (*certificate, error) {
	if len(chain) == 0 {
		return nil, permanent{errors.New("DPS issued no certificate: the enrollment needs a credential policy (credentialPolicyName)")}
	}
	leaf, err := x509cred.VerifyChain(chain, regID, req.signer.Public(), e.now())
	if err != nil {
		return nil, permanent{fmt.Errorf("refusing the certificate DPS issued (the old credential stays in use): %w", err)}
	}
	// To the second, as the record keeps it (provisionedAt): a restart
	// computes the same renewAt.
	return e.newCertificate(req.key, chain, leaf, e.now().Truncate(time.Second)), nil
}

// newCertificate is a certificate received at issued.
func (e *Engine) newCertificate(key *tpmdev.SigningKey, chain [][]byte, leaf *x509.Certificate, issued time.Time) *certificate {
	return &certificate{key: key, chain: chain, leaf: leaf,
		renewAt: renewAt(leaf.NotBefore, leaf.NotAfter, issued, e.cfg.Hub.RenewBefore)}
}

// encodeCertificate is c as its files.
func encodeCertificate(c *certificate) (state.Certificate, error) {
	key, err := c.key.MarshalBinary()
	if err != nil {
		return state.Certificate{}, fmt.Errorf("encoding the certificate's key: %w", err)
	}
	var chain bytes.Buffer
	for _, der := range c.chain {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	return state.Certificate{Key: key, Chain: chain.Bytes()}, nil
}

// certDigest names the files of a certificate in the record.
func certDigest(c state.Certificate) string {
	return digest(append(append([]byte(digest(c.Key)), '\n'), c.Chain...))
}

// decodeCertificate reads the recorded certificate back; the chain was
// verified before it was stored, and is parsed again, not trusted blindly.
// issued is when it was received (the record's provisionedAt).
func (e *Engine) decodeCertificate(files state.Certificate, issued time.Time) (*certificate, error) {
	key := new(tpmdev.SigningKey)
	if err := key.UnmarshalBinary(files.Key); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", state.TLSKeyFile, err)
	}
	var chain [][]byte
	for rest := files.Chain; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		chain = append(chain, b.Bytes)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%s holds no certificate", state.CertificateFile)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", state.CertificateFile, err)
	}
	return e.newCertificate(key, chain, leaf, issued), nil
}

// tryCertificate loads the recorded certificate and proves its key loads
// in the TPM; keyCheck as for the hub key.
func (e *Engine) tryCertificate(ctx context.Context, dev tpmDevice, rec state.Record) (*certificate, keyCheck, error) {
	files, err := e.o.Store.LoadCertificate()
	if err != nil {
		e.log.Error("certificate unusable: registering again", "err", err)
		return nil, keyUnreadable, nil
	}
	if certDigest(files) != rec.CertificateDigest {
		e.log.Error("the certificate on disk is not the one the record names: registering again", "file", state.CertificateFile)
		return nil, keyNotRecorded, nil
	}
	c, err := e.decodeCertificate(files, rec.ProvisionedAt)
	if err != nil {
		e.log.Error("certificate corrupt: registering again", "err", err)
		return nil, keyCorrupt, nil
	}
	if err := dev.LoadCheck(ctx, (*tpmdev.WrappedKey)(c.key)); err != nil {
		if errors.Is(err, tpmdev.ErrKeyInvalidated) {
			e.log.Warn("TPM cleared: the certificate's key no longer loads")
			return nil, keyInvalidated, nil
		}
		return nil, keyLoadFailed, fmt.Errorf("loading the certificate's key: %w", err)
	}
	e.publishChain(files)
	return c, keyLoads, nil
}

// publishChain writes the chain in use to [hub] cert_file, mode 0640 (the
// service's group may read it), unless it holds it already: apps that use
// the key at cert_key_handle need the chain, and the state directory is
// the daemon's alone. A failure is logged; the hub connection does not
// depend on it.
func (e *Engine) publishChain(files state.Certificate) {
	path := e.cfg.Hub.CertFile
	if path == "" {
		return
	}
	if old, err := filelimit.Read(path, maxChainFile); err == nil && bytes.Equal(old, files.Chain) {
		return // a restart writes nothing
	}
	if err := atomicfile.WriteFile(path, files.Chain, 0o640); err != nil {
		e.log.Error("writing the certificate chain for apps failed", "file", path, "err", err)
	}
}

// maxChainFile bounds the read of cert_file, far above a chain's size.
const maxChainFile = 1 << 20

// tlsCertificate is c as a TLS client certificate whose signatures the
// TPM makes; a key the TPM no longer has wakes the engine.
func (e *Engine) tlsCertificate(dev tpmDevice, c *certificate) (*tlsCredential, error) {
	s, err := dev.KeySigner(c.key)
	if err != nil {
		return nil, err
	}
	return &tlsCredential{Signer: s, e: e}, nil
}

// tlsCredential is a TPM signer that asks for a re-check when the TPM no
// longer has its key (a clear).
type tlsCredential struct {
	crypto.Signer
	e *Engine
}

func (t *tlsCredential) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := t.Signer.Sign(r, digest, opts)
	if errors.Is(err, tpmdev.ErrKeyInvalidated) {
		t.e.recheck()
	}
	return sig, err
}

// credentialStatus is the status API's view of the identity's credential.
func (e *Engine) credentialStatus(c *certificate) apitype.Credential {
	if !e.x509Mode() {
		return apitype.Credential{Type: apitype.CredentialSAS}
	}
	cr := apitype.Credential{Type: apitype.CredentialX509}
	if c == nil {
		return cr
	}
	if h := e.cfg.Hub.CertKeyHandle; h != 0 {
		cr.KeyHandle = h.String()
	}
	nb, na, ra := c.leaf.NotBefore.UTC(), c.leaf.NotAfter.UTC(), c.renewAt.UTC()
	cr.Subject = c.leaf.Subject.String()
	cr.Serial = fmt.Sprintf("%x", c.leaf.SerialNumber)
	cr.NotBefore, cr.NotAfter, cr.RenewAt = &nb, &na, &ra
	return cr
}

// showCredential puts the credential of id in the status.
func (e *Engine) showCredential(id *identity) {
	var c *certificate
	if id != nil {
		c = id.cert
	}
	cr := e.credentialStatus(c)
	e.update(func(s *apitype.Status) { s.Credential = cr })
}
