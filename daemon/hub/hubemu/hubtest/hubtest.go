// Package hubtest starts an emulated IoT Hub on loopback for tests: a
// fresh CA, a server certificate for the hub names, localhost and
// 127.0.0.1, and a hubemu.Server serving MQTT over TLS.
package hubtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/hub/hubemu"
	"github.com/dpsd-project/dpsd/daemon/sas"
)

// Hub is a running emulated hub.
type Hub struct {
	*hubemu.Server
	// Addr is the HOST:PORT to dial (the config's endpoint override).
	Addr string
	// RootCAs holds the CA that signed the hub's certificate.
	RootCAs *x509.CertPool
}

// Start serves an emulated hub for the test's duration. opts.Hubs names
// the hubs (they go into the certificate); opts.TLS is filled in, and asks
// devices for a client certificate when opts.ClientCAs is set.
func Start(t testing.TB, opts hubemu.Options) *Hub {
	t.Helper()
	cert, pool := certificate(t, append([]string{"localhost"}, opts.Hubs...))
	opts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if opts.ClientCAs != nil {
		// As dpsemu's hub: ask for a certificate, let hubemu judge it.
		opts.TLS.ClientAuth = tls.RequestClientCert
	}
	srv := hubemu.New(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening on loopback: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-served; err != nil {
			t.Errorf("hub Serve returned %v after Close, want nil", err)
		}
	})
	return &Hub{Server: srv, Addr: ln.Addr().String(), RootCAs: pool}
}

// Key returns a fresh 32-byte device key, the size DPS delivers.
func Key(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// Signer signs in software with key, as the TPM does with the identity key.
func Signer(key []byte) sas.Signer {
	return func(_ context.Context, data []byte) ([]byte, error) {
		m := hmac.New(sha256.New, key)
		m.Write(data)
		return m.Sum(nil), nil
	}
}

// certificate makes a CA and a server certificate it signs for names and
// 127.0.0.1.
func certificate(t testing.TB, names []string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hubtest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}
