package check

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/tpmdev"
)

// run is one pass over the checks, with what earlier checks learned.
type run struct {
	env Env
	// cfg is the loaded config, or the defaults when it did not load.
	cfg *config.Config
	now func() time.Time

	srkPub  tpmdev.SRK
	srkErr  error
	srkRead bool
	own     tpmdev.Ownership
	ownErr  error
	ownRead bool
	// tpmDown: the open TPM does not answer at all (a software TPM's
	// socket without its process); the other TPM checks are not run.
	tpmDown bool
	// dpsSkew is the local clock minus the DPS endpoint's Date header, when
	// dpsReached; the clock check reports it.
	dpsSkew    time.Duration
	dpsReached bool
	// dnsFailed: the DPS name did not resolve (and no proxy resolves it).
	dnsFailed bool
}

func newRun(env Env) *run {
	r := &run{env: env, cfg: env.Config, now: env.Now}
	if r.cfg == nil {
		r.cfg = config.Default()
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

func (r *run) config(context.Context) apitype.Check {
	if r.env.ConfigErr != nil {
		return fail(NameConfig, r.env.ConfigErr.Error(), "fix the file and key named above; dpsd check-config checks again")
	}
	if r.env.Config == nil {
		return warn(NameConfig, "not loaded; the defaults were checked", "dpsd check-config --config FILE")
	}
	return pass(NameConfig, fmt.Sprintf("%s valid (%d files)", r.env.ConfigPath, len(r.env.Config.Files)))
}

func (r *run) stateDir(context.Context) apitype.Check {
	dir := r.cfg.State.Dir
	fixCreate := fmt.Sprintf("dpsd.service creates it (StateDirectory=dpsd); by hand: install -d -m 0700 -o %s -g %s %s",
		r.env.ServiceUser, r.env.ServiceUser, dir)
	fi, err := os.Stat(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return warn(NameStateDir, dir+" does not exist yet", fixCreate)
		}
		return fail(NameStateDir, err.Error(), fixCreate)
	}
	if !fi.IsDir() {
		return fail(NameStateDir, dir+" is not a directory", "move it away; "+fixCreate)
	}
	u, err := user.Lookup(r.env.ServiceUser)
	if err != nil || strconv.Itoa(os.Geteuid()) == u.Uid {
		// As the service user (or with no such user), the kernel answers;
		// access(2) writes nothing.
		if err := syscall.Access(dir, unixWrite|unixExec); err != nil {
			return fail(NameStateDir, fmt.Sprintf("%s (%s) is not writable by this process: %v", dir, describeMode(fi), err), fixCreate)
		}
		if c, bad := probeStateDir(dir); bad {
			return c
		}
		return pass(NameStateDir, fmt.Sprintf("%s writable (%s)", dir, describeMode(fi)))
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && (strconv.Itoa(int(st.Uid)) != u.Uid || fi.Mode().Perm()&0o300 != 0o300) {
		return fail(NameStateDir, fmt.Sprintf("%s (%s) is not writable by %s", dir, describeMode(fi), r.env.ServiceUser),
			fmt.Sprintf("chown -R %s: %s && chmod 0700 %s", r.env.ServiceUser, dir, dir))
	}
	if c, bad := probeStateDir(dir); bad {
		return c
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return warn(NameStateDir, fmt.Sprintf("%s (%s) is open to other users", dir, describeMode(fi)), "chmod 0700 "+dir)
	}
	return pass(NameStateDir, fmt.Sprintf("%s writable by %s (%s)", dir, r.env.ServiceUser, describeMode(fi)))
}

// probeStateDir writes what a new identity needs into dir (and removes
// it): permissions are not enough, a full or read-only file system refuses
// the key DPS has just replaced the old one with.
func probeStateDir(dir string) (apitype.Check, bool) {
	if err := (state.Store{Dir: dir}).CheckWritable(state.CommitSpace); err != nil {
		return fail(NameStateDir, err.Error(),
			"free space on its file system (df "+dir+"), remount it read-write, or move away what is in the way"), true
	}
	return apitype.Check{}, false
}

// unixExec is access(2)'s X_OK: entering the directory.
const unixExec = 0x1

// Clock skew against DPS: beyond the first a warning, beyond the second the
// tokens the device signs are refused or expire early.
const (
	skewWarn = 2 * time.Minute
	skewFail = 30 * time.Minute
)

func (r *run) clock(context.Context) apitype.Check {
	now := r.now()
	fix := "turn on time sync (timedatectl set-ntp true) and check it (timedatectl status)"
	if now.Before(r.env.BuildTime) {
		return fail(NameClock, fmt.Sprintf("the clock (%s) is before this build (%s)",
			now.UTC().Format(time.RFC3339), r.env.BuildTime.UTC().Format(time.RFC3339)), fix)
	}
	if !r.dpsReached {
		return pass(NameClock, "after the build time; DPS not reached to compare")
	}
	skew := r.dpsSkew.Round(time.Second)
	abs := max(skew, -skew)
	detail := fmt.Sprintf("%s ahead of DPS's clock", abs)
	if skew < 0 {
		detail = fmt.Sprintf("%s behind DPS's clock", abs)
	}
	switch {
	case abs > skewFail:
		return fail(NameClock, detail, fix)
	case abs > skewWarn:
		return warn(NameClock, detail, fix)
	}
	return pass(NameClock, detail)
}
