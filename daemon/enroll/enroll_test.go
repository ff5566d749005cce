package enroll_test

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/daemon/enroll"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// certs is a TPM's EK certificate NV index.
type certs struct {
	der []byte
	err error
}

func (c certs) EKCertificate(context.Context) ([]byte, error) { return c.der, c.err }

func TestInfo(t *testing.T) {
	t.Parallel()
	ek := []byte("an EK's TPM2B_PUBLIC")
	derived := dps.RegistrationID(ek)
	for _, tc := range []struct {
		name     string
		regID    string
		tpm      certs
		wantID   string
		wantCert string // a substring of the PEM; "" for none
		certErr  bool
	}{
		{name: "derived ID, no certificate", tpm: certs{}, wantID: derived},
		{name: "configured ID wins", regID: "factory-0042", wantID: "factory-0042"},
		{name: "certificate as PEM", tpm: certs{der: []byte{1, 2, 3}}, wantID: derived, wantCert: "-----BEGIN CERTIFICATE-----\nAQID\n"},
		{name: "unreadable certificate is left out", tpm: certs{err: errors.New("NV needs owner auth")}, wantID: derived, certErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			info, err := enroll.Info(context.Background(), tc.regID, ek, tc.tpm)
			if (err != nil) != tc.certErr {
				t.Errorf("certErr = %v, want one: %v", err, tc.certErr)
			}
			if info.RegistrationID != tc.wantID {
				t.Errorf("registration ID %q, want %q", info.RegistrationID, tc.wantID)
			}
			if info.EndorsementKey != base64.StdEncoding.EncodeToString(ek) {
				t.Errorf("endorsement key %q", info.EndorsementKey)
			}
			if (tc.wantCert == "") != (info.EKCertificate == "") || !strings.Contains(info.EKCertificate, tc.wantCert) {
				t.Errorf("certificate %q, want %q", info.EKCertificate, tc.wantCert)
			}
		})
	}
}

func TestTemplate(t *testing.T) {
	t.Parallel()
	for cfg, want := range map[config.EKTemplate]tpmdev.EKTemplate{
		config.EKTemplateTCG:      tpmdev.EKTemplateTCG,
		config.EKTemplateAzureSDK: tpmdev.EKTemplateAzureSDK,
		"":                        tpmdev.EKTemplateTCG,
	} {
		if got := enroll.Template(cfg); got != want {
			t.Errorf("Template(%q) = %v, want %v", cfg, got, want)
		}
	}
}
