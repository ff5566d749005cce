package tpmdev_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// signingAlgorithms are the two kinds of key CreateSigningKey makes.
var signingAlgorithms = []tpmdev.KeyAlgorithm{tpmdev.KeyECCP256, tpmdev.KeyRSA2048}

// newSigner creates a signing key of alg under the SRK and its Signer.
func newSigner(t testing.TB, dev *tpmdev.Device, alg tpmdev.KeyAlgorithm) (*tpmdev.SigningKey, *tpmdev.Signer) {
	t.Helper()
	k, err := dev.CreateSigningKey(context.Background(), alg)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dev.Signer(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, s
}

// verify checks sig over digest with Go's crypto, as x509 and tls do.
func verify(pub crypto.PublicKey, digest, sig []byte, opts crypto.SignerOpts) error {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			return errors.New("ECDSA signature does not verify")
		}
		return nil
	case *rsa.PublicKey:
		if pss, ok := opts.(*rsa.PSSOptions); ok {
			return rsa.VerifyPSS(pub, crypto.SHA256, digest, sig, pss)
		}
		return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest, sig)
	}
	return errors.New("unexpected key type")
}

func TestSigningKey(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, clear func()) {
		ctx := context.Background()
		if _, err := dev.CreateSigningKey(ctx, tpmdev.KeyAuto); !errors.Is(err, tpmdev.ErrNotFound) {
			t.Errorf("creating a signing key without an SRK: %v, want ErrNotFound", err)
		}
		provision(t, dev)
		auto, err := dev.CreateSigningKey(ctx, tpmdev.KeyAuto)
		if err != nil {
			t.Fatal(err)
		}
		if pub, err := auto.PublicKey(); err != nil {
			t.Fatal(err)
		} else if ec, ok := pub.(*ecdsa.PublicKey); !ok || ec.Curve != elliptic.P256() {
			t.Errorf("KeyAuto on a TPM with P-256 made %T, want a P-256 key", pub)
		}

		for _, alg := range signingAlgorithms {
			t.Run(alg.String(), func(t *testing.T) {
				k, s := newSigner(t, dev, alg)
				area, err := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public[2:])
				if err != nil {
					t.Fatal(err)
				}
				a := area.ObjectAttributes
				if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.UserWithAuth || !a.SignEncrypt || a.Decrypt || a.Restricted {
					t.Errorf("attributes %+v, want fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|sign", a)
				}

				// The stored form round-trips and gives the same public key.
				blob, err := k.MarshalBinary()
				if err != nil {
					t.Fatal(err)
				}
				var k2 tpmdev.SigningKey
				if err := k2.UnmarshalBinary(blob); err != nil {
					t.Fatal(err)
				}
				s2, err := dev.Signer(&k2)
				if err != nil {
					t.Fatal(err)
				}
				if !s2.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
					t.Error("the unmarshalled key has another public key")
				}

				digest := sha256.Sum256([]byte("dpsd"))
				for _, opts := range []crypto.SignerOpts{crypto.SHA256, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}} {
					if _, pss := opts.(*rsa.PSSOptions); pss && alg != tpmdev.KeyRSA2048 {
						continue
					}
					sig, err := s2.Sign(rand.Reader, digest[:], opts)
					if err != nil {
						t.Fatal(err)
					}
					if err := verify(s.Public(), digest[:], sig, opts); err != nil {
						t.Errorf("%T: %v", opts, err)
					}
				}
				if _, err := s.Sign(rand.Reader, make([]byte, 48), crypto.SHA384); err == nil {
					t.Error("signed a SHA-384 digest; want a refusal")
				}
			})
		}

		// An HMAC identity key is not a signing key.
		var bad tpmdev.SigningKey
		hmacKey, err := dev.Seal(ctx, []byte("not a signing key"))
		if err != nil {
			t.Fatal(err)
		}
		if err := bad.UnmarshalBinary(hmacKey[len("dpsd-sealed-v1\n"):]); err == nil {
			t.Error("UnmarshalBinary accepted a sealed data object")
		}

		clear()
		provision(t, dev)
		s, err := dev.Signer(auto)
		if err != nil {
			t.Fatal(err)
		}
		digest := sha256.Sum256([]byte("after clear"))
		if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); !errors.Is(err, tpmdev.ErrKeyInvalidated) {
			t.Errorf("signing after a clear: %v, want ErrKeyInvalidated", err)
		}
	})
}

// TestSigningKeyCSR builds a CSR with the TPM signer, as a device asking
// DPS for a certificate does, and has Go and OpenSSL verify it.
func TestSigningKeyCSR(t *testing.T) {
	// Without openssl the Go verification still runs.
	openssl, _ := exec.LookPath("openssl")
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
		provision(t, dev)
		for _, alg := range signingAlgorithms {
			t.Run(alg.String(), func(t *testing.T) {
				_, s := newSigner(t, dev, alg)
				sigAlg := x509.ECDSAWithSHA256
				if alg == tpmdev.KeyRSA2048 {
					sigAlg = x509.SHA256WithRSA
				}
				der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
					Subject:            pkix.Name{CommonName: "regid-1"},
					SignatureAlgorithm: sigAlg,
				}, s)
				if err != nil {
					t.Fatal(err)
				}
				csr, err := x509.ParseCertificateRequest(der)
				if err != nil {
					t.Fatal(err)
				}
				if err := csr.CheckSignature(); err != nil {
					t.Errorf("Go: %v", err)
				}
				if openssl == "" {
					testenv.Missing(t, "openssl is not installed")
				}
				path := filepath.Join(t.TempDir(), "req.der")
				if err := os.WriteFile(path, der, 0o600); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command(openssl, "req", "-verify", "-noout", "-inform", "DER", "-in", path).CombinedOutput(); err != nil {
					t.Errorf("openssl req -verify: %v\n%s", err, out)
				}
			})
		}
	})
}

// tlsFixture is a server that requires a client certificate from its CA,
// and that CA, which certifies the TPM key.
type tlsFixture struct {
	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	server tls.Certificate
}

func newTLSFixture(t testing.TB) *tlsFixture {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsFixture{caKey: key, ca: ca}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvDER := f.issue(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, &srvKey.PublicKey)
	f.server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	return f
}

// issue signs tmpl for pub with the fixture's CA.
func (f *tlsFixture) issue(t testing.TB, tmpl *x509.Certificate, pub crypto.PublicKey) []byte {
	t.Helper()
	now := time.Now()
	tmpl.SerialNumber = big.NewInt(now.UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca, pub, f.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// clientCert is the TPM key's TLS credential, pinned to the SHA-256 schemes
// the signer takes (as x509cred.TLSCertificate does).
func (f *tlsFixture) clientCert(t testing.TB, s *tpmdev.Signer) tls.Certificate {
	t.Helper()
	der := f.issue(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "device"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, s.Public())
	schemes := []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}
	if _, ok := s.Public().(*rsa.PublicKey); ok {
		schemes = []tls.SignatureScheme{tls.PSSWithSHA256, tls.PKCS1WithSHA256}
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: s, SupportedSignatureAlgorithms: schemes}
}

// handshake runs one TLS handshake over loopback at the given version and
// returns the client certificate the server verified.
func (f *tlsFixture) handshake(t testing.TB, client tls.Certificate, version uint16) (*x509.Certificate, error) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(f.ca)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cert *x509.Certificate
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		srv := tls.Server(conn, &tls.Config{
			Certificates: []tls.Certificate{f.server},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   version, MaxVersion: version,
		})
		if err := srv.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{cert: srv.ConnectionState().PeerCertificates[0]}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{
		ServerName:   "localhost",
		RootCAs:      pool,
		Certificates: []tls.Certificate{client},
		MinVersion:   version, MaxVersion: version,
	})
	if err == nil {
		// TLS 1.3 clients finish before the server has checked them.
		conn.Handshake()
		defer conn.Close()
	}
	r := <-done
	return r.cert, errors.Join(err, r.err)
}

// TestSigningKeyTLS authenticates a TLS 1.2 and a TLS 1.3 client with the
// TPM key, against a server that requires a client certificate.
func TestSigningKeyTLS(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
		provision(t, dev)
		f := newTLSFixture(t)
		for _, alg := range signingAlgorithms {
			_, s := newSigner(t, dev, alg)
			cert := f.clientCert(t, s)
			for _, v := range []struct {
				name    string
				version uint16
			}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
				t.Run(alg.String()+"/"+v.name, func(t *testing.T) {
					before := dev.Stats().ByCommand["Sign"].Count
					got, err := f.handshake(t, cert, v.version)
					if err != nil {
						t.Fatal(err)
					}
					if n := dev.Stats().ByCommand["Sign"].Count - before; n != 1 {
						t.Errorf("%d TPM2_Sign in the handshake, want 1", n)
					}
					if !got.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(s.Public()) {
						t.Error("the server saw another key")
					}
				})
			}
		}
	})
}

// TestPersistSigningKey persists a signing key at an owner handle for
// other programs, replaces it with a newer one, and refuses to evict an
// object of another kind.
func TestPersistSigningKey(t *testing.T) {
	forEachTPM(t, func(t *testing.T, dev *tpmdev.Device, _ func()) {
		ctx := context.Background()
		ek, srk := provision(t, dev)
		const handle tpmhandle.Handle = 0x81000200
		k1, _ := newSigner(t, dev, tpmdev.KeyECCP256)
		k2, _ := newSigner(t, dev, tpmdev.KeyECCP256)
		for i, k := range []*tpmdev.SigningKey{k1, k1, k2} {
			if err := dev.PersistSigningKey(ctx, k, handle, nil); err != nil {
				t.Fatalf("persisting key %d: %v", i, err)
			}
		}
		area, err := tpm2.Unmarshal[tpm2.TPMTPublic](k2.Public[2:])
		if err != nil {
			t.Fatal(err)
		}
		want, err := tpm2.ObjectName(area)
		if err != nil {
			t.Fatal(err)
		}
		if got := nameAt(t, dev, tpm2.TPMHandle(handle)); string(got) != string(want.Buffer) {
			t.Error("the handle does not hold the newer key")
		}
		// The identity key (HMAC) is of another kind, both ways.
		wk := importKey(t, dev, ek, srk, randomBytes(t, 32))
		if err := dev.Persist(ctx, wk, handle, nil); !errors.Is(err, tpmdev.ErrForeignObject) {
			t.Errorf("persisting an HMAC key over a signing key: %v, want ErrForeignObject", err)
		}
		k3, _ := newSigner(t, dev, tpmdev.KeyRSA2048)
		if err := dev.PersistSigningKey(ctx, k3, handle, nil); !errors.Is(err, tpmdev.ErrForeignObject) {
			t.Errorf("persisting an RSA key over an ECC key: %v, want ErrForeignObject", err)
		}
	})
}

// BenchmarkSigningKeySign is one signature by a TPM key on swtpm
// (TPM2_Load, TPM2_Sign, TPM2_FlushContext), for each key algorithm.
//
//	go test -run '^$' -bench "SigningKeySign|TLSHandshake" ./tpmdev
func BenchmarkSigningKeySign(b *testing.B) {
	dev, _ := tpmtest.Swtpm(b)
	if _, err := dev.EnsureSRK(context.Background(), nil); err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("bench"))
	for _, alg := range signingAlgorithms {
		b.Run(alg.String(), func(b *testing.B) {
			_, s := newSigner(b, dev, alg)
			c := costs{}
			for b.Loop() {
				c.measure(dev, "sign", func() {
					if _, err := s.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
						b.Fatal(err)
					}
				})
			}
			c.report(b, map[string]string{"sign/Sign": "ms/TPM2_Sign", "sign/Load": "ms/TPM2_Load"})
		})
	}
}

// BenchmarkTLSHandshake is a handshake over loopback with the client
// authenticated by a P-256 key in swtpm, in swtpm behind the discrete-TPM
// latency model, and by a software key for the difference the TPM makes,
// at TLS 1.2 and 1.3.
func BenchmarkTLSHandshake(b *testing.B) {
	dev, _ := tpmtest.Swtpm(b)
	if _, err := dev.EnsureSRK(context.Background(), nil); err != nil {
		b.Fatal(err)
	}
	info := tpmtest.StartSwtpm(b, "")
	discrete, _, err := tpmtest.OpenWithLatency(info, 1, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { discrete.Close() })
	if _, err := discrete.EnsureSRK(context.Background(), nil); err != nil {
		b.Fatal(err)
	}
	f := newTLSFixture(b)
	_, tpmSigner := newSigner(b, dev, tpmdev.KeyECCP256)
	_, discreteSigner := newSigner(b, discrete, tpmdev.KeyECCP256)
	soft, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		signer crypto.Signer
	}{{"tpm", tpmSigner}, {"discrete-model", discreteSigner}, {"software", soft}} {
		der := f.issue(b, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "device"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}, c.signer.Public())
		cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: c.signer,
			SupportedSignatureAlgorithms: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256}}
		for _, v := range []struct {
			name    string
			version uint16
		}{{"TLS1.2", tls.VersionTLS12}, {"TLS1.3", tls.VersionTLS13}} {
			b.Run(c.name+"/"+v.name, func(b *testing.B) {
				for b.Loop() {
					if _, err := f.handshake(b, cert, v.version); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// noECC answers TPM2_GetCapability(TPM_CAP_ECC_CURVES) with an empty list,
// as a TPM without ECC does, and passes every other command through.
type noECC struct{ transport.TPM }

func (n noECC) Send(cmd []byte) ([]byte, error) {
	// Header (tag, size, TPM_CC_GetCapability), then capability.
	if len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[6:]) == uint32(tpm2.TPMCCGetCapability) &&
		binary.BigEndian.Uint32(cmd[10:]) == uint32(tpm2.TPMCapECCCurves) {
		rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
		rsp = binary.BigEndian.AppendUint32(rsp, 19)
		rsp = binary.BigEndian.AppendUint32(rsp, 0) // TPM_RC_SUCCESS
		rsp = append(rsp, 0)                        // moreData: NO
		rsp = binary.BigEndian.AppendUint32(rsp, uint32(tpm2.TPMCapECCCurves))
		return binary.BigEndian.AppendUint32(rsp, 0), nil // no curves
	}
	return n.TPM.Send(cmd)
}

// TestSigningKeyFallsBackToRSA: KeyAuto makes an RSA-2048 key on a TPM that
// lists no ECC curve.
func TestSigningKeyFallsBackToRSA(t *testing.T) {
	dev, _ := tpmtest.Swtpm(t)
	provision(t, dev)
	dev.WrapTransport(func(t transport.TPM) transport.TPM { return noECC{t} })
	k, err := dev.CreateSigningKey(context.Background(), tpmdev.KeyAuto)
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := k.PublicKey(); err != nil {
		t.Fatal(err)
	} else if _, ok := pub.(*rsa.PublicKey); !ok {
		t.Errorf("KeyAuto without ECC made %T, want an RSA key", pub)
	}
	tpmtest.AssertNoTransientHandles(t, dev)
}

// TestPersistedSigningKeyWithTPM2Tools: another program on the device signs
// with the persisted key by its handle through the standard TSS stack
// (tpm2_sign, what tpm2-openssl's handle: URIs reach), and the signature
// verifies with the key's public part.
func TestPersistedSigningKeyWithTPM2Tools(t *testing.T) {
	bin := testenv.LookPath(t, "tpm2_sign")
	dev, info := tpmtest.Swtpm(t)
	provision(t, dev)
	const handle tpmhandle.Handle = 0x81000200
	k, s := newSigner(t, dev, tpmdev.KeyECCP256)
	if err := dev.PersistSigningKey(context.Background(), k, handle, nil); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	msg, sig := filepath.Join(dir, "msg"), filepath.Join(dir, "sig")
	data := []byte("signed by another program")
	if err := os.WriteFile(msg, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-T", info.TCTI(), "-c", handle.String(), "-g", "sha256", "-f", "plain", "-o", sig, msg)
	cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tpm2_sign: %v: %s", err, out)
	}
	der, err := os.ReadFile(sig)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256(data)
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], der) {
		t.Error("the signature tpm2_sign made with the persisted key does not verify")
	}
}
