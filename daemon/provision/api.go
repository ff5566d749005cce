package provision

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/enroll"
	"github.com/dpsd-project/dpsd/daemon/hub"
	"github.com/dpsd-project/dpsd/daemon/sas"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// Token returns a hub SAS token for apps on the device, signed in the TPM
// with the hub identity: the key itself never leaves the TPM. ttl must
// already be bounded by the caller's policy.
func (e *Engine) Token(ctx context.Context, ttl time.Duration) (apitype.Token, error) {
	if e.x509Mode() {
		return apitype.Token{}, ErrCertificateAuth
	}
	id := e.currentIdentity()
	if id == nil {
		return apitype.Token{}, e.noIdentity("")
	}
	if !e.clock.trusted() {
		return apitype.Token{}, errClockUnset
	}
	expiry := e.now().Add(ttl).Truncate(time.Second)
	tok, err := sas.New(ctx, sas.DeviceResource(id.hub, id.deviceID), expiry, "", e.signer(e.device(), id.key))
	if errors.Is(err, tpmdev.ErrKeyInvalidated) {
		// The signer woke the engine, which registers again.
		return apitype.Token{}, e.noIdentity(keyNoLongerLoads)
	}
	if err != nil {
		return apitype.Token{}, fmt.Errorf("signing a hub token in the TPM: %w", err)
	}
	return apitype.Token{SAS: tok, Hub: id.hub, DeviceID: id.deviceID, ExpiresAt: expiry.UTC()}, nil
}

// noIdentity is Token's error without a working identity: ErrNotProvisioned
// for a device never provisioned, and for one whose key was invalidated
// (why, or the reason recorded by dropIdentity) words that say so.
func (e *Engine) noIdentity(why string) error {
	if why == "" {
		why = e.ids.lostBecause()
	}
	if why == "" {
		return ErrNotProvisioned
	}
	return identityLost{why: why, state: e.status.get().State}
}

// identityLost is ErrNotProvisioned for a provisioned device whose hub key
// stopped working.
type identityLost struct {
	why   string
	state apitype.Phase
}

func (l identityLost) Error() string {
	now := ""
	if l.state != apitype.PhaseProvisioned && l.state != "" {
		now = "now " + string(l.state) + "; "
	}
	return fmt.Sprintf("the device's hub key no longer works: %s; dpsd registers the device again by itself (%ssee dpsd status)", l.why, now)
}

func (identityLost) Is(target error) bool { return target == ErrNotProvisioned }

// EnrollInfo returns what an operator enters in a DPS individual
// enrollment for this device.
func (e *Engine) EnrollInfo(ctx context.Context) (apitype.EnrollInfo, error) {
	dev, ek := e.tpm.get()
	if ek == nil || dev == nil {
		return apitype.EnrollInfo{}, fmt.Errorf("the TPM is not ready yet (state %s)", e.Status().State)
	}
	info, err := enroll.Info(ctx, e.cfg.Provisioning.RegistrationID, ek, dev)
	if err != nil {
		// The operator still gets what the enrollment needs.
		e.log.Warn("enroll-info without the EK certificate", "err", err)
	}
	return info, nil
}

// TPM is the engine's TPM, nil until it is open. Its methods are safe to
// call concurrently with the engine's.
func (e *Engine) TPM() *tpmdev.Device {
	d, _ := e.device().(device)
	return d.Device
}

// CheckIdentity is a technician's `dpsd check` of the hub identity: it
// proves that the key still loads in the TPM and, when the config wants
// the credential verified and no session is kept, that the hub accepts it
// (the one time besides a new identity or a rejection that dpsd connects
// for a check). Its error wraps fs.ErrNotExist when there is no identity
// yet and hub.ErrRejected when the hub refuses it (a re-registration
// follows); an unreachable hub is left to the network checks.
func (e *Engine) CheckIdentity(ctx context.Context) error {
	id := e.currentIdentity()
	if id == nil {
		return fmt.Errorf("no hub identity yet: %w", fs.ErrNotExist)
	}
	if err := e.device().LoadCheck(ctx, id.key); err != nil {
		return err
	}
	if id.cert != nil {
		if err := e.device().LoadCheck(ctx, (*tpmdev.WrappedKey)(id.cert.key)); err != nil {
			return err
		}
	}
	if !e.hubCheckOnRequest() {
		return nil
	}
	if err := e.proveWithHub(ctx, id); errors.Is(err, hub.ErrRejected) {
		e.Reprovision(apitype.ReasonHubRejected)
		return fmt.Errorf("the hub refuses the device (a new registration follows): %w", err)
	}
	return nil
}

// stuckTPM is how long one TPM command may take before the daemon counts
// as hung: well beyond the slowest key generation the kernel allows (300 s).
const stuckTPM = 10 * time.Minute

// Healthy reports whether the engine is making progress: false once a TPM
// command has waited longer than any TPM takes, so that systemd's watchdog
// restarts the daemon.
func (e *Engine) Healthy() bool {
	dev := e.device()
	return dev == nil || dev.Busy() < stuckTPM
}
