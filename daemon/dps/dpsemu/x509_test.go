package dpsemu_test

import (
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/x509cred"
	"github.com/dpsd-project/dpsd/daemon/x509cred/x509credtest"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/authblob/softtpm"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// x509APIVersion is the DPS api-version that carries csr.
const x509APIVersion = "api-version=2026-11-01"

// newX509Env is an emulator speaking 2026-11-01 with a credential policy
// named "short" whose certificates live lifetime.
func newX509Env(t *testing.T, lifetime string) *env {
	t.Helper()
	e := newEnv(t, nil)
	e.query = x509APIVersion
	if r := e.admin(http.MethodPut, "/credentialPolicies/short", map[string]any{"certificateLifetime": lifetime}); r.status != http.StatusOK {
		t.Fatalf("PUT policy: %d %s", r.status, r.body)
	}
	return e
}

// csrFor is a base64 DER CSR for key with the given common name.
func csrFor(t testing.TB, key crypto.Signer, cn string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(der)
}

// registerWithCSR runs challenge and the authenticated PUT with csr in the
// body (left out when empty); it returns the PUT's answer and the SAS.
func (e *env) registerWithCSR(regID string, d *softtpm.Device, csr string) (response, string) {
	e.t.Helper()
	key := e.challenge(regID, d)
	auth := dpsToken(key, regID)
	var body map[string]any
	if err := json.Unmarshal(registrationBody(regID, d, ""), &body); err != nil {
		e.t.Fatal(err)
	}
	if csr != "" {
		body["csr"] = csr
	}
	b, _ := json.Marshal(body)
	return e.do(http.MethodPut, e.registerURL(regID), auth, b), auth
}

// issued registers with csr and returns the final operation.
func (e *env) issued(regID string, d *softtpm.Device, csr string) wireOperation {
	e.t.Helper()
	r, auth := e.registerWithCSR(regID, d, csr)
	if r.status != http.StatusAccepted {
		e.t.Fatalf("register: %d %s", r.status, r.body)
	}
	r, _ = e.pollUntilDone(regID, decodeOperation(e.t, r).OperationID, auth)
	op := decodeOperation(e.t, r)
	if r.status != http.StatusOK || op.Status != "assigned" {
		e.t.Fatalf("final poll: %d %s", r.status, r.body)
	}
	return op
}

// decodeChain base64-decodes an issued chain.
func decodeChain(t testing.TB, chain []string) [][]byte {
	t.Helper()
	out := make([][]byte, len(chain))
	for i, c := range chain {
		der, err := base64.StdEncoding.DecodeString(c)
		if err != nil {
			t.Fatalf("chain element %d: %v", i, err)
		}
		out[i] = der
	}
	return out
}

// deviceRoot fetches GET /certificates/device-root.
func (e *env) deviceRoot() *x509.Certificate {
	e.t.Helper()
	r := e.admin(http.MethodGet, "/certificates/device-root", nil)
	b, _ := pem.Decode(r.body)
	if r.status != http.StatusOK || b == nil || b.Type != "CERTIFICATE" {
		e.t.Fatalf("device root: %d %s", r.status, r.body)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil || !c.IsCA {
		e.t.Fatalf("device root: %v (CA %v)", err, c != nil && c.IsCA)
	}
	return c
}

// TestIssueCertificate: an enrollment with a credential policy gets the
// chain for a good CSR, leaf first, valid for the policy's lifetime, and
// verifying to the root the admin API serves.
func TestIssueCertificate(t *testing.T) {
	e := newX509Env(t, "90s")
	d := newSoftDevice(t, 0)
	e.enroll("x509-1", d, map[string]any{"credentialPolicyName": "short"})
	key := x509credtest.NewKey(t)
	before := time.Now().Truncate(time.Second)
	op := e.issued("x509-1", d, csrFor(t, key, "x509-1"))
	after := time.Now()

	chain := decodeChain(t, op.RegistrationState.IssuedCertificateChain)
	if len(chain) != 3 {
		t.Fatalf("chain of %d certificates, want leaf, intermediate, root", len(chain))
	}
	leaf, err := x509cred.VerifyChain(chain, "x509-1", &key.PublicKey, after)
	if err != nil {
		t.Fatal(err)
	}
	if root := e.deviceRoot(); string(root.Raw) != string(chain[2]) {
		t.Error("the chain's root is not GET /certificates/device-root")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.emu.DeviceRootCAs(), Intermediates: pool(t, chain[1]),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("leaf against DeviceRootCAs: %v", err)
	}
	if lo, hi := before.Add(90*time.Second), after.Add(90*time.Second); leaf.NotAfter.Before(lo) || leaf.NotAfter.After(hi) {
		t.Errorf("notAfter %v, want the policy's 90s from issuance (%v..%v)", leaf.NotAfter, lo, hi)
	}
	if op.RegistrationState.TPM == nil || op.RegistrationState.TPM.AuthenticationKey == "" {
		t.Error("no blob #2 beside the certificate: an enrollment gives both")
	}
	if n := e.emu.Stats()["certificates_issued"]; n != 1 {
		t.Errorf("certificates_issued = %d, want 1", n)
	}
}

func pool(t testing.TB, ders ...[]byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		p.AddCert(c)
	}
	return p
}

// TestCSRRefused: a CSR DPS cannot issue for is a 400 with a JSON error
// body at the authenticated PUT; without a credential policy the csr is
// not even looked at.
func TestCSRRefused(t *testing.T) {
	key := x509credtest.NewKey(t)
	good := csrFor(t, key, "x509-2")
	raw, _ := base64.StdEncoding.DecodeString(good)
	badSig := append([]byte(nil), raw...)
	badSig[len(badSig)-5] ^= 0xff // inside the signature
	pemCSR := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: raw}))

	tests := []struct {
		name   string
		policy bool
		csr    string
		want   int
	}{
		{"bad signature", true, base64.StdEncoding.EncodeToString(badSig), http.StatusBadRequest},
		{"wrong CN", true, csrFor(t, key, "someone-else"), http.StatusBadRequest},
		{"PEM, not DER", true, pemCSR, http.StatusBadRequest},
		{"not base64", true, "%%%", http.StatusBadRequest},
		{"no policy: ignored", false, "%%%", http.StatusAccepted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newX509Env(t, "1h")
			d := newSoftDevice(t, 0)
			extra := map[string]any{}
			if tt.policy {
				extra["credentialPolicyName"] = "short"
			}
			e.enroll("x509-2", d, extra)
			r, auth := e.registerWithCSR("x509-2", d, tt.csr)
			if r.status != tt.want {
				t.Fatalf("register: %d %s, want %d", r.status, r.body, tt.want)
			}
			if tt.want != http.StatusAccepted {
				var body struct {
					ErrorCode int    `json:"errorCode"`
					Message   string `json:"message"`
				}
				if err := json.Unmarshal(r.body, &body); err != nil || body.ErrorCode/1000 != 400 || body.Message == "" {
					t.Errorf("error body %s: want errorCode 400xxx and a message", r.body)
				}
				return
			}
			r, _ = e.pollUntilDone("x509-2", decodeOperation(t, r).OperationID, auth)
			if op := decodeOperation(t, r); op.Status != "assigned" || op.RegistrationState.IssuedCertificateChain != nil {
				t.Errorf("final poll %s: want assigned without a chain", r.body)
			}
		})
	}
}

// TestStatusLookup: the registration status lookup answers the state
// without a chain, and refuses a csr.
func TestStatusLookup(t *testing.T) {
	e := newX509Env(t, "1h")
	d := newSoftDevice(t, 0)
	e.enroll("x509-3", d, map[string]any{"credentialPolicyName": "short"})
	e.issued("x509-3", d, csrFor(t, x509credtest.NewKey(t), "x509-3"))
	key := e.challenge("x509-3", d)
	auth := dpsToken(key, "x509-3")
	u := "https://" + e.addrs.DPS + "/" + testScope + "/registrations/x509-3?" + x509APIVersion

	r := e.do(http.MethodPost, u, auth, []byte(`{"registrationId":"x509-3"}`))
	var state map[string]any
	if r.status != http.StatusOK || json.Unmarshal(r.body, &state) != nil || state["status"] != "assigned" {
		t.Fatalf("lookup: %d %s", r.status, r.body)
	}
	if _, has := state["issuedCertificateChain"]; has {
		t.Errorf("lookup carries a chain: %s", r.body)
	}
	body, _ := json.Marshal(map[string]string{"registrationId": "x509-3", "csr": csrFor(t, x509credtest.NewKey(t), "x509-3")})
	if r := e.do(http.MethodPost, u, auth, body); r.status != http.StatusBadRequest {
		t.Errorf("lookup with csr: %d %s, want 400", r.status, r.body)
	}
	if r := e.do(http.MethodPost, u, "", []byte(`{}`)); r.status != http.StatusUnauthorized {
		t.Errorf("lookup without SAS: %d, want 401", r.status)
	}
}

// TestCredentialPolicyAdmin: policies are validated, named by enrollments
// only when they exist, and kept while an enrollment names them.
func TestCredentialPolicyAdmin(t *testing.T) {
	e := newEnv(t, nil)
	d := newSoftDevice(t, 0)
	for _, bad := range []map[string]any{
		{"certificateLifetime": "0.5s"},
		{"certificateLifetime": "forever"},
		{"certificateLifetime": "1h", "name": "other"},
		{"certificateLifetime": "1h", "unknown": 1},
	} {
		if r := e.admin(http.MethodPut, "/credentialPolicies/p1", bad); r.status != http.StatusBadRequest {
			t.Errorf("PUT %v: %d %s, want 400", bad, r.status, r.body)
		}
	}
	body := enrollment("x509-4", d)
	body["credentialPolicyName"] = "p1"
	if r := e.admin(http.MethodPut, "/enrollments/x509-4", body); r.status != http.StatusBadRequest {
		t.Errorf("enrollment naming a missing policy: %d, want 400", r.status)
	}
	if r := e.admin(http.MethodPut, "/credentialPolicies/p1", map[string]any{"certificateLifetime": "2s"}); r.status != http.StatusOK {
		t.Fatalf("PUT policy: %d %s", r.status, r.body)
	}
	if got := adminJSON(t, e.admin(http.MethodGet, "/credentialPolicies/p1", nil)); got["name"] != "p1" || got["certificateLifetime"] != "2s" {
		t.Errorf("GET policy: %v", got)
	}
	e.enroll("x509-4", d, map[string]any{"credentialPolicyName": "p1"})
	if got := adminJSON(t, e.admin(http.MethodGet, "/enrollments/x509-4", nil)); got["credentialPolicyName"] != "p1" {
		t.Errorf("enrollment: %v", got)
	}
	if r := e.admin(http.MethodDelete, "/credentialPolicies/p1", nil); r.status != http.StatusConflict {
		t.Errorf("DELETE a policy in use: %d, want 409", r.status)
	}
	e.admin(http.MethodDelete, "/enrollments/x509-4", nil)
	if r := e.admin(http.MethodDelete, "/credentialPolicies/p1", nil); r.status != http.StatusNoContent {
		t.Errorf("DELETE: %d %s", r.status, r.body)
	}
	if r := e.admin(http.MethodGet, "/credentialPolicies/p1", nil); r.status != http.StatusNotFound {
		t.Errorf("GET after DELETE: %d", r.status)
	}
}

// TestHubClientCertificate: the hub accepts a device by the certificate
// DPS issued it (empty password), refuses a certificate from another CA
// or for another device with CONNACK 5, and still takes SAS tokens.
func TestHubClientCertificate(t *testing.T) {
	e := newX509Env(t, "1h")
	d := newSoftDevice(t, 0)
	// The device ID differs from the registration ID: the certificate
	// names the latter.
	e.enroll("x509-5", d, map[string]any{"credentialPolicyName": "short", "deviceId": "device-5"})
	key := x509credtest.NewKey(t)
	op := e.issued("x509-5", d, csrFor(t, key, "x509-5"))
	hub, deviceID := op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID
	chain := decodeChain(t, op.RegistrationState.IssuedCertificateChain)
	cred, err := x509cred.TLSCertificate(chain, key)
	if err != nil {
		t.Fatal(err)
	}

	// A second device of the same emulator, with its own certificate.
	d1 := newSoftDevice(t, 1)
	e.enroll("x509-6", d1, map[string]any{"credentialPolicyName": "short"})
	key6 := x509credtest.NewKey(t)
	op6 := e.issued("x509-6", d1, csrFor(t, key6, "x509-6"))
	other, err := x509cred.TLSCertificate(decodeChain(t, op6.RegistrationState.IssuedCertificateChain), key6)
	if err != nil {
		t.Fatal(err)
	}
	foreign := x509credtest.NewCA(t, "foreign", nil).ClientCertificate(t, "x509-5")

	tests := []struct {
		name     string
		cert     *tls.Certificate
		password string
		want     byte
	}{
		{"issued certificate", &cred, "", connAccepted},
		{"another device's certificate", &other, "", connNotAuthorized},
		{"foreign CA", &foreign, "", connNotAuthorized},
		{"no certificate, no password", nil, "", connNotAuthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: hub, RootCAs: e.roots}
			if tt.cert != nil {
				cfg.Certificates = []tls.Certificate{*tt.cert}
			}
			c, code, err := mqttConnectTLS(e.addrs.Hub, hub, deviceID, tt.password, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if c != nil {
				c.Close()
			}
			if code != tt.want {
				t.Errorf("CONNACK %d, want %d", code, tt.want)
			}
		})
	}
	t.Run("SAS still works", func(t *testing.T) {
		a := e.provision("x509-7-sas", enrollSoft(e, "x509-7-sas"), "")
		if code := e.connect(a.hub, a.device, a.key); code != connAccepted {
			t.Errorf("CONNACK %d for a SAS device", code)
		}
	})
}

// enrollSoft enrolls a fresh software device without a policy.
func enrollSoft(e *env, regID string) *softtpm.Device {
	d := softtpm.New(softtpm.Key(2), softtpm.Key(3))
	e.enroll(regID, d, nil)
	return d
}

// TestTPMCertificate is issue 14 end to end on real parts, without the
// daemon: a signing key created in the TPM, a CSR it signs, the real DPS
// client registering with TPM attestation and the csr at api-version
// 2026-11-01, the issued chain checked, and an MQTT CONNECT to the hub
// authenticated by the chain and one TPM signature.
func TestTPMCertificate(t *testing.T) {
	for _, tc := range tpmtest.Backends() {
		t.Run(tc.Name, func(t *testing.T) {
			ctx := t.Context()
			e := newX509Env(t, "1h")
			dev, _ := tc.Open(t)
			d := newTPMDevice(t, dev)
			e.admin(http.MethodPut, "/enrollments/"+d.regID, map[string]any{
				"registrationId":       d.regID,
				"attestation":          map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": base64.StdEncoding.EncodeToString(d.ek)}},
				"credentialPolicyName": "short",
			})

			key, err := dev.CreateSigningKey(ctx, tpmdev.KeyAuto)
			if err != nil {
				t.Fatal(err)
			}
			signer, err := dev.Signer(key)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := x509cred.CreateCSR(signer, d.regID)
			if err != nil {
				t.Fatal(err)
			}

			base, err := dps.NewClient(dps.ClientConfig{Endpoint: "https://" + e.addrs.DPS, IDScope: testScope,
				APIVersion: dps.APIVersionCertificates, RootCAs: e.roots})
			if err != nil {
				t.Fatal(err)
			}
			c := base.WithCSR(csr)
			ch, err := c.Challenge(ctx, d.regID, d.ek, d.srk, nil)
			if err != nil {
				t.Fatal(err)
			}
			d.importBlob(base64.StdEncoding.EncodeToString(ch.AuthenticationKey))
			auth := d.token(testScope+"/registrations/"+d.regID, ch.KeyName)
			op, err := c.Register(ctx, d.regID, d.ek, d.srk, nil, auth)
			for n := 0; err == nil && op.Status == dps.StatusAssigning && n < 100; n++ {
				op, err = c.Poll(ctx, d.regID, op.ID, auth)
			}
			if err != nil || op.Status != dps.StatusAssigned {
				t.Fatalf("registration: %+v, %v", op, err)
			}

			chain := op.State.IssuedCertificateChain
			if _, err := x509cred.VerifyChain(chain, d.regID, signer.Public(), time.Now()); err != nil {
				t.Fatal(err)
			}
			cred, err := x509cred.TLSCertificate(chain, signer)
			if err != nil {
				t.Fatal(err)
			}
			before := dev.Stats().ByCommand["Sign"].Count
			conn, code, err := mqttConnectTLS(e.addrs.Hub, op.State.AssignedHub, op.State.DeviceID, "",
				&tls.Config{ServerName: op.State.AssignedHub, RootCAs: e.roots, Certificates: []tls.Certificate{cred}})
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
			if code != connAccepted {
				t.Errorf("CONNACK %d for the TPM-backed certificate", code)
			}
			if n := dev.Stats().ByCommand["Sign"].Count - before; n != 1 {
				t.Errorf("%d TPM2_Sign for the TLS handshake, want 1", n)
			}

			// The daemon's hub client (paho) with the same credential.
			if _, err := hub.Check(ctx, hub.Config{Hub: op.State.AssignedHub, DeviceID: op.State.DeviceID,
				Endpoint: e.addrs.Hub, RootCAs: e.roots, Certificate: &cred}, map[string]any{"auth": "x509"}); err != nil {
				t.Errorf("hub.Check with the TPM-backed certificate: %v", err)
			}
			tpmtest.AssertNoTransientHandles(t, dev)
		})
	}
}

// TestRestartKeepsIssuer: after a restart the device root is the same, the
// policies are back, and a certificate issued before still gets the device
// in, under its registration ID although the device ID differs.
func TestRestartKeepsIssuer(t *testing.T) {
	first := newX509Env(t, "1h")
	d := newSoftDevice(t, 0)
	first.enroll("x509-8", d, map[string]any{"credentialPolicyName": "short", "deviceId": "device-8"})
	key := x509credtest.NewKey(t)
	op := first.issued("x509-8", d, csrFor(t, key, "x509-8"))
	rootBefore := first.deviceRoot()
	if err := first.emu.Close(); err != nil {
		t.Fatal(err)
	}

	second := startEnv(t, first.opts)
	if !second.deviceRoot().Equal(rootBefore) {
		t.Error("the device root changed across a restart")
	}
	if r := second.admin(http.MethodGet, "/credentialPolicies/short", nil); r.status != http.StatusOK {
		t.Errorf("policy after restart: %d", r.status)
	}
	cred, err := x509cred.TLSCertificate(decodeChain(t, op.RegistrationState.IssuedCertificateChain), key)
	if err != nil {
		t.Fatal(err)
	}
	hub := op.RegistrationState.AssignedHub
	c, code, err := mqttConnectTLS(second.addrs.Hub, hub, "device-8", "",
		&tls.Config{ServerName: hub, RootCAs: second.roots, Certificates: []tls.Certificate{cred}})
	if err != nil {
		t.Fatal(err)
	}
	if c != nil {
		c.Close()
	}
	if code != connAccepted {
		t.Errorf("CONNACK %d with a pre-restart certificate", code)
	}
}

// TestWrongKeyChainFault: with wrongKeyChain the chain verifies to the
// device root but certifies another key than the CSR's.
func TestWrongKeyChainFault(t *testing.T) {
	e := newX509Env(t, "90s")
	d := newSoftDevice(t, 0)
	e.enroll("x509-3", d, map[string]any{"credentialPolicyName": "short"})
	e.emu.SetFaults(dpsemu.Faults{DPS: dpsemu.DPSFaults{WrongKeyChain: true}})
	key := x509credtest.NewKey(t)
	op := e.issued("x509-3", d, csrFor(t, key, "x509-3"))
	chain := decodeChain(t, op.RegistrationState.IssuedCertificateChain)
	if _, err := x509cred.VerifyChain(chain, "x509-3", &key.PublicKey, time.Now()); !errors.Is(err, x509cred.ErrWrongKey) {
		t.Errorf("VerifyChain = %v, want ErrWrongKey", err)
	}
}
