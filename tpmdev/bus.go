package tpmdev

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// BusProtection says whether secrets cross the TPM bus encrypted.
type BusProtection int

const (
	// BusEncrypt (the default) sends every secret, and has every secret
	// returned, inside an HMAC session salted to the EK with AES-128-CFB
	// parameter encryption, and never sends a non-empty auth value in a
	// password session. docs/design.md ("The TPM bus") says what an
	// interposer on the bus can and cannot do.
	BusEncrypt BusProtection = iota
	// BusOff sends auth values in password sessions and parameters in
	// clear, for TPMs that cannot do salted sessions.
	BusOff
)

// String returns the config spelling: "encrypt" or "off".
func (p BusProtection) String() string {
	if p == BusOff {
		return "off"
	}
	return "encrypt"
}

// ErrBusTampered: what the TPM answered about a key does not hold
// together (a public area that does not hash to the Name the TPM gave, or
// an EK other than the one ReadEK or EnsureEK last returned): something on
// the bus alters the answers, and no secret is sent.
var ErrBusTampered = errors.New("TPM answers inconsistent (bus tampered?)")

// SetBusProtection chooses how secrets cross the bus; call it before the
// first operation.
func (d *Device) SetBusProtection(p BusProtection) { d.protect = p }

// saltKey is a decryption key in the TPM whose public area dpsd checked:
// a session salted to it has a key only the TPM can compute.
type saltKey struct {
	handle tpm2.TPMHandle
	public tpm2.TPMTPublic
}

// checkedPublic decodes the public area of a ReadPublic answer and checks
// that it hashes to the Name the TPM gave with it.
func checkedPublic(rsp *tpm2.ReadPublicResponse, h tpm2.TPMHandle) (*tpm2.TPMTPublic, error) {
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("decoding the public area at 0x%08x: %w", uint32(h), err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil || !bytes.Equal(name.Buffer, rsp.Name.Buffer) {
		return nil, fmt.Errorf("the public area at 0x%08x does not match its Name: %w", uint32(h), ErrBusTampered)
	}
	return pub, nil
}

// pinEK records the EK this Device salts its sessions to. ReadEK and
// EnsureEK pin what they return (replace): that is the EK the provisioning
// engine compares with its record before it uses a secret. Other reads
// (an operation that needs the EK's Name) must find the pinned one.
func (d *Device) pinEK(pub *tpm2.TPMTPublic, replace bool) error {
	if d.ek == nil || replace {
		d.ek = &saltKey{handle: EKHandle, public: *pub}
		d.ekSeen = true
		return nil
	}
	if !bytes.Equal(tpm2.Marshal(d.ek.public), tpm2.Marshal(*pub)) {
		return fmt.Errorf("the EK is not the one read before: %w", ErrBusTampered)
	}
	d.ekSeen = true
	return nil
}

// salt returns the key new sessions are salted to: the persistent EK,
// read once per operation (a clear evicts it) and checked against the
// pinned one (pinned now when none is); else, when no EK is persisted and
// none was ever pinned, the standard SRK (checked, not pinned); nil when
// the TPM has neither.
func (d *Device) salt(t transport.TPM) (*saltKey, error) {
	if d.ek != nil && d.ekSeen {
		return d.ek, nil
	}
	rsp, err := readPersistent(t, EKHandle)
	if err == nil {
		pub, err := checkedPublic(rsp, EKHandle)
		if err != nil {
			return nil, err
		}
		if err := checkEK(pub); err != nil {
			return nil, err
		}
		if err := d.pinEK(pub, false); err != nil {
			return nil, err
		}
		d.ekSeen = true
		return d.ek, nil
	}
	if !isNotFound(err) {
		return nil, err
	}
	if d.ek != nil {
		// An error answer carries no HMAC: an interposer can forge "no
		// EK" for free, and then the SRK's public area too. Once an EK is
		// pinned, no session is salted to anything else. A clear that
		// really evicted it is repaired by EnsureEK, which pins the new one.
		return nil, fmt.Errorf("the EK read before is not at %v any more (after a clear dpsd makes it again): %w", tpmhandle.EK, ErrBusTampered)
	}
	rsp, err = readPersistent(t, SRKHandle)
	if isNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pub, err := checkedPublic(rsp, SRKHandle)
	if err != nil {
		return nil, err
	}
	if !isStandardSRK(pub) {
		return nil, fmt.Errorf("no EK, and %v is not a standard SRK: %w", tpmhandle.SRK, ErrForeignObject)
	}
	return &saltKey{handle: SRKHandle, public: *pub}, nil
}

// encryption is which parameters a session encrypts: a TPM refuses a
// session asking for a direction the command has no sized first
// parameter in (TPM_RC_ATTRIBUTES), so each use says its own.
type encryption int

const (
	encryptNone encryption = iota
	encryptIn              // the command's first parameter
	encryptOut             // the response's first parameter
	encryptInOut
)

// auth returns the session that authorizes an entity whose auth value is
// auth, for one command. With protection on, a non-empty auth value or an
// encrypted parameter takes a one-use HMAC session salted to the EK; an
// empty auth with nothing to encrypt carries no secret and keeps the
// password session (no extra TPM command). The operation flushes the
// session if the command never completes (endOperation).
func (d *Device) auth(t transport.TPM, auth []byte, enc encryption) (tpm2.Session, error) {
	if d.protect == BusOff || (len(auth) == 0 && enc == encryptNone) {
		return tpm2.PasswordAuth(auth), nil
	}
	k, err := d.sessionSalt(t, enc)
	if err != nil {
		return nil, err
	}
	s := &authSession{auth: trimAuth(auth), handle: tpm2.TPMRHNull}
	if k != nil {
		salt := *k // the EK's handle as of now, as createPersistent moves it
		s.salt = &salt
	}
	s.attrs.Decrypt = enc == encryptIn || enc == encryptInOut
	s.attrs.Encrypt = enc == encryptOut || enc == encryptInOut
	d.oneUse = append(d.oneUse, s)
	return s, nil
}

// changeAuthSession authorizes TPM2_HierarchyChangeAuth on the owner
// hierarchy, whose auth is old, and encrypts the new auth. The session is
// bound to the owner hierarchy: the TPM computes its answer's HMAC after
// the change, with the new auth when the session is not bound (go-tpm
// would check it with the old one), without any when it is. go-tpm's
// session serves here: the old auth goes only into the session key, which
// go-tpm derives from all of it (authSession says what it gets wrong).
func (d *Device) changeAuthSession(t transport.TPM, old []byte, enc encryption) (tpm2.Session, error) {
	if d.protect == BusOff || (len(old) == 0 && enc == encryptNone) {
		return tpm2.PasswordAuth(old), nil
	}
	opts, err := d.sessionOptions(t, enc)
	if err != nil {
		return nil, err
	}
	opts = append(opts, tpm2.Bound(tpm2.TPMRHOwner, tpm2.HandleName(tpm2.TPMRHOwner), trimAuth(old)))
	s := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, opts...)
	d.oneUse = append(d.oneUse, s)
	return s, nil
}

func trimAuth(auth []byte) []byte { return bytes.TrimRight(auth, "\x00") }

// endOperation flushes the one-use sessions of an operation that the TPM
// still holds: those of a command whose answer never came (a cancelled
// wait); a completed command ends its one-use session in the TPM. The
// next operation reads the EK again before it salts a session to it.
func (d *Device) endOperation(t transport.TPM) error {
	d.ekSeen = false
	var err error
	for _, s := range d.oneUse {
		if h := s.Handle(); h != tpm2.TPMRHNull {
			flush(t, h, &err)
		}
	}
	d.oneUse = nil
	return err
}

// sessionSalt returns the key a session that encrypts enc is salted to.
// Without any key to salt to (no EK or SRK persisted yet, as when a TPM's
// owner set an endorsement auth but no EK), an auth value goes in an
// unsalted HMAC session: never in clear, but open to an offline guess if
// it is weak; nothing can be encrypted then.
func (d *Device) sessionSalt(t transport.TPM, enc encryption) (*saltKey, error) {
	k, err := d.salt(t)
	if err != nil {
		return nil, fmt.Errorf("finding the key to salt a session to: %w", err)
	}
	if k == nil && enc != encryptNone {
		return nil, errors.New("no EK or SRK to salt a session to: cannot encrypt a parameter")
	}
	return k, nil
}

// sessionOptions salts a go-tpm session to the salt key and sets its
// parameter encryption.
func (d *Device) sessionOptions(t transport.TPM, enc encryption) ([]tpm2.AuthOption, error) {
	k, err := d.sessionSalt(t, enc)
	if err != nil || k == nil {
		return nil, err
	}
	opts := []tpm2.AuthOption{tpm2.Salted(k.handle, k.public)}
	switch enc {
	case encryptIn:
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptIn))
	case encryptOut:
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptOut))
	case encryptInOut:
		opts = append(opts, tpm2.AESEncryption(128, tpm2.EncryptInOut))
	}
	return opts, nil
}

// PrepareTokens does ahead of the first token what it would otherwise pay
// for: starting the session tokens reuse (keptSession) and reading the
// TPM's input buffer size. It does nothing twice.
func (d *Device) PrepareTokens(ctx context.Context) error {
	return d.do(ctx, "preparing token signing", func(t transport.TPM) error {
		if _, err := d.inputBufferSize(t); err != nil {
			return err
		}
		_, err := d.keptSession(t)
		return err
	})
}

// keptSession is the salted, encrypting (both ways) session that
// authorizes TPM2_HMAC with an empty-auth key: started at the first
// token and kept (continueSession) until Close or a failure, so that a
// token costs no session setup (an RSA decryption of the salt, ~150 ms on
// a discrete TPM). Reuse is safe: each command rolls both nonces, so the
// TPM's answers cannot be replayed, and the session key never leaves the
// process or the TPM.
func (d *Device) keptSession(t transport.TPM) (tpm2.Session, error) {
	if d.protect == BusOff {
		return tpm2.PasswordAuth(nil), nil
	}
	if d.kept != nil {
		return d.kept, nil
	}
	opts, err := d.sessionOptions(t, encryptInOut)
	if err != nil {
		return nil, err
	}
	s, _, err := tpm2.HMACSession(t, tpm2.TPMAlgSHA256, 16, opts...)
	if err != nil {
		return nil, commandError(tpm2.TPMCCStartAuthSession, err)
	}
	d.kept = s
	return s, nil
}

// dropKept forgets the kept session after a command that used it failed
// (its nonces may no longer match the TPM's) and flushes it; the next
// use starts a new one. A session the TPM no longer has (a TPM reset)
// fails the flush, which is not an error.
func (d *Device) dropKept(t transport.TPM) {
	if d.kept == nil {
		return
	}
	h := d.kept.Handle()
	d.kept = nil
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(uncancellable(t))
}

// sessionGone reports a command refused because its session is not in the
// TPM (TPM_RC_REFERENCE_S0, or a session handle the TPM does not know):
// the command did not run and may be sent again with a new session.
func sessionGone(err error) bool {
	if errors.Is(err, tpm2.TPMRCReferenceS0) {
		return true
	}
	var f tpm2.TPMFmt1Error
	if !errors.As(err, &f) {
		return false
	}
	inSession, _ := f.Session()
	return inSession && (errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCValue))
}

// closeKept flushes the kept session when the Device closes. It cannot
// fail Close: a TPM that is gone has no session left either.
func (d *Device) closeKept() {
	if d.kept == nil {
		return
	}
	h := d.kept.Handle()
	d.kept = nil
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	t, end, err := d.conn.begin(ctx)
	if err == nil {
		_, err = run(&countingTPM{d: d, ctx: ctx, t: t}, tpm2.FlushContext{FlushHandle: h})
		end()
	}
	if err != nil {
		d.log.Warn("flushing the kept TPM session failed", "err", err)
	}
}

// authSession is the one-use HMAC session auth returns, written to TPM 2.0
// Part 1 (19.6, 21) in place of go-tpm's: go-tpm v0.9.8 keys its HMAC with
// the auth value cut at its first zero byte where the TPM drops only the
// trailing zeros (google/go-tpm#446), so an auth with a zero byte before
// its end fails with TPM_RC_BAD_AUTH; a random 32-byte value has one about
// one time in nine. It starts in the TPM just before its command
// (unbound, salted when salt is set, AES-128-CFB when it encrypts) and
// ends with it.
type authSession struct {
	auth      []byte   // trailing zeros dropped, as the TPM does
	salt      *saltKey // nil: unsalted
	attrs     tpm2.TPMASession
	handle    tpm2.TPMHandle // TPM_RH_NULL when not started in the TPM
	key       []byte         // the session key; empty when unsalted
	nonceOurs tpm2.TPM2BNonce
	nonceTPM  tpm2.TPM2BNonce
}

var _ tpm2.Session = (*authSession)(nil)

const (
	sessionNonceSize = 16
	cfbKeySize       = 16 // AES-128
)

// Init starts the session in the TPM, if it is not started.
func (s *authSession) Init(t transport.TPM) error {
	if s.handle != tpm2.TPMRHNull {
		return nil
	}
	s.nonceOurs = tpm2.TPM2BNonce{Buffer: make([]byte, sessionNonceSize)}
	if _, err := rand.Read(s.nonceOurs.Buffer); err != nil {
		return err
	}
	cmd := tpm2.StartAuthSession{
		TPMKey:      tpm2.TPMRHNull,
		Bind:        tpm2.TPMRHNull,
		NonceCaller: s.nonceOurs,
		SessionType: tpm2.TPMSEHMAC,
		Symmetric:   tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull},
		AuthHash:    tpm2.TPMAlgSHA256,
	}
	if s.attrs.Decrypt || s.attrs.Encrypt {
		cmd.Symmetric = tpm2.TPMTSymDef{
			Algorithm: tpm2.TPMAlgAES,
			KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(cfbKeySize*8)),
			Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
		}
	}
	var salt []byte
	if s.salt != nil {
		pub, err := tpm2.ImportEncapsulationKey(&s.salt.public)
		if err != nil {
			return fmt.Errorf("using the salt key: %w", err)
		}
		var encrypted []byte
		if salt, encrypted, err = tpm2.CreateEncryptedSalt(rand.Reader, pub); err != nil {
			return fmt.Errorf("encrypting the session salt: %w", err)
		}
		cmd.TPMKey = s.salt.handle
		cmd.EncryptedSalt = tpm2.TPM2BEncryptedSecret{Buffer: encrypted}
	}
	rsp, err := cmd.Execute(t)
	if err != nil {
		return err
	}
	s.handle = tpm2.TPMHandle(rsp.SessionHandle.HandleValue())
	s.nonceTPM = rsp.NonceTPM
	s.key = nil
	if salt != nil {
		s.key = tpm2.KDFa(crypto.SHA256, salt, "ATH", s.nonceTPM.Buffer, s.nonceOurs.Buffer, crypto.SHA256.Size()*8)
	}
	return nil
}

// CleanupFailure flushes the session after its command failed: the TPM
// ends a session only when its command succeeds.
func (s *authSession) CleanupFailure(t transport.TPM) error {
	if s.handle == tpm2.TPMRHNull {
		return nil
	}
	if _, err := (tpm2.FlushContext{FlushHandle: s.handle}).Execute(t); err != nil {
		return err
	}
	s.handle = tpm2.TPMRHNull
	return nil
}

func (s *authSession) NonceTPM() tpm2.TPM2BNonce { return s.nonceTPM }

func (s *authSession) NewNonceCaller() error {
	_, err := rand.Read(s.nonceOurs.Buffer)
	return err
}

// Authorize proves the auth value over the command (cpHash).
func (s *authSession) Authorize(cc tpm2.TPMCC, parms, addNonces []byte, names []tpm2.TPM2BName, _ int) (*tpm2.TPMSAuthCommand, error) {
	if s.handle == tpm2.TPMRHNull {
		return nil, errors.New("the session is not started")
	}
	cp := sha256.New()
	_ = binary.Write(cp, binary.BigEndian, cc)
	for _, n := range names {
		cp.Write(n.Buffer)
	}
	cp.Write(parms)
	return &tpm2.TPMSAuthCommand{
		Handle:        s.handle,
		Nonce:         s.nonceOurs,
		Attributes:    s.attrs,
		Authorization: tpm2.TPM2BData{Buffer: s.mac(cp.Sum(nil), s.nonceOurs.Buffer, s.nonceTPM.Buffer, addNonces, s.attrs)},
	}, nil
}

// Validate checks the TPM's proof over its answer (rpHash), which only the
// TPM that started the session can give.
func (s *authSession) Validate(rc tpm2.TPMRC, cc tpm2.TPMCC, parms []byte, _ []tpm2.TPM2BName, _ int, auth *tpm2.TPMSAuthResponse) error {
	s.nonceTPM = auth.Nonce
	if !auth.Attributes.ContinueSession {
		s.handle = tpm2.TPMRHNull
	}
	rp := sha256.New()
	_ = binary.Write(rp, binary.BigEndian, rc)
	_ = binary.Write(rp, binary.BigEndian, cc)
	rp.Write(parms)
	want := s.mac(rp.Sum(nil), s.nonceTPM.Buffer, s.nonceOurs.Buffer, nil, auth.Attributes)
	if !hmac.Equal(want, auth.Authorization.Buffer) {
		return fmt.Errorf("the answer's session HMAC is wrong: %w", ErrBusTampered)
	}
	return nil
}

// mac is the session HMAC, keyed with the session key and the auth value.
func (s *authSession) mac(pHash, nonceNewer, nonceOlder, addNonces []byte, attrs tpm2.TPMASession) []byte {
	m := hmac.New(sha256.New, append(bytes.Clone(s.key), s.auth...))
	m.Write(pHash)
	m.Write(nonceNewer)
	m.Write(nonceOlder)
	m.Write(addNonces)
	m.Write(tpm2.Marshal(attrs))
	return m.Sum(nil)
}

func (s *authSession) IsEncryption() bool { return s.attrs.Encrypt }
func (s *authSession) IsDecryption() bool { return s.attrs.Decrypt }

// Encrypt encrypts the command's first parameter, if the session does.
func (s *authSession) Encrypt(parameter []byte) error {
	if !s.attrs.Decrypt {
		return nil
	}
	return s.cfb(parameter, s.nonceOurs.Buffer, s.nonceTPM.Buffer, cipher.NewCFBEncrypter)
}

// Decrypt decrypts the answer's first parameter, if the session encrypts it.
func (s *authSession) Decrypt(parameter []byte) error {
	if !s.attrs.Encrypt {
		return nil
	}
	return s.cfb(parameter, s.nonceTPM.Buffer, s.nonceOurs.Buffer, cipher.NewCFBDecrypter)
}

// cfb runs AES-128-CFB over parameter in place, with the key and IV of the
// direction whose newer nonce is nonceNewer (TPM 2.0 Part 1, 21.3).
func (s *authSession) cfb(parameter, nonceNewer, nonceOlder []byte, mode func(cipher.Block, []byte) cipher.Stream) error {
	keyIV := tpm2.KDFa(crypto.SHA256, append(bytes.Clone(s.key), s.auth...), "CFB", nonceNewer, nonceOlder, (cfbKeySize+aes.BlockSize)*8)
	block, err := aes.NewCipher(keyIV[:cfbKeySize])
	if err != nil {
		return err
	}
	mode(block, keyIV[cfbKeySize:]).XORKeyStream(parameter, parameter)
	return nil
}

func (s *authSession) Handle() tpm2.TPMHandle { return s.handle }
