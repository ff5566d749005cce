// Package softtpm is a software stand-in for the TPM's side of an
// authenticationKey blob (docs/dps-tpm-protocol.md §6, §7.2): its EK and
// SRK are RSA keys held in memory, so it can do what TPM2_ActivateCredential
// and TPM2_Import do and recover the HMAC key and the trailer a blob
// carries. Tests use it to check blobs independently of a real TPM and of
// the code that builds them: it parses the blob and derives every key
// itself (its KDFa is its own, not go-tpm's).
//
// It is for tests only, never for production: it holds private keys in
// memory, and cmd/dpsd must not import it (daemon/deps_test.go checks).
package softtpm

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2"
)

// Device is a TPM whose EK and SRK private keys are known.
type Device struct {
	// EK and SRK are the private halves of the endorsement and storage
	// root keys.
	EK, SRK *rsa.PrivateKey
	// EKPublic and SRKPublic are the keys' TPM2B_PUBLIC, as the TPM
	// reports them and a device sends them to DPS. Import derives the SRK's
	// Name from SRKPublic, so a test can alter it to play a TPM whose SRK
	// differs from the one a blob was made for.
	EKPublic, SRKPublic []byte
}

// New returns a device with the given EK and SRK under the TCG templates
// (§2.4, §2.5).
func New(ek, srk *rsa.PrivateKey) *Device {
	return &Device{
		EK:        ek,
		SRK:       srk,
		EKPublic:  Public(tpm2.RSAEKTemplate, &ek.PublicKey),
		SRKPublic: Public(tpm2.RSASRKTemplate, &srk.PublicKey),
	}
}

// Public marshals the TPM2B_PUBLIC a TPM reports for an RSA key created
// from template: the template with k's modulus as its unique value.
func Public(template tpm2.TPMTPublic, k *rsa.PublicKey) []byte {
	template.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA,
		&tpm2.TPM2BPublicKeyRSA{Buffer: k.N.FillBytes(make([]byte, k.Size()))})
	return tpm2.Marshal(tpm2.New2B(template))
}

var keys struct {
	mu   sync.Mutex
	list []*rsa.PrivateKey
}

// Key returns the i-th of a set of RSA-2048 keys generated once per test
// binary, because generating them is slow. It panics if generation fails.
func Key(i int) *rsa.PrivateKey {
	keys.mu.Lock()
	defer keys.mu.Unlock()
	for len(keys.list) <= i {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(fmt.Sprintf("generating test key %d: %v", len(keys.list), err))
		}
		keys.list = append(keys.list, k)
	}
	return keys.list[i]
}

// name is a TPM object's Name: nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC).
func name(tpmtPublic []byte) []byte {
	sum := sha256.Sum256(tpmtPublic)
	return append([]byte{0x00, 0x0B}, sum[:]...)
}
