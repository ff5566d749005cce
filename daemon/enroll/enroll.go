// Package enroll computes what an operator enters in a DPS individual
// enrollment and which EK template the config asks for. The daemon and the
// command line (when the daemon is not running) both answer enroll-info
// with it, so that the two answers cannot drift apart.
package enroll

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"fmt"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/dps"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// Template is the EK template that tpm.ek_template names.
func Template(t config.EKTemplate) tpmdev.EKTemplate {
	if t == config.EKTemplateAzureSDK {
		return tpmdev.EKTemplateAzureSDK
	}
	return tpmdev.EKTemplateTCG
}

// CertReader reads the EK certificate from the TPM's NV index;
// *tpmdev.Device implements it. A TPM without one returns nil, nil.
type CertReader interface {
	EKCertificate(ctx context.Context) ([]byte, error)
}

// Info is the enrollment of the device whose EK public (the marshalled
// TPM2B_PUBLIC) is ekPublic. registrationID is the configured one
// (provisioning.registration_id); empty, it is the one DPS derives from
// exactly those bytes. DPS does not need the certificate,
// so one that cannot be read (an NV index that wants an owner auth dpsd
// does not send) leaves it out and is returned as certErr, for the caller
// to warn about; info is complete either way.
func Info(ctx context.Context, registrationID string, ekPublic []byte, tpm CertReader) (info apitype.EnrollInfo, certErr error) {
	info = apitype.EnrollInfo{
		RegistrationID: registrationID,
		EndorsementKey: base64.StdEncoding.EncodeToString(ekPublic),
	}
	if info.RegistrationID == "" {
		info.RegistrationID = dps.RegistrationID(ekPublic)
	}
	cert, err := tpm.EKCertificate(ctx)
	if err != nil {
		return info, fmt.Errorf("reading the EK certificate: %w", err)
	}
	if cert != nil {
		info.EKCertificate = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}))
	}
	return info, nil
}
