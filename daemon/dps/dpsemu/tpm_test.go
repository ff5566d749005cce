package dpsemu_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/sas"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/authblob"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// tpmDevice is the device side of §7 on a real TPM, through tpmdev.
type tpmDevice struct {
	t        *testing.T
	dev      *tpmdev.Device
	ek, srk  []byte
	regID    string
	identity *tpmdev.WrappedKey // the key from the last imported blob
}

func newTPMDevice(t *testing.T, dev *tpmdev.Device) *tpmDevice {
	ctx := context.Background()
	ek, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
	if err != nil {
		t.Fatalf("EK: %v", err)
	}
	d := &tpmDevice{t: t, dev: dev, ek: ek.Public, regID: dps.RegistrationID(ek.Public)}
	d.ensureKeys()
	return d
}

// ensureKeys (re)creates the EK and SRK, as dpsd does after a clear: the
// EK comes back the same (the endorsement seed survives), the SRK is new.
func (d *tpmDevice) ensureKeys() {
	ctx := context.Background()
	ek, err := d.dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil)
	if err != nil {
		d.t.Fatalf("EK: %v", err)
	}
	if !bytes.Equal(ek.Public, d.ek) {
		d.t.Fatal("the EK changed")
	}
	srk, err := d.dev.EnsureSRK(ctx, nil)
	if err != nil {
		d.t.Fatalf("SRK: %v", err)
	}
	d.srk = srk.Public
}

func (d *tpmDevice) body() []byte {
	b, _ := json.Marshal(map[string]any{
		"registrationId": d.regID,
		"tpm": map[string]string{
			"endorsementKey": base64.StdEncoding.EncodeToString(d.ek),
			"storageRootKey": base64.StdEncoding.EncodeToString(d.srk),
		},
	})
	return b
}

// importBlob activates and imports a base64 blob in the TPM.
func (d *tpmDevice) importBlob(b64 string) {
	d.t.Helper()
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		d.t.Fatalf("blob: %v", err)
	}
	blob, err := authblob.Parse(raw)
	if err != nil {
		d.t.Fatalf("parsing blob: %v", err)
	}
	if d.identity, err = d.dev.ActivateAndImport(context.Background(), blob, nil); err != nil {
		d.t.Fatalf("ActivateAndImport: %v", err)
	}
}

// token is a SAS for resource signed in the TPM with the current identity.
func (d *tpmDevice) token(resource, keyName string) string {
	d.t.Helper()
	k := d.identity
	tok, err := sas.New(context.Background(), resource, time.Now().Add(time.Hour), keyName,
		func(ctx context.Context, data []byte) ([]byte, error) { return d.dev.HMAC(ctx, k, data) })
	if err != nil {
		d.t.Fatalf("signing SAS in the TPM: %v", err)
	}
	return tok
}

// provision runs §1 against the emulator: challenge, import, SAS signed in
// the TPM, register, poll, import of blob #2.
func (d *tpmDevice) provision(e *env) (hub, deviceID string) {
	d.t.Helper()
	r := e.do(http.MethodPut, e.registerURL(d.regID), "", d.body())
	var ch struct {
		AuthenticationKey string `json:"authenticationKey"`
	}
	if r.status != http.StatusUnauthorized || json.Unmarshal(r.body, &ch) != nil {
		d.t.Fatalf("challenge: %d %s", r.status, r.body)
	}
	d.importBlob(ch.AuthenticationKey)
	auth := d.token(testScope+"/registrations/"+d.regID, "registration")

	r = e.do(http.MethodPut, e.registerURL(d.regID), auth, d.body())
	if r.status != http.StatusAccepted {
		d.t.Fatalf("register: %d %s", r.status, r.body)
	}
	r, _ = e.pollUntilDone(d.regID, decodeOperation(d.t, r).OperationID, auth)
	op := decodeOperation(d.t, r)
	if r.status != http.StatusOK || op.Status != "assigned" {
		d.t.Fatalf("final poll: %d %s", r.status, r.body)
	}
	d.importBlob(op.RegistrationState.TPM.AuthenticationKey)
	return op.RegistrationState.AssignedHub, op.RegistrationState.DeviceID
}

// connect sends CONNECT with password and returns the CONNACK code.
func connectWith(t *testing.T, e *env, hub, deviceID, password string) byte {
	t.Helper()
	c, code, err := mqttConnect(e.addrs.Hub, hub, deviceID, password, e.roots)
	if err != nil {
		t.Fatalf("MQTT: %v", err)
	}
	if c != nil {
		c.Close()
	}
	return code
}

// TestTPMExchange runs the full exchange with a real TPM (the reference
// simulator and swtpm): the hub accepts a CONNECT signed in the TPM with
// the blob #2 key and refuses a tampered token; after the owner clears the
// TPM, the device registers again under its unchanged EK and keeps its
// device ID.
func TestTPMExchange(t *testing.T) {
	for _, tc := range tpmtest.Backends() {
		t.Run(tc.Name, func(t *testing.T) {
			e := newEnv(t, nil)
			dev, clear := tc.Open(t)
			d := newTPMDevice(t, dev)
			e.admin(http.MethodPut, "/enrollments/"+d.regID, map[string]any{
				"registrationId": d.regID,
				"attestation":    map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": base64.StdEncoding.EncodeToString(d.ek)}},
			})

			hub, deviceID := d.provision(e)
			if deviceID != d.regID {
				t.Errorf("device ID %q, want the registration ID", deviceID)
			}
			good := d.token(hub+"/devices/"+deviceID, "")
			if code := connectWith(t, e, hub, deviceID, good); code != connAccepted {
				t.Errorf("CONNECT with a TPM-signed token: code %d", code)
			}
			if code := connectWith(t, e, hub, deviceID, tamper(good)); code != connNotAuthorized {
				t.Errorf("CONNECT with a tampered token: code %d", code)
			}

			// The owner clears the TPM: new SRK, the hub key is gone with it.
			clear()
			d.ensureKeys()
			hub2, deviceID2 := d.provision(e)
			if hub2 != hub || deviceID2 != deviceID {
				t.Errorf("after a clear: %s on %s, want %s on %s", deviceID2, hub2, deviceID, hub)
			}
			if code := connectWith(t, e, hub, deviceID, good); code != connNotAuthorized {
				t.Errorf("CONNECT with the pre-clear key: code %d", code)
			}
			if code := connectWith(t, e, hub, deviceID, d.token(hub+"/devices/"+deviceID, "")); code != connAccepted {
				t.Errorf("CONNECT after provisioning again: code %d", code)
			}
			tpmtest.AssertNoTransientHandles(t, d.dev)
		})
	}
}

// tamper changes one character of the token's signature.
func tamper(tok string) string {
	i := strings.Index(tok, "sig=") + len("sig=")
	c := byte('A')
	if tok[i] == 'A' {
		c = 'B'
	}
	return tok[:i] + string(c) + tok[i+1:]
}
