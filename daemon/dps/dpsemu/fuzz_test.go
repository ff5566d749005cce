package dpsemu

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// FuzzDPSHandler sends arbitrary paths, headers and bodies to the DPS
// handler: it must never panic, and every answer must be one of the
// statuses the emulator documents, with a JSON body.
func FuzzDPSHandler(f *testing.F) {
	emu, err := Start(Options{Dir: f.TempDir(), IDScope: "scope", Hubs: []string{"hub.example"}})
	if err != nil {
		f.Fatal(err)
	}
	defer emu.Close()
	// Publics with the EK and SRK templates' fixed parts (§2.4, §2.5) and a
	// made-up odd modulus: well-formed, but keys no TPM holds.
	modulus := append([]byte{0xc1}, bytes.Repeat([]byte{0x5a}, 254)...)
	modulus = append(modulus, 0x01)
	ekHead, _ := base64.StdEncoding.DecodeString("AToAAQALAAMAsgAgg3GXZ0SEs/gakMyNRqXXJP1S124GUgtk8qHaGzMUaaoABgCAAEMAEAgAAAAAAAEA")
	srkHead, _ := base64.StdEncoding.DecodeString("ARoAAQALAAMEcgAAAAYAgABDABAIAAAAAAABAA==")
	ek := base64.StdEncoding.EncodeToString(append(ekHead, modulus...))
	srk := base64.StdEncoding.EncodeToString(append(srkHead, modulus...))
	enr, _ := json.Marshal(map[string]any{"attestation": map[string]any{"type": "tpm", "tpm": map[string]any{"endorsementKey": ek}}})
	rec := httptest.NewRecorder()
	emu.svc.adminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodPut, "/enrollments/dev", bytes.NewReader(enr)))
	if rec.Code != http.StatusOK {
		f.Fatalf("enrolling: %d %s", rec.Code, rec.Body)
	}

	f.Add("PUT", "/scope/registrations/dev/register", "", "application/json", `{"registrationId":"dev","tpm":{"endorsementKey":"`+ek+`","storageRootKey":"`+srk+`"}}`)
	f.Add("PUT", "/scope/registrations/dev/register", "SharedAccessSignature sr=scope%2Fregistrations%2Fdev&sig=AAAA&se=1&skn=registration", "application/json", `{}`)
	f.Add("GET", "/scope/registrations/dev/operations/4.00.x", "SharedAccessSignature sr=a&sig=b&se=c", "", "")
	f.Add("PUT", "/scope/registrations/d%2Fev/register", "", "application/json; charset=utf-8", `{"payload":[1,{"a":null}]}`)
	f.Add("DELETE", "/%zz/registrations", "", "text/plain", "\x00")
	evenSRK := base64.StdEncoding.EncodeToString(append(srkHead, append(modulus[:255:255], 0x02)...))
	f.Add("PUT", "/scope/registrations/dev/register", "", "application/json", `{"tpm":{"endorsementKey":"`+ek+`","storageRootKey":"`+evenSRK+`"}}`)

	// No 500: the registry is writable here, and nothing a client sends
	// may make the emulator fail.
	statuses := []int{200, 202, 400, 401, 404, 405, 413, 415}
	f.Fuzz(func(t *testing.T, method, path, auth, ctype, body string) {
		req, err := http.NewRequest(method, "https://dps.example"+path, bytes.NewReader([]byte(body)))
		if err != nil {
			return // not a request a client could send
		}
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", ctype)
		rec := httptest.NewRecorder()
		emu.svc.ServeHTTP(rec, req)
		if !slices.Contains(statuses, rec.Code) {
			t.Fatalf("%s %s: status %d", method, path, rec.Code)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %s: %d with a body that is not JSON: %q", method, path, rec.Code, rec.Body)
		}
	})
}
