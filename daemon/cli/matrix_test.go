package cli_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/cli"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
	"github.com/dpsd-project/dpsd/internal/testenv"
)

// cliMainEnv makes the test binary behave as dpsd (see TestMain), so that
// the matrix runs the real command line in processes of other uids.
const cliMainEnv = "DPSD_CLI_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(cliMainEnv) != "" {
		os.Exit(cli.App{}.Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// caller is a process identity of the matrix.
type caller struct {
	name string
	cred *syscall.Credential // nil: root, this process's own
	uid  int
}

// addUsers creates the matrix's groups and users and removes them when the
// test ends: a reader in the socket group, an app in a token-allowed group
// and a user in neither.
func addUsers(t *testing.T) (readGroup, appsGroup string, callers []caller) {
	t.Helper()
	suffix := strconv.Itoa(os.Getpid())
	readGroup, appsGroup = "dpsdt-read"+suffix, "dpsdt-apps"+suffix
	must := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	for _, g := range []string{readGroup, appsGroup} {
		must("groupadd", g)
		t.Cleanup(func() { _ = exec.Command("groupdel", g).Run() })
	}
	users := []struct{ name, group string }{
		{"dpsdt-r" + suffix, readGroup},
		{"dpsdt-a" + suffix, appsGroup},
		{"dpsdt-o" + suffix, ""},
	}
	callers = []caller{{name: "root"}}
	for i, u := range users {
		args := []string{"-M", "-N", "-s", "/usr/sbin/nologin"}
		if u.group != "" {
			args = append(args, "-G", u.group)
		}
		must("useradd", append(args, u.name)...)
		t.Cleanup(func() { _ = exec.Command("userdel", u.name).Run() })
		cred, uid := credentialOf(t, u.name)
		callers = append(callers, caller{name: []string{"reader", "app", "other"}[i], cred: cred, uid: uid})
	}
	return readGroup, appsGroup, callers
}

// credentialOf is the user's uid, primary group and supplementary groups,
// as login would set them.
func credentialOf(t *testing.T, name string) (*syscall.Credential, int) {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	ids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	var groups []uint32
	for _, id := range ids {
		g, _ := strconv.Atoi(id)
		groups = append(groups, uint32(g))
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}, uid
}

// dpsd runs the command line as c and returns its exit code and output.
func dpsd(t *testing.T, exe string, c caller, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), cliMainEnv+"=1")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running dpsd %v as %s: %v", args, c.name, err)
		}
		code = ee.ExitCode()
	}
	return code, out.String()
}

type want struct {
	code int
	text string
}

// TestAuthorizationMatrix runs every client verb as root, as a member of the
// socket group, as a member of a token-allowed group and as an unrelated
// user, against a server on a real socket, and checks each answer.
func TestAuthorizationMatrix(t *testing.T) {
	t.Parallel()
	testenv.RequireRoot(t, "create users and run dpsd as them")
	readGroup, appsGroup, callers := addUsers(t)
	exe := localapitest.ExecutableForAll(t)

	var logs testenv.Buffer
	b := localapitest.NewBackend(provisioned())
	tokenAllow := []string{"@" + appsGroup}
	srv := localapi.New(b, localapi.Options{SocketGroup: readGroup, TokenAllow: tokenAllow, MaxTTL: 24 * time.Hour,
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	sock := localapitest.Serve(t, srv, localapi.SocketMode(tokenAllow), readGroup)

	joinGroup := "join group " + readGroup
	tokenAllowFix := "[token] allow"
	rootOnly := "only root"
	verbs := []struct {
		name string
		args []string
		// expected answers for root, reader, app, other
		want [4]want
	}{
		{"status", []string{"status"}, [4]want{{0, "Provisioned: device dev-1"}, {0, "Provisioned: device dev-1"}, {1, joinGroup}, {1, joinGroup}}},
		{"status --json", []string{"status", "--json"}, [4]want{{0, `"state": "provisioned"`}, {0, `"deviceId": "dev-1"`}, {1, joinGroup}, {1, joinGroup}}},
		{"enroll-info --json", []string{"enroll-info", "--json"}, [4]want{{0, `"registrationId"`}, {0, `"endorsementKey"`}, {1, joinGroup}, {1, joinGroup}}},
		{"enroll-info", []string{"enroll-info"}, [4]want{{0, "Registration ID:"}, {0, "Endorsement key:"}, {1, joinGroup}, {1, joinGroup}}},
		{"check --json", []string{"check", "--json"}, [4]want{{0, `"checks"`}, {0, `"status": "pass"`}, {1, joinGroup}, {1, joinGroup}}},
		{"wait", []string{"wait", "--timeout", "30s"}, [4]want{{0, "provisioned: device dev-1"}, {0, "provisioned"}, {1, joinGroup}, {1, joinGroup}}},
		{"token", []string{"token"}, [4]want{{0, "SharedAccessSignature sr="}, {1, tokenAllowFix}, {0, "SharedAccessSignature sr="}, {1, tokenAllowFix}}},
		{"token --json --ttl 2h", []string{"token", "--json", "--ttl", "2h"}, [4]want{{0, `"expiresAt"`}, {1, tokenAllowFix}, {0, `"hub": "hub.example"`}, {1, tokenAllowFix}}},
		{"token --ttl 48h", []string{"token", "--ttl", "48h"}, [4]want{{1, "over the maximum of 24h0m0s"}, {1, tokenAllowFix}, {1, "over the maximum"}, {1, tokenAllowFix}}},
		{"reprovision", []string{"reprovision"}, [4]want{{0, "re-provisioning requested"}, {1, rootOnly}, {1, rootOnly}, {1, rootOnly}}},
	}
	for _, v := range verbs {
		for i, c := range callers {
			t.Run(v.name+" as "+c.name, func(t *testing.T) {
				b.SetStatus(provisioned())
				before := b.Reprovisions()
				code, out := dpsd(t, exe, c, append(v.args, "--socket", sock)...)
				w := v.want[i]
				if code != w.code || !strings.Contains(out, w.text) {
					t.Errorf("exit %d, output:\n%s\nwant exit %d and %q", code, out, w.code, w.text)
				}
				if code != 0 && c.uid != 0 && !strings.Contains(logs.String(), fmt.Sprintf("uid=%d ", c.uid)) && w.text != "over the maximum" {
					t.Errorf("refusal of uid %d not logged:\n%s", c.uid, logs.String())
				}
				if got := b.Reprovisions() - before; got != 0 && c.name != "root" {
					t.Errorf("%s reached Reprovision", c.name)
				}
			})
		}
	}

	// Without token users the socket is 0660: the others cannot even
	// connect, and the client says what to do.
	closed := localapitest.Serve(t, localapi.New(b, localapi.Options{SocketGroup: readGroup, Log: localapitest.Logger(t)}), localapi.SocketMode(nil), readGroup)
	for _, c := range callers[1:] {
		code, out := dpsd(t, exe, c, "status", "--socket", closed)
		if c.name == "reader" {
			if code != 0 {
				t.Errorf("reader on a 0660 socket: exit %d\n%s", code, out)
			}
			continue
		}
		if code != 1 || !strings.Contains(out, "permission denied on "+closed+": run as root or join group dpsd") {
			t.Errorf("%s on a 0660 socket: exit %d\n%s", c.name, code, out)
		}
	}
}

func provisioned() apitype.Status {
	return apitype.Status{State: apitype.PhaseProvisioned, DeviceID: "dev-1", AssignedHub: "hub.example", Attempts: 1}
}
