package tpmtest

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// Latency is the modelled time one TPM command takes on a discrete TPM: a
// duration drawn uniformly from [Min, Max] (Min == Max for a fixed cost).
type Latency struct {
	Min, Max time.Duration
}

// Latencies of a discrete TPM on SPI (Infineon SLB 9670/9672, Nuvoton
// NPCT75x, ST33), per command. docs/discrete-tpm.md says where each figure
// comes from; "est." marks an estimate rather than a measurement.
//
//	command                          modelled            basis
//	CreatePrimary/Create, RSA-2048   1.5 s .. 3.5 s      wolfTPM bench: RSA-2048 key gen 1.57 s (SLB 9672) .. 7.5 s (ST33TPHF); Infineon: up to minutes in the tail
//	CreatePrimary/Create, ECC P-256  130 ms .. 260 ms    wolfTPM bench: ECC P-256 key gen 136 ms (SLB 9672), 231 ms (SLB 9670)
//	Create, sealed data / HMAC key   40 ms               est.: RNG, AES wrap and HMAC of a small object
//	ActivateCredential               150 ms              wolfTPM bench: RSA-2048 OAEP decrypt 88 ms (SLB 9672), 167 ms (SLB 9670)
//	Import                           150 ms              as ActivateCredential: one RSA-2048 OAEP decrypt of the seed
//	Load                             25 ms               est.: unwrap (AES) and integrity check (HMAC) of the private area
//	HMAC                             15 ms               est.: SHA-256 at 85..137 KB/s (wolfTPM bench) plus command overhead
//	HMAC_Start, SequenceUpdate/Complete 10 ms            est.
//	Unseal                           15 ms               est.
//	Sign (ECDSA P-256)               35 ms .. 70 ms      wolfTPM bench: ECDSA P-256 sign 35.6 ms (SLB 9672), 68.9 ms (SLB 9670)
//	EvictControl, HierarchyChangeAuth, NV_Write, NV_DefineSpace, NV_UndefineSpace,
//	DictionaryAttackLockReset        40 ms               est.: one NV (flash) write
//	Clear                            200 ms              est.: erases the owner hierarchy's NV objects
//	StartAuthSession (unsalted)      20 ms               est.: nonce from the RNG
//	StartAuthSession (salted, RSA)   150 ms              as ActivateCredential: one RSA-2048 OAEP decrypt of the salt
//	PolicySecret, NV_Read, NV_ReadPublic 10 ms           est.
//	ReadPublic, GetCapability, GetRandom, FlushContext  5 ms  est.: below the PTP short duration (20 ms)
//	any other command                10 ms               est.
var (
	// RSAKeyGeneration is CreatePrimary, Create or CreateLoaded of an
	// RSA-2048 key: the prime search, which varies from run to run.
	RSAKeyGeneration = Latency{Min: 1500 * time.Millisecond, Max: 3500 * time.Millisecond}
	// ECCKeyGeneration is the same for an ECC P-256 key.
	ECCKeyGeneration = Latency{Min: 130 * time.Millisecond, Max: 260 * time.Millisecond}
	// SaltedSession is StartAuthSession with a tpmKey (an RSA key, the
	// EK): the TPM decrypts the salt with it.
	SaltedSession = fixed(150 * time.Millisecond)
	// OtherLatency is any command the table does not name.
	OtherLatency = Latency{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond}

	// DiscreteLatencies holds the commands whose cost does not depend on
	// a key type; Create, CreatePrimary and CreateLoaded cost a key
	// generation when their template is RSA or ECC.
	DiscreteLatencies = map[tpm2.TPMCC]Latency{
		tpm2.TPMCCActivateCredential: fixed(150 * time.Millisecond),
		tpm2.TPMCCImport:             fixed(150 * time.Millisecond),
		tpm2.TPMCCCreate:             fixed(40 * time.Millisecond),
		tpm2.TPMCCCreatePrimary:      fixed(40 * time.Millisecond),
		tpm2.TPMCCCreateLoaded:       fixed(40 * time.Millisecond),
		tpm2.TPMCCLoad:               fixed(25 * time.Millisecond),
		tpm2.TPMCCHMAC:               fixed(15 * time.Millisecond),
		tpm2.TPMCCHMACStart:          fixed(10 * time.Millisecond),
		tpm2.TPMCCSequenceUpdate:     fixed(10 * time.Millisecond),
		tpm2.TPMCCSequenceComplete:   fixed(10 * time.Millisecond),
		tpm2.TPMCCUnseal:             fixed(15 * time.Millisecond),
		// ECDSA P-256, the X.509 key dpsd makes; an RSA-2048 key (the
		// fallback) signs in 77..163 ms on the same parts.
		tpm2.TPMCCSign:                      {Min: 35 * time.Millisecond, Max: 70 * time.Millisecond},
		tpm2.TPMCCEvictControl:              fixed(40 * time.Millisecond),
		tpm2.TPMCCHierarchyChanegAuth:       fixed(40 * time.Millisecond),
		tpm2.TPMCCNVWrite:                   fixed(40 * time.Millisecond),
		tpm2.TPMCCNVDefineSpace:             fixed(40 * time.Millisecond),
		tpm2.TPMCCNVUndefineSpace:           fixed(40 * time.Millisecond),
		tpm2.TPMCCDictionaryAttackLockReset: fixed(40 * time.Millisecond),
		tpm2.TPMCCClear:                     fixed(200 * time.Millisecond),
		tpm2.TPMCCStartAuthSession:          fixed(20 * time.Millisecond),
		tpm2.TPMCCPolicySecret:              fixed(10 * time.Millisecond),
		tpm2.TPMCCNVRead:                    fixed(10 * time.Millisecond),
		tpm2.TPMCCNVReadPublic:              fixed(10 * time.Millisecond),
		tpm2.TPMCCReadPublic:                fixed(5 * time.Millisecond),
		tpm2.TPMCCGetCapability:             fixed(5 * time.Millisecond),
		tpm2.TPMCCGetRandom:                 fixed(5 * time.Millisecond),
		tpm2.TPMCCFlushContext:              fixed(5 * time.Millisecond),
	}
)

func fixed(d time.Duration) Latency { return Latency{Min: d, Max: d} }

// LatencyTPM is a transport that makes every command take at least its
// modelled latency on a discrete TPM: it sleeps for what the wrapped TPM
// (a simulator, fast) did not already spend. It also counts the RSA key
// generations it saw, the costliest thing a discrete TPM does.
type LatencyTPM struct {
	next  transport.TPM
	sleep func(time.Duration)

	mu         sync.Mutex
	rng        *rand.Rand
	modelled   time.Duration
	rsaKeyGens int
}

// WithLatency wraps t with the discrete-TPM model. seed makes the draws of
// the varying latencies (key generation) repeatable.
func WithLatency(t transport.TPM, seed uint64) *LatencyTPM {
	return &LatencyTPM{next: t, sleep: time.Sleep, rng: rand.New(rand.NewPCG(seed, seed))}
}

// OpenWithLatency opens the swtpm that StartSwtpm started as a Device whose
// every command takes at least its modelled discrete-TPM latency: a test
// sees the daemon's code on a slow TPM. Each call is a new boot of the same
// TPM with its own counters; the Device connects per command, so tpm2-tools
// may use the swtpm in between.
func OpenWithLatency(info SwtpmInfo, seed uint64, log *slog.Logger) (*tpmdev.Device, *LatencyTPM, error) {
	t, err := linuxudstpm.Open(info.Socket)
	if err != nil {
		return nil, nil, fmt.Errorf("opening swtpm at %s: %w", info.Socket, err)
	}
	l := WithLatency(t, seed)
	return tpmdev.OpenTransport(l, "discrete-model:"+info.Socket, log), l, nil
}

// Send implements transport.TPM.
func (l *LatencyTPM) Send(cmd []byte) ([]byte, error) {
	lat, rsaKeyGen := ModelLatency(cmd)
	l.mu.Lock()
	d := lat.Min
	if lat.Max > lat.Min {
		d += time.Duration(l.rng.Int64N(int64(lat.Max - lat.Min)))
	}
	l.modelled += d
	if rsaKeyGen {
		l.rsaKeyGens++
	}
	l.mu.Unlock()

	start := time.Now()
	rsp, err := l.next.Send(cmd)
	if rest := d - time.Since(start); rest > 0 {
		l.sleep(rest)
	}
	return rsp, err
}

// Close closes the wrapped TPM when it can be closed, so that a
// tpmdev.Device made of a LatencyTPM releases the simulator.
func (l *LatencyTPM) Close() error {
	if c, ok := l.next.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Modelled is the summed modelled latency of every command sent so far:
// what those commands would have taken on the modelled TPM, whatever the
// load of the machine running the test.
func (l *LatencyTPM) Modelled() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.modelled
}

// RSAKeyGenerations is the number of commands sent that generate an RSA
// key (CreatePrimary, Create or CreateLoaded with an RSA template).
func (l *LatencyTPM) RSAKeyGenerations() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rsaKeyGens
}

// ModelLatency returns the modelled latency of one marshalled command and
// whether the command generates an RSA key.
func ModelLatency(cmd []byte) (Latency, bool) {
	if len(cmd) < 10 {
		return OtherLatency, false
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	switch cc {
	case tpm2.TPMCCCreatePrimary, tpm2.TPMCCCreate, tpm2.TPMCCCreateLoaded:
		switch alg, _ := templateType(cmd); alg {
		case tpm2.TPMAlgRSA:
			return RSAKeyGeneration, true
		case tpm2.TPMAlgECC:
			return ECCKeyGeneration, false
		}
	case tpm2.TPMCCStartAuthSession:
		// Part 3, 11.1: tpmKey is the first handle.
		if len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != tpm2.TPMRHNull {
			return SaltedSession, false
		}
	}
	if lat, ok := DiscreteLatencies[cc]; ok {
		return lat, false
	}
	return OtherLatency, false
}

// templateType reads the type of the object a CreatePrimary, Create or
// CreateLoaded command asks for (TPM 2.0 Part 3, 12.1, 12.9, 24.1: one
// handle, the authorization area, inSensitive, then inPublic whose
// TPMT_PUBLIC starts with the type).
func templateType(cmd []byte) (tpm2.TPMAlgID, bool) {
	off := 10 + 4 // header, then the parent or hierarchy handle
	if len(cmd) < off+4 {
		return 0, false
	}
	if tpm2.TPMST(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTSessions {
		off += 4 + int(binary.BigEndian.Uint32(cmd[off:off+4]))
	}
	if len(cmd) < off+2 {
		return 0, false
	}
	off += 2 + int(binary.BigEndian.Uint16(cmd[off:off+2])) // inSensitive
	off += 2                                                // inPublic's size
	if len(cmd) < off+2 {
		return 0, false
	}
	return tpm2.TPMAlgID(binary.BigEndian.Uint16(cmd[off : off+2])), true
}
