package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// recordingProxy stands between the device and the emulator's DPS and
// keeps every request it forwards, headers and body, as DPS would see it.
type recordingProxy struct {
	addr   string
	caFile string // the proxy's CA and the emulator's, for [network] ca_file
	mu     sync.Mutex
	dumps  [][]byte
}

// startRecordingProxy serves TLS on loopback with a CA of its own and
// forwards to emu's DPS, trusting the emulator's CA.
func startRecordingProxy(t *testing.T, emu *emulator) *recordingProxy {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "recording proxy CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}

	emuCA, err := os.ReadFile(filepath.Join(emu.dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(emuCA)
	target, _ := url.Parse("https://" + emu.dps)
	forward := httputil.NewSingleHostReverseProxy(target)
	forward.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}

	p := &recordingProxy{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dump, err := httputil.DumpRequest(r, true)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		p.mu.Lock()
		p.dumps = append(p.dumps, dump)
		p.mu.Unlock()
		forward.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: leafKey}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	p.addr = srv.Listener.Addr().String()

	p.caFile = filepath.Join(t.TempDir(), "ca-bundle.pem")
	bundle := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), emuCA...)
	if err := os.WriteFile(p.caFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// dropIn points a device's DPS endpoint at the proxy.
func (p *recordingProxy) dropIn() string {
	return fmt.Sprintf("[provisioning]\nglobal_endpoint = \"https://%s\"\n\n[network]\nca_file = %q\n", p.addr, p.caFile)
}

// requests is every request recorded so far, one after the other.
func (p *recordingProxy) requests() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Join(p.dumps, []byte("\n"))
}
