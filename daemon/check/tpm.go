package check

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmhandle"
)

// TPM device nodes, the resource manager first (what "auto" prefers).
const (
	devTPMRM = "/dev/tpmrm0"
	devTPM   = "/dev/tpm0"
)

// tssGroup is the group dpsd.service adds (SupplementaryGroups=tss); on
// Debian it owns the TPM device nodes.
const tssGroup = "tss"

// devicePath is the device node the config names, or "" for a software TPM.
func (r *run) devicePath() string {
	if r.env.TPM != nil {
		if p := r.env.TPM.Path(); strings.HasPrefix(p, "/dev/") {
			return p
		}
		return ""
	}
	spec := r.cfg.TPM.Device
	switch {
	case spec == "auto":
		if _, err := os.Stat(devTPMRM); err == nil {
			return devTPMRM
		}
		return devTPM
	case strings.HasPrefix(spec, "/"):
		return spec
	}
	return ""
}

func (r *run) tpmDevice(ctx context.Context) apitype.Check {
	path := r.devicePath()
	if path == "" {
		spec := r.cfg.TPM.Device
		if r.env.TPM != nil {
			spec = r.env.TPM.Path()
		}
		if r.env.TPMErr != nil {
			return fail(NameTPMDevice, fmt.Sprintf("opening %s: %v", spec, r.env.TPMErr), startSoftwareTPM(spec))
		}
		// A socket TPM is dialled per command: opening it proved nothing.
		if _, err := r.ownershipState(ctx); errors.Is(err, tpmdev.ErrUnreachable) {
			r.tpmDown = true
			return fail(NameTPMDevice, fmt.Sprintf("the software TPM %s does not answer: %v", spec, err), startSoftwareTPM(spec))
		}
		return pass(NameTPMDevice, "software TPM "+spec+" (development and tests only)")
	}
	fi, err := os.Stat(path)
	if err != nil {
		detail := fmt.Sprintf("no TPM device: %v", err)
		if r.cfg.TPM.Device == "auto" {
			detail = "no TPM device: neither " + devTPMRM + " nor " + devTPM + " exists"
		}
		return fail(NameTPMDevice, detail,
			"enable the TPM in the firmware setup and check the kernel driver (dmesg | grep -i tpm)")
	}
	if ok, detail := r.serviceUserCanOpen(path, fi); !ok {
		return fail(NameTPMDevice, detail,
			`give the device to group tss, mode 0660 (apt install tpm-udev, or udev: KERNEL=="tpm*", GROUP="tss", MODE="0660")`)
	}
	if errors.Is(r.env.TPMErr, fs.ErrPermission) {
		return fail(NameTPMDevice, fmt.Sprintf("opening %s: %v", path, r.env.TPMErr),
			"this user may not open the TPM (dpsd may): run dpsd check as root")
	}
	if r.env.TPMErr != nil {
		return fail(NameTPMDevice, fmt.Sprintf("opening %s: %v", path, r.env.TPMErr),
			"see dmesg | grep -i tpm; stop other programs that hold /dev/tpm0")
	}
	if r.env.TPM == nil {
		return pass(NameTPMDevice, fmt.Sprintf("%s, %s", path, describeMode(fi)))
	}
	return pass(NameTPMDevice, fmt.Sprintf("%s, %s, opened", path, describeMode(fi)))
}

// startSoftwareTPM is the fix for a software TPM that does not answer.
func startSoftwareTPM(spec string) string {
	server := "type=unixio,path=" + strings.TrimPrefix(spec, "swtpm:")
	if addr, ok := strings.CutPrefix(spec, "mssim:"); ok {
		_, port, _ := strings.Cut(addr, ":")
		server = "type=tcp,port=" + port
	}
	return "start the software TPM (swtpm socket --tpm2 --server " + server + " --flags not-need-init,startup-clear --tpmstate dir=DIR), " +
		"or set [tpm] device to the real TPM"
}

// serviceUserCanOpen tells whether the daemon's account may open the TPM
// device read-write. Running as that account, the kernel answers
// (access(2)); otherwise the owner, group and mode are compared with the
// account's groups plus tss, which dpsd.service adds.
func (r *run) serviceUserCanOpen(path string, fi fs.FileInfo) (bool, string) {
	u, err := user.Lookup(r.env.ServiceUser)
	if err != nil || strconv.Itoa(os.Geteuid()) == u.Uid {
		if err := syscall.Access(path, unixRead|unixWrite); err != nil {
			return false, fmt.Sprintf("%s (%s): this process may not open it: %v", path, describeMode(fi), err)
		}
		return true, ""
	}
	mode := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true, ""
	}
	if mode&0o006 == 0o006 || (strconv.Itoa(int(st.Uid)) == u.Uid && mode&0o600 == 0o600) {
		return true, ""
	}
	groups, _ := u.GroupIds()
	if g, err := user.LookupGroup(tssGroup); err == nil {
		groups = append(groups, g.Gid)
	}
	if slices.Contains(groups, strconv.Itoa(int(st.Gid))) && mode&0o060 == 0o060 {
		return true, ""
	}
	return false, fmt.Sprintf("%s (%s): user %s may not open it", path, describeMode(fi), r.env.ServiceUser)
}

// access(2) mode bits.
const (
	unixRead  = 0x4
	unixWrite = 0x2
)

// describeMode is "owner root, group tss, mode 0660".
func describeMode(fi fs.FileInfo) string {
	owner, group := "?", "?"
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		owner, group = strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
		if u, err := user.LookupId(owner); err == nil {
			owner = u.Username
		}
		if g, err := user.LookupGroupId(group); err == nil {
			group = g.Name
		}
	}
	return fmt.Sprintf("owner %s, group %s, mode %04o", owner, group, fi.Mode().Perm())
}

func (r *run) resourceManager(context.Context) apitype.Check {
	path := r.devicePath()
	if _, err := os.Stat(path); path != "" && err != nil {
		return warn(NameResourceManager, "not checked: no TPM device", "see the tpm-device check")
	}
	switch {
	case path == "":
		return pass(NameResourceManager, "software TPM: not applicable")
	case strings.HasPrefix(filepath.Base(path), "tpmrm"):
		return pass(NameResourceManager, "kernel resource manager "+path)
	}
	if _, err := os.Stat(devTPMRM); err == nil {
		return warn(NameResourceManager, "using "+path+" directly although "+devTPMRM+" exists",
			`set [tpm] device = "auto" so that dpsd shares the TPM through the kernel's resource manager`)
	}
	return warn(NameResourceManager, "no kernel resource manager: dpsd and other TPM users (tpm2-tools, tpm2-abrmd) conflict on "+path,
		"use a kernel with /dev/tpmrm0 (4.12 or later)")
}

// fixLeftovers is the fix of a TPM without a resource manager that
// objects or sessions left loaded fill up.
const fixLeftovers = "dpsd flushes them when it starts and whenever the TPM runs out of room (systemctl restart dpsd); " +
	"by hand: tpm2_flushcontext --transient-object; tpm2_flushcontext --loaded-session; tpm2_flushcontext --saved-session"

// transients counts what is left loaded in the TPM. Without a resource
// manager nobody flushes what a killed process or tpm2-tools left, and a
// TPM has room for only a few objects (swtpm: three): when it is full,
// every command that needs a key fails with TPM_RC_OBJECT_MEMORY.
func (r *run) transients(ctx context.Context) apitype.Check {
	if strings.HasPrefix(filepath.Base(r.devicePath()), "tpmrm") {
		return pass(NameTransients, "the kernel resource manager flushes each program's objects and sessions")
	}
	if c, ok := r.needTPM(NameTransients); !ok {
		return c
	}
	tr, err := r.env.TPM.Transients(ctx)
	if err != nil {
		return warn(NameTransients, "listing transient objects and sessions: "+err.Error(), "see dmesg | grep -i tpm")
	}
	n := len(tr.Objects) + len(tr.Sessions)
	if n == 0 {
		return pass(NameTransients, fmt.Sprintf("no objects or sessions left loaded; room for %d more objects", tr.ObjectRoom))
	}
	hs := make([]string, 0, n)
	for _, h := range slices.Concat(tr.Objects, tr.Sessions) {
		hs = append(hs, fmt.Sprintf("0x%08x", h))
	}
	detail := fmt.Sprintf("%d transient objects and %d sessions left loaded (%s); room for %d more objects",
		len(tr.Objects), len(tr.Sessions), strings.Join(hs, " "), tr.ObjectRoom)
	if tr.ObjectRoom == 0 {
		return fail(NameTransients, detail+": every command that needs a key fails", fixLeftovers)
	}
	return warn(NameTransients, detail, fixLeftovers)
}

// tpmFix is fix, unless err says the TPM had no room: then the cause is
// what the tpm-transients check reports.
func tpmFix(err error, fix string) string {
	if errors.Is(err, tpmdev.ErrTPMFull) {
		return "the TPM is full of objects left loaded: see the " + NameTransients + " check"
	}
	return fix
}

// tpmBus says whether secrets cross the TPM bus encrypted (the config's
// bus_protection, which the daemon applies to every TPM command).
func (r *run) tpmBus(context.Context) apitype.Check {
	if r.cfg.TPM.BusProtection == config.BusOff {
		return warn(NameTPMBus, `bus_protection = "off": the owner auth, the DPS challenge and hub token signatures cross the TPM bus in clear, readable by anything on it`,
			`set [tpm] bus_protection = "encrypt" unless this TPM cannot do salted sessions`)
	}
	return pass(NameTPMBus, `bus_protection = "encrypt": secrets cross the TPM bus only in sessions salted to the EK, AES-128-CFB encrypted`)
}

// needTPM is the answer of a TPM check when the TPM is not open: a warning
// only, since tpm-device already fails for that one cause.
func (r *run) needTPM(name string) (apitype.Check, bool) {
	if r.env.TPM == nil {
		return warn(name, "not checked: the TPM is not open", "see the tpm-device check"), false
	}
	if r.tpmDown {
		return warn(name, "not checked: the TPM does not answer", "see the tpm-device check"), false
	}
	return apitype.Check{}, true
}

func (r *run) ek(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameEK); !ok {
		return c
	}
	ek, err := r.env.TPM.ReadEK(ctx)
	switch {
	case errors.Is(err, tpmdev.ErrNotFound) && r.env.AssignedHub != "":
		return fail(NameEK, "no EK at "+tpmhandle.EK.String()+" although the device was provisioned: the TPM was cleared",
			"dpsd creates it again and provisions again by itself (reason tpm-cleared); see dpsd status")
	case errors.Is(err, tpmdev.ErrNotFound):
		if c, full := r.nvFull(ctx, NameEK, "EK at "+tpmhandle.EK.String()); full {
			return c
		}
		return warn(NameEK, "no EK at "+tpmhandle.EK.String()+" yet", "dpsd creates and persists it at its first start")
	case errors.Is(err, tpmdev.ErrForeignObject):
		return fail(NameEK, err.Error(),
			"another key holds the EK handle; if nothing needs it, evict it as the owner (tpm2_evictcontrol -C o -c "+tpmhandle.EK.String()+")")
	case err != nil:
		return fail(NameEK, "reading the EK: "+err.Error(), tpmFix(err, "see dmesg | grep -i tpm; journalctl -u dpsd"))
	}
	return pass(NameEK, fmt.Sprintf("RSA-2048 EK at %v, %d-byte public area", tpmhandle.EK, len(ek.Public)))
}

func (r *run) ekCertificate(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameEKCertificate); !ok {
		return c
	}
	der, err := r.env.TPM.EKCertificate(ctx)
	if err != nil {
		return warn(NameEKCertificate, "reading NV 0x01C00002: "+err.Error(), "DPS does not need the certificate; see journalctl -u dpsd if other checks fail too")
	}
	if der == nil {
		return pass(NameEKCertificate, "none in NV 0x01C00002 (DPS does not need one)")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return warn(NameEKCertificate, "the certificate in NV 0x01C00002 does not parse: "+err.Error(),
			"DPS does not need it; report it to the TPM's manufacturer")
	}
	detail := fmt.Sprintf("issued by %q, valid until %s", cert.Issuer.CommonName, cert.NotAfter.UTC().Format(time.DateOnly))
	if r.now().After(cert.NotAfter) {
		return warn(NameEKCertificate, "expired: "+detail, "DPS does not check it; an enrollment that verifies it needs the manufacturer's current chain")
	}
	return pass(NameEKCertificate, detail)
}

// readSRK reads the SRK once for the checks.
func (r *run) readSRK(ctx context.Context) (tpmdev.SRK, error) {
	if !r.srkRead {
		r.srkPub, r.srkErr = r.env.TPM.ReadSRK(ctx)
		r.srkRead = true
	}
	return r.srkPub, r.srkErr
}

func (r *run) srk(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameSRK); !ok {
		return c
	}
	srk, err := r.readSRK(ctx)
	switch {
	case errors.Is(err, tpmdev.ErrNotFound) && r.env.AssignedHub != "":
		return fail(NameSRK, "no SRK at "+tpmhandle.SRK.String()+" although the device was provisioned: the TPM was cleared",
			"dpsd provisions again by itself (reason tpm-cleared); to force it now: sudo dpsd reprovision")
	case errors.Is(err, tpmdev.ErrNotFound):
		if c, full := r.nvFull(ctx, NameSRK, "SRK at "+tpmhandle.SRK.String()); full {
			return c
		}
		return warn(NameSRK, "no SRK at "+tpmhandle.SRK.String()+" yet", "dpsd creates it when it takes ownership at start")
	case errors.Is(err, tpmdev.ErrForeignObject):
		return fail(NameSRK, err.Error(),
			"dpsd never evicts it: evict it as the owner (tpm2_evictcontrol -C o -c "+tpmhandle.SRK.String()+") or clear the TPM")
	case err != nil:
		return fail(NameSRK, "reading the SRK: "+err.Error(), tpmFix(err, "see dmesg | grep -i tpm; journalctl -u dpsd"))
	}
	return pass(NameSRK, "standard RSA-2048 SRK at "+tpmhandle.SRK.String()+", Name "+hex.EncodeToString(srk.Name))
}

// nvFull is the answer for a missing key (what) when the TPM has no room
// left to persist it: dpsd tried, or will try, and fails.
func (r *run) nvFull(ctx context.Context, name, what string) (apitype.Check, bool) {
	o, err := r.ownershipState(ctx)
	if err != nil || o.PersistentAvail > 0 {
		return apitype.Check{}, false
	}
	return fail(name, "no "+what+", and the TPM's NV memory has no room for another persistent key (TPM_PT_HR_PERSISTENT_AVAIL 0): dpsd cannot persist it",
		"list the persistent handles (tpm2_getcap handles-persistent) and evict unused ones as the owner (tpm2_evictcontrol -C o -c HANDLE), "+
			"then run sudo dpsd reprovision"), true
}

// ownershipState reads the hierarchy flags once for the checks.
func (r *run) ownershipState(ctx context.Context) (tpmdev.Ownership, error) {
	if !r.ownRead {
		r.own, r.ownErr = r.env.TPM.Ownership(ctx)
		r.ownRead = true
	}
	return r.own, r.ownErr
}

func (r *run) ownership(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameOwnership); !ok {
		return c
	}
	o, err := r.ownershipState(ctx)
	if err != nil {
		return fail(NameOwnership, "reading TPM_PT_PERMANENT: "+err.Error(), "see dmesg | grep -i tpm")
	}
	tpm := r.cfg.TPM
	if o.EndorsementAuthSet && tpm.EndorsementAuthFile == "" {
		return fail(NameOwnership, "the endorsement hierarchy has an auth value and [tpm] endorsement_auth_file is empty",
			"put the endorsement auth in a file readable by dpsd and name it in endorsement_auth_file")
	}
	if tpm.Ownership == config.OwnershipShared {
		if o.OwnerAuthSet && tpm.OwnerAuthFile == "" {
			return fail(NameOwnership, "ownership = shared, the owner hierarchy has an auth value and [tpm] owner_auth_file is empty",
				"name the file holding the owner auth in owner_auth_file")
		}
		return pass(NameOwnership, fmt.Sprintf("shared: dpsd does not change hierarchy auth (owner auth set: %t)", o.OwnerAuthSet))
	}
	if !o.OwnerAuthSet {
		return pass(NameOwnership, "not owned: dpsd takes ownership at start")
	}
	switch _, err := os.Stat(filepath.Join(r.cfg.State.Dir, state.OwnerAuthFile)); {
	case err == nil:
		return pass(NameOwnership, "owned by dpsd (owner auth sealed in "+state.OwnerAuthFile+")")
	case errors.Is(err, fs.ErrPermission):
		// The state dir is dpsd's alone (0700): from here nobody can tell
		// dpsd's ownership from someone else's.
		return warn(NameOwnership, "owner auth set; "+r.cfg.State.Dir+" is not readable by this user, so whose it is cannot be told",
			"run dpsd check as root")
	case r.env.OwnerAuthSealed:
		return fail(NameOwnership, fmt.Sprintf("owned by dpsd (says state.json), but %s, where dpsd keeps the owner auth it set, is missing",
			filepath.Join(r.cfg.State.Dir, state.OwnerAuthFile)),
			"restore owner.auth from a backup, or clear the TPM (tpm2_clear or the firmware setup): dpsd then takes ownership again and registers again")
	}
	if _, err := r.readSRK(ctx); err == nil {
		return warn(NameOwnership, "owned by someone else (no "+state.OwnerAuthFile+" in "+r.cfg.State.Dir+"); dpsd uses the SRK already there",
			"nothing to do unless the SRK goes away (then clear the TPM or set ownership = shared); "+
				"if dpsd had taken ownership, its owner.auth was deleted: restore it, or clear the TPM")
	}
	return fail(NameOwnership, "owned by someone else and no SRK: dpsd cannot create one (it never guesses passwords)",
		"clear the TPM (firmware setup or tpm2_clear), or set ownership = shared with owner_auth_file")
}

func (r *run) lockout(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameLockout); !ok {
		return c
	}
	o, err := r.ownershipState(ctx)
	if err != nil {
		return fail(NameLockout, "reading the lockout state: "+err.Error(), "see dmesg | grep -i tpm")
	}
	switch {
	case o.InLockout:
		return fail(NameLockout, fmt.Sprintf("in dictionary-attack lockout (%d of %d failures)", o.LockoutCounter, o.MaxAuthFail),
			"wait for the TPM's recovery time, or reset it with the lockout auth (tpm2_dictionarylockout --clear-lockout)")
	case o.LockoutCounter > 0:
		return warn(NameLockout, fmt.Sprintf("%d of %d authorization failures counted", o.LockoutCounter, o.MaxAuthFail),
			"find what sends wrong passwords to the TPM; the counter decays by itself")
	}
	return pass(NameLockout, fmt.Sprintf("no authorization failures counted (lockout after %d)", o.MaxAuthFail))
}

func (r *run) identityKey(ctx context.Context) apitype.Check {
	if c, ok := r.needTPM(NameIdentityKey); !ok {
		return c
	}
	if r.env.IdentityKey == nil {
		return warn(NameIdentityKey, "not checked here", "run dpsd check as root or as the dpsd user")
	}
	err := r.env.IdentityKey(ctx)
	switch {
	case err == nil:
		return pass(NameIdentityKey, "the hub credential loads in the TPM")
	case errors.Is(err, fs.ErrNotExist):
		return warn(NameIdentityKey, "no hub credential yet", "dpsd provisions at start; see dpsd status")
	case errors.Is(err, fs.ErrPermission):
		return warn(NameIdentityKey, "the hub credential is not readable by this user", "run dpsd check as root")
	case errors.Is(err, tpmdev.ErrKeyInvalidated):
		return fail(NameIdentityKey, "the hub credential no longer loads: the TPM was cleared",
			"dpsd provisions again by itself (reason tpm-cleared); to force it now: sudo dpsd reprovision")
	}
	return fail(NameIdentityKey, err.Error(), tpmFix(err, "see journalctl -u dpsd; if it persists: sudo dpsd reprovision"))
}
