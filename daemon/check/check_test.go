package check_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/check"
	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/state"
	"github.com/dpsd-project/dpsd/internal/testenv"
	"github.com/dpsd-project/dpsd/tpmdev"
	"github.com/dpsd-project/dpsd/tpmdev/tpmtest"
)

// offline is a config whose network checks fail at once on loopback.
func offline(t *testing.T) *config.Config {
	cfg := config.Default()
	cfg.Provisioning.GlobalEndpoint = "https://127.0.0.1:1"
	cfg.State.Dir = t.TempDir()
	return cfg
}

// find returns the named check of rep.
func find(t *testing.T, rep apitype.CheckReport, name string) apitype.Check {
	t.Helper()
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no check %q in %+v", name, rep)
	return apitype.Check{}
}

// expect asserts the outcome of the named check and that anything but a
// pass carries a fix.
func expect(t *testing.T, rep apitype.CheckReport, name string, status apitype.CheckStatus, detail string) {
	t.Helper()
	c := find(t, rep, name)
	if c.Status != status || !strings.Contains(c.Detail, detail) {
		t.Errorf("%s: %s %q, want %s containing %q", name, c.Status, c.Detail, status, detail)
	}
	if c.Status != apitype.CheckPass && c.Fix == "" {
		t.Errorf("%s: %s without a fix", name, c.Status)
	}
}

func TestReportOrderAndNames(t *testing.T) {
	rep := check.Run(context.Background(), check.Env{Config: offline(t), TPMErr: errors.New("no TPM"), ServiceUser: "root"})
	want := []string{check.NameConfig, check.NameTPMDevice, check.NameResourceManager, check.NameTransients, check.NameTPMBus, check.NameEK, check.NameEKCertificate,
		check.NameSRK, check.NameOwnership, check.NameLockout, check.NameIdentityKey, check.NameStateDir, check.NameDPSDNS,
		check.NameDPSTLS, check.NameClock, check.NameHubTLS}
	if len(rep.Checks) != len(want) {
		t.Fatalf("%d checks, want %d: %+v", len(rep.Checks), len(want), rep)
	}
	for i, c := range rep.Checks {
		if c.Name != want[i] {
			t.Errorf("check %d is %q, want %q", i, c.Name, want[i])
		}
	}
	// One cause, one failure: the TPM checks that could not run only warn.
	expect(t, rep, check.NameEK, apitype.CheckWarn, "not checked")
	if !rep.Failed() {
		t.Error("Failed = false with failing checks")
	}
	if (apitype.CheckReport{Checks: []apitype.Check{{Status: apitype.CheckWarn}}}).Failed() {
		t.Error("Failed = true with warnings only")
	}
}

func TestTPMBusCheck(t *testing.T) {
	for _, tc := range []struct {
		protect config.BusProtection
		status  apitype.CheckStatus
		detail  string
	}{
		{config.BusEncrypt, apitype.CheckPass, `bus_protection = "encrypt"`},
		{config.BusOff, apitype.CheckWarn, `bus_protection = "off"`},
	} {
		cfg := offline(t)
		cfg.TPM.BusProtection = tc.protect
		rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: errors.New("x"), ServiceUser: "root"})
		expect(t, rep, check.NameTPMBus, tc.status, tc.detail)
	}
}

func TestConfigCheck(t *testing.T) {
	bad := errors.New("/etc/dpsd/config.toml:3: tpm.ownership: \"tak\" is not one of take, shared")
	rep := check.Run(context.Background(), check.Env{Config: nil, ConfigErr: bad, TPMErr: errors.New("x"), ServiceUser: "root"})
	expect(t, rep, check.NameConfig, apitype.CheckFail, "config.toml:3: tpm.ownership")
	cfg := offline(t)
	cfg.Files = []string{"/etc/dpsd/config.toml"}
	rep = check.Run(context.Background(), check.Env{ConfigPath: "/etc/dpsd/config.toml", Config: cfg, TPMErr: errors.New("x"), ServiceUser: "root"})
	expect(t, rep, check.NameConfig, apitype.CheckPass, "valid")
}

// The TPM checks on the reference simulator, through a device's life:
// fresh, keys created, owned by dpsd, owned by someone else, cleared.
func TestTPMChecksOnSimulator(t *testing.T) {
	dev := tpmtest.Simulator(t)
	ctx := context.Background()
	cfg := offline(t)
	env := check.Env{Config: cfg, TPM: dev, ServiceUser: "root",
		IdentityKey: func(context.Context) error { return fmt.Errorf("reading: %w", fs.ErrNotExist) }}

	rep := check.Run(ctx, env)
	expect(t, rep, check.NameEK, apitype.CheckWarn, "no EK")
	expect(t, rep, check.NameSRK, apitype.CheckWarn, "no SRK")
	expect(t, rep, check.NameOwnership, apitype.CheckPass, "not owned")
	expect(t, rep, check.NameLockout, apitype.CheckPass, "no authorization failures")
	expect(t, rep, check.NameEKCertificate, apitype.CheckPass, "none")
	expect(t, rep, check.NameIdentityKey, apitype.CheckWarn, "no hub credential")
	expect(t, rep, check.NameResourceManager, apitype.CheckPass, "software TPM")

	if _, err := dev.EnsureEK(ctx, tpmdev.EKTemplateTCG, nil, nil); err != nil {
		t.Fatal(err)
	}
	srk, err := dev.EnsureSRK(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	ownerAuth := []byte("0123456789abcdef0123456789abcdef")
	if err := dev.SetOwnerAuth(ctx, nil, ownerAuth); err != nil {
		t.Fatal(err)
	}
	rep = check.Run(ctx, env)
	expect(t, rep, check.NameEK, apitype.CheckPass, "RSA-2048 EK")
	expect(t, rep, check.NameSRK, apitype.CheckPass, fmt.Sprintf("%x", srk.Name))
	// Owned, with an SRK, but not by dpsd (no owner.auth): usable.
	expect(t, rep, check.NameOwnership, apitype.CheckWarn, "owned by someone else")

	if err := os.WriteFile(filepath.Join(cfg.State.Dir, state.OwnerAuthFile), []byte("sealed"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = check.Run(ctx, env)
	expect(t, rep, check.NameOwnership, apitype.CheckPass, "owned by dpsd")

	// The owner clears the TPM of a provisioned device.
	tpmtest.ClearSimulator(t, dev)
	env.AssignedHub = "hub.example"
	env.IdentityKey = func(context.Context) error { return fmt.Errorf("loading: %w", tpmdev.ErrKeyInvalidated) }
	rep = check.Run(ctx, env)
	expect(t, rep, check.NameEK, apitype.CheckFail, "the TPM was cleared")
	expect(t, rep, check.NameSRK, apitype.CheckFail, "the TPM was cleared")
	expect(t, rep, check.NameIdentityKey, apitype.CheckFail, "the TPM was cleared")
	expect(t, rep, check.NameOwnership, apitype.CheckPass, "not owned")

	// Someone else takes it: no SRK, an owner auth dpsd does not hold.
	if err := os.Remove(filepath.Join(cfg.State.Dir, state.OwnerAuthFile)); err != nil {
		t.Fatal(err)
	}
	// (on a cleared TPM, with no key to salt a session to)
	dev.SetBusProtection(tpmdev.BusOff)
	if err := dev.SetOwnerAuth(ctx, nil, []byte("theirs")); err != nil {
		t.Fatal(err)
	}
	rep = check.Run(ctx, env)
	expect(t, rep, check.NameOwnership, apitype.CheckFail, "owned by someone else and no SRK")
	tpmtest.AssertNoTransientHandles(t, dev)
}

// fakeTPM answers the TPM checks from fixed values, for the states a
// simulator cannot easily be put in (lockout).
type fakeTPM struct {
	own    tpmdev.Ownership
	srkErr error
	tr     tpmdev.Transients
	path   string // "fake" when empty
}

func (f fakeTPM) Path() string {
	if f.path == "" {
		return "fake"
	}
	return f.path
}
func (f fakeTPM) ReadEK(context.Context) (tpmdev.EK, error) {
	return tpmdev.EK{Public: make([]byte, 314)}, nil
}
func (f fakeTPM) ReadSRK(context.Context) (tpmdev.SRK, error) {
	return tpmdev.SRK{Name: []byte{0, 11}}, f.srkErr
}
func (f fakeTPM) EKCertificate(context.Context) ([]byte, error)         { return nil, nil }
func (f fakeTPM) Ownership(context.Context) (tpmdev.Ownership, error)   { return f.own, nil }
func (f fakeTPM) Transients(context.Context) (tpmdev.Transients, error) { return f.tr, nil }

func TestOwnershipAndLockout(t *testing.T) {
	tests := []struct {
		name      string
		tpm       fakeTPM
		configure func(*config.Config)
		check     string
		status    apitype.CheckStatus
		detail    string
	}{
		{"in lockout", fakeTPM{own: tpmdev.Ownership{InLockout: true, LockoutCounter: 32, MaxAuthFail: 32}}, nil,
			check.NameLockout, apitype.CheckFail, "32 of 32"},
		{"failures counted", fakeTPM{own: tpmdev.Ownership{LockoutCounter: 2, MaxAuthFail: 32}}, nil,
			check.NameLockout, apitype.CheckWarn, "2 of 32"},
		{"endorsement auth without file", fakeTPM{own: tpmdev.Ownership{EndorsementAuthSet: true}}, nil,
			check.NameOwnership, apitype.CheckFail, "endorsement_auth_file is empty"},
		{"shared without owner auth file", fakeTPM{own: tpmdev.Ownership{OwnerAuthSet: true}},
			func(c *config.Config) { c.TPM.Ownership = config.OwnershipShared },
			check.NameOwnership, apitype.CheckFail, "owner_auth_file is empty"},
		{"shared with owner auth file", fakeTPM{own: tpmdev.Ownership{OwnerAuthSet: true}},
			func(c *config.Config) {
				c.TPM.Ownership = config.OwnershipShared
				c.TPM.OwnerAuthFile = "/etc/dpsd/owner"
			},
			check.NameOwnership, apitype.CheckPass, "shared"},
		{"foreign SRK", fakeTPM{srkErr: fmt.Errorf("object at 0x81000001: %w", tpmdev.ErrForeignObject)}, nil,
			check.NameSRK, apitype.CheckFail, "foreign object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := offline(t)
			if tt.configure != nil {
				tt.configure(cfg)
			}
			rep := check.Run(context.Background(), check.Env{Config: cfg, TPM: tt.tpm, ServiceUser: "root"})
			expect(t, rep, tt.check, tt.status, tt.detail)
		})
	}
}

func TestTransients(t *testing.T) {
	tests := []struct {
		name   string
		device string
		tr     tpmdev.Transients
		status apitype.CheckStatus
		detail string
	}{
		{"none", "swtpm:/run/swtpm.sock", tpmdev.Transients{ObjectRoom: 3}, apitype.CheckPass, "room for 3 more objects"},
		{"some", "/dev/tpm0", tpmdev.Transients{Objects: []uint32{0x80000000}, Sessions: []uint32{0x03000000}, ObjectRoom: 2},
			apitype.CheckWarn, "1 transient objects and 1 sessions left loaded (0x80000000 0x03000000)"},
		{"full", "swtpm:/run/swtpm.sock", tpmdev.Transients{Objects: []uint32{0x80000000, 0x80000001, 0x80000002}},
			apitype.CheckFail, "every command that needs a key fails"},
		// The kernel's view holds only the caller's own: nothing to count.
		{"resource manager", "/dev/tpmrm0", tpmdev.Transients{Objects: []uint32{0x80000000}}, apitype.CheckPass, "kernel resource manager"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := check.Run(context.Background(), check.Env{Config: offline(t), TPM: fakeTPM{tr: tt.tr, path: tt.device}, ServiceUser: "root"})
			expect(t, rep, check.NameTransients, tt.status, tt.detail)
			if c := find(t, rep, check.NameTransients); c.Status != apitype.CheckPass && !strings.Contains(c.Fix, "tpm2_flushcontext") {
				t.Errorf("fix %q does not say how to flush them", c.Fix)
			}
		})
	}
}

// The deterministic reproduction of leftovers on a TPM without a resource
// manager: three objects tpm2-tools left in swtpm fill it. dpsd check looks
// without flushing, names the cause once and points the symptoms at it.
func TestTransientsLeftInSwtpm(t *testing.T) {
	info := tpmtest.StartSwtpm(t, "")
	tpmtest.LeaveObjects(t, info, 3)
	dev, err := tpmdev.OpenInspect(info.Spec(), tpmtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cfg := offline(t)
	cfg.TPM.Device = info.Spec()
	rep := check.Run(context.Background(), check.Env{Config: cfg, TPM: dev, ServiceUser: "root"})
	expect(t, rep, check.NameTransients, apitype.CheckFail, "3 transient objects and 0 sessions left loaded (0x80000000 0x80000001 0x80000002)")
	// Reading a persistent key needs a free object slot.
	if c := find(t, rep, check.NameSRK); c.Status != apitype.CheckFail || !strings.Contains(c.Fix, check.NameTransients) {
		t.Errorf("srk: %s %q, fix %q; want a failure pointing at %s", c.Status, c.Detail, c.Fix, check.NameTransients)
	}
	if hs, err := dev.LoadedHandles(context.Background()); err != nil || len(hs) != 3 {
		t.Errorf("after the check: %#x loaded (%v), want the three left alone", hs, err)
	}
}

func TestIdentityKey(t *testing.T) {
	tests := []struct {
		err    error
		status apitype.CheckStatus
		detail string
	}{
		{nil, apitype.CheckPass, "loads"},
		{fmt.Errorf("reading: %w", fs.ErrNotExist), apitype.CheckWarn, "no hub credential"},
		{fmt.Errorf("loading: %w", tpmdev.ErrKeyInvalidated), apitype.CheckFail, "cleared"},
		{errors.New("identity.key is corrupt"), apitype.CheckFail, "corrupt"},
	}
	for _, tt := range tests {
		rep := check.Run(context.Background(), check.Env{Config: offline(t), TPM: fakeTPM{}, ServiceUser: "root",
			IdentityKey: func(context.Context) error { return tt.err }})
		expect(t, rep, check.NameIdentityKey, tt.status, tt.detail)
	}
}

// The device node's owner, group and mode decide whether the service user
// may open it.
func TestTPMDevicePermissions(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		file   string
		mode   os.FileMode
		group  string
		status apitype.CheckStatus
		detail string
	}{
		{"root only", "tpmrm0", 0o600, "", apitype.CheckFail, "user nobody may not open it"},
		{"group tss", "tpmrm0", 0o660, "tss", apitype.CheckPass, "group tss, mode 0660"},
		{"group tss read only", "tpmrm0", 0o640, "tss", apitype.CheckFail, "may not open it"},
		{"world", "tpm0", 0o666, "", apitype.CheckPass, "mode 0666"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name, tt.file)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, nil, tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			if tt.group != "" {
				if err := os.Chown(path, -1, lookupGID(t, tt.group)); err != nil {
					t.Fatal(err)
				}
			}
			cfg := offline(t)
			cfg.TPM.Device = path
			rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: errors.New("not a TPM"), ServiceUser: "nobody"})
			c := find(t, rep, check.NameTPMDevice)
			if tt.status == apitype.CheckPass {
				// Permissions pass; opening this plain file as a TPM did not.
				if c.Status != apitype.CheckFail || !strings.Contains(c.Detail, "not a TPM") {
					t.Errorf("tpm-device: %s %q, want the open error after passing permissions", c.Status, c.Detail)
				}
			} else {
				expect(t, rep, check.NameTPMDevice, tt.status, tt.detail)
			}
			rm := apitype.CheckPass
			if tt.file == "tpm0" {
				rm = apitype.CheckWarn
			}
			expect(t, rep, check.NameResourceManager, rm, "")
		})
	}
}

func lookupGID(t *testing.T, name string) int {
	t.Helper()
	out, err := os.ReadFile("/etc/group")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, ":")
		if len(f) > 2 && f[0] == name {
			gid, err := strconv.Atoi(f[2])
			if err != nil {
				t.Fatal(err)
			}
			return gid
		}
	}
	testenv.Missing(t, "group "+name+" is missing (the swtpm packages create it)")
	return 0
}

func TestStateDir(t *testing.T) {
	testenv.RequireRoot(t, "change file owners")
	tests := []struct {
		name    string
		prepare func(dir string) error
		user    string
		status  apitype.CheckStatus
		detail  string
	}{
		{"missing", func(dir string) error { return os.Remove(dir) }, "root", apitype.CheckWarn, "does not exist yet"},
		{"writable by root", func(string) error { return nil }, "root", apitype.CheckPass, "writable"},
		{"not the service user's", func(string) error { return nil }, "nobody", apitype.CheckFail, "not writable by nobody"},
		{"the service user's, open", func(dir string) error {
			if err := os.Chmod(dir, 0o755); err != nil {
				return err
			}
			return os.Chown(dir, 65534, 65534)
		}, "nobody", apitype.CheckWarn, "open to other users"},
		{"the service user's", func(dir string) error { return os.Chown(dir, 65534, 65534) }, "nobody", apitype.CheckPass, "writable by nobody"},
		{"a file", func(dir string) error {
			if err := os.Remove(dir); err != nil {
				return err
			}
			return os.WriteFile(dir, nil, 0o600)
		}, "root", apitype.CheckFail, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := offline(t)
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tt.prepare(dir); err != nil {
				t.Fatal(err)
			}
			cfg.State.Dir = dir
			rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: errors.New("x"), ServiceUser: tt.user})
			expect(t, rep, check.NameStateDir, tt.status, tt.detail)
		})
	}
}

// loopbackTLS serves HTTPS (the DPS endpoint) and a bare TLS listener (the
// hub's 8883) on loopback with httptest's certificate (names example.com
// and 127.0.0.1), and writes that certificate as a ca_file.
func loopbackTLS(t *testing.T) (dpsURL, hubAddr, caFile string) {
	t.Helper()
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no such resource", http.StatusNotFound)
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusted cases fail handshakes on purpose
	t.Cleanup(srv.Close)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: srv.TLS.Certificates})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	caFile = filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(caFile, pemBytes, 0o644); err != nil {
		t.Fatal(err)
	}
	return srv.URL, ln.Addr().String(), caFile
}

func TestNetworkAndClock(t *testing.T) {
	dpsURL, hubAddr, caFile := loopbackTLS(t)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(dpsURL, "https://"))
	closed := closedPort(t)
	build := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		configure func(*config.Config)
		hub       string
		now       func() time.Time
		want      map[string]apitype.CheckStatus
		detail    map[string]string
	}{
		{
			name:      "all reachable and trusted",
			configure: func(c *config.Config) { c.Network.CAFile = caFile; c.Hub.EndpointOverride = hubAddr },
			hub:       "example.com",
			want: map[string]apitype.CheckStatus{check.NameDPSDNS: apitype.CheckPass, check.NameDPSTLS: apitype.CheckPass,
				check.NameClock: apitype.CheckPass, check.NameHubTLS: apitype.CheckPass},
			detail: map[string]string{check.NameDPSTLS: "HTTP 404", check.NameClock: "DPS's clock", check.NameHubTLS: "verified as example.com"},
		},
		{
			name: "a name that resolves but is not on the certificate",
			configure: func(c *config.Config) {
				c.Network.CAFile = caFile
				c.Provisioning.GlobalEndpoint = "https://localhost:" + port
			},
			want:   map[string]apitype.CheckStatus{check.NameDPSDNS: apitype.CheckPass, check.NameDPSTLS: apitype.CheckFail, check.NameHubTLS: apitype.CheckWarn},
			detail: map[string]string{check.NameDPSDNS: "localhost resolves", check.NameHubTLS: "no hub assigned"},
		},
		{
			name:      "untrusted without ca_file",
			configure: func(c *config.Config) { c.Hub.EndpointOverride = hubAddr },
			hub:       "example.com",
			want:      map[string]apitype.CheckStatus{check.NameDPSTLS: apitype.CheckFail, check.NameHubTLS: apitype.CheckFail},
			detail:    map[string]string{check.NameDPSTLS: "certificate", check.NameHubTLS: "certificate"},
		},
		{
			name: "nothing listening",
			configure: func(c *config.Config) {
				c.Provisioning.GlobalEndpoint = "https://" + closed
				c.Hub.EndpointOverride = closed
			},
			hub:    "example.com",
			want:   map[string]apitype.CheckStatus{check.NameDPSTLS: apitype.CheckFail, check.NameHubTLS: apitype.CheckFail, check.NameClock: apitype.CheckPass},
			detail: map[string]string{check.NameDPSTLS: "refused", check.NameClock: "DPS not reached"},
		},
		{
			name:      "clock before the build",
			configure: func(c *config.Config) { c.Network.CAFile = caFile },
			now:       func() time.Time { return build.Add(-time.Hour) },
			want:      map[string]apitype.CheckStatus{check.NameClock: apitype.CheckFail},
			detail:    map[string]string{check.NameClock: "before this build"},
		},
		{
			name:      "clock 45 minutes ahead of DPS",
			configure: func(c *config.Config) { c.Network.CAFile = caFile },
			now:       func() time.Time { return time.Now().Add(45 * time.Minute) },
			want:      map[string]apitype.CheckStatus{check.NameClock: apitype.CheckFail},
			detail:    map[string]string{check.NameClock: "ahead of DPS's clock"},
		},
		{
			name:      "clock 5 minutes behind DPS",
			configure: func(c *config.Config) { c.Network.CAFile = caFile },
			now:       func() time.Time { return time.Now().Add(-5 * time.Minute) },
			want:      map[string]apitype.CheckStatus{check.NameClock: apitype.CheckWarn},
			detail:    map[string]string{check.NameClock: "behind DPS's clock"},
		},
		{
			name:      "unreadable ca_file",
			configure: func(c *config.Config) { c.Network.CAFile = "/nonexistent/ca.pem" },
			want:      map[string]apitype.CheckStatus{check.NameDPSTLS: apitype.CheckFail},
			detail:    map[string]string{check.NameDPSTLS: "ca_file"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := offline(t)
			cfg.Provisioning.GlobalEndpoint = dpsURL
			tt.configure(cfg)
			env := check.Env{Config: cfg, TPMErr: errors.New("x"), ServiceUser: "root", AssignedHub: tt.hub, BuildTime: build, Now: tt.now}
			rep := check.Run(context.Background(), env)
			for name, status := range tt.want {
				expect(t, rep, name, status, tt.detail[name])
			}
		})
	}
}

// closedPort is a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// A technician without the rights dpsd has is told to use root, not to
// debug the TPM.
func TestTPMDeviceOpenedWithoutRights(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tpmrm0")
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	cfg := offline(t)
	cfg.TPM.Device = path
	denied := &fs.PathError{Op: "open", Path: path, Err: fs.ErrPermission}
	rep := check.Run(context.Background(), check.Env{Config: cfg, TPMErr: denied, ServiceUser: "root"})
	c := find(t, rep, check.NameTPMDevice)
	if c.Status != apitype.CheckFail || !strings.Contains(c.Fix, "as root") {
		t.Errorf("tpm-device: %+v, want a failure that says to run as root", c)
	}
}
