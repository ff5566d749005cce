package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// debArches are the architectures `make deb` builds by default.
var debArches = []string{"amd64", "arm64", "armhf"}

// TestDebPackages builds the packages twice with `make deb` and checks that
// the two builds are byte-identical, that lintian finds nothing, that every
// architecture ships the same files, that the copyright names every module
// in the binary, and then installs, reinstalls, upgrades, removes and purges
// the host's package in a Debian bookworm chroot without systemd, as an image
// build would. It needs root, make, lintian and debootstrap (make deb-test
// installs them); the chroot's base system is cached (see chrootTarball).
func TestDebPackages(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"make", "lintian", "debootstrap", "dpkg-deb", "chroot", "tar"} {
		requireTool(t, tool)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}

	// Both builds run on copies of the tree as it is now, in two directories
	// (the paths must not matter), with the version of the tree now: other
	// work landing in a shared tree between the builds cannot change them.
	stamp := []string{
		"VERSION=" + strings.TrimSpace(output(t, "git", "-C", root, "describe", "--tags", "--always", "--dirty")),
		"COMMIT=" + strings.TrimSpace(output(t, "git", "-C", root, "rev-parse", "--short", "HEAD")),
		"SOURCE_DATE_EPOCH=" + strings.TrimSpace(output(t, "git", "-C", root, "log", "-1", "--format=%ct")),
	}
	src := snapshot(t, root)
	second := snapshot(t, src)
	start := time.Now()
	makeDeb(t, src, stamp)
	t.Logf("first make deb: %s", time.Since(start).Round(time.Second))
	start = time.Now()
	makeDeb(t, second, stamp)
	t.Logf("second make deb: %s", time.Since(start).Round(time.Second))
	debs := compareBuilds(t, filepath.Join(src, "dist"), filepath.Join(second, "dist"))
	if t.Failed() {
		t.FailNow()
	}
	root = src

	t.Run("lintian", func(t *testing.T) {
		for _, arch := range debArches {
			out := lintian(t, debs[arch])
			if out != "" {
				t.Errorf("lintian on %s:\n%s", filepath.Base(debs[arch]), out)
			}
		}
	})
	t.Run("layout", func(t *testing.T) { checkLayout(t, debs) })
	t.Run("copyright", func(t *testing.T) {
		checkCopyright(t, filepath.Join(root, "packaging", "copyright"), filepath.Join(root, "bin", "linux-"+hostArch(t), "dpsd"))
	})
	t.Run("lifecycle", func(t *testing.T) { checkLifecycle(t, root, debs[hostArch(t)]) })
	t.Run("postinst under systemd", func(t *testing.T) { checkLiveStart(t, debs[hostArch(t)]) })
}

// requireRoot fails in CI and skips elsewhere when not run as root: dpkg in
// a chroot needs it.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("the package test needs root (chroot, dpkg)")
	}
	t.Skip("the package test needs root (chroot, dpkg)")
}

// requireTool fails in CI and skips elsewhere when a tool is missing.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found: run scripts/install-deps.sh deb", name)
	}
	t.Skipf("%s not found: run scripts/install-deps.sh deb", name)
}

// output runs a command and returns its standard output; it fails the test
// with the standard error when the command fails.
func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// snapshot copies the source tree, without its git directory and build
// output, into a temporary directory.
func snapshot(t *testing.T, root string) string {
	t.Helper()
	dst := t.TempDir()
	cmd := exec.Command("sh", "-ec", `tar -C "$1" --exclude=./.git --exclude=./bin --exclude=./dist -cf - . | tar -C "$2" -xf -`,
		"snapshot", root, dst)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("copying the tree: %v\n%s", err, out)
	}
	return dst
}

// makeDeb runs make deb for every architecture in root, into root/dist.
func makeDeb(t *testing.T, root string, stamp []string) {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", root, "deb", "ARCH=all"}, stamp...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
}

// compareBuilds checks that both builds made one package per architecture
// with the same bytes, logs their sizes and returns them by architecture.
func compareBuilds(t *testing.T, first, second string) map[string]string {
	t.Helper()
	debs := map[string]string{}
	for _, arch := range debArches {
		matches, err := filepath.Glob(filepath.Join(first, "dpsd_*_"+arch+".deb"))
		if err != nil || len(matches) != 1 {
			t.Fatalf("want one %s package in %s, found %v (%v)", arch, first, matches, err)
		}
		a := matches[0]
		b := filepath.Join(second, filepath.Base(a))
		if _, err := os.Stat(b); err != nil {
			t.Fatalf("the second build made no %s: %v", filepath.Base(a), err)
		}
		sumA, sizeA := fileSum(t, a)
		sumB, _ := fileSum(t, b)
		if sumA != sumB {
			t.Errorf("%s differs between two builds of the same tree: %s and %s", filepath.Base(a), sumA, sumB)
		}
		t.Logf("%s: %d bytes, sha256 %s", filepath.Base(a), sizeA, sumA)
		debs[arch] = a
	}
	return debs
}

func fileSum(t *testing.T, path string) (string, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), len(b)
}

// lintian returns lintian's findings on a package at every level, pedantic
// and experimental included; overrides in the package silence the justified
// ones.
func lintian(t *testing.T, deb string) string {
	t.Helper()
	cmd := exec.Command("lintian", "--pedantic", "--display-info", "--display-experimental",
		"--fail-on", "warning", "--no-tag-display-limit", deb)
	out, err := cmd.Output() // stderr only warns about running as root
	if err != nil && len(out) == 0 {
		t.Fatalf("lintian %s: %v", deb, err)
	}
	var kept []string
	for line := range strings.Lines(string(out)) {
		if !binaryNoise(line) {
			kept = append(kept, line)
		}
	}
	return strings.TrimSpace(strings.Join(kept, ""))
}

// binaryNoise reports whether a lintian line is a "misspelt word" of fewer
// than four letters in the binary: lintian reads the strings of a static
// Go binary, whose tables (pclntab, crypto constants) hold short runs of
// letters that shift with the version stamped into it ("NaM" for "Name").
// A misspelt word of dpsd's own messages is longer and still reported.
func binaryNoise(line string) bool {
	f := strings.Fields(line)
	// I: dpsd: spelling-error-in-binary WORD CORRECTION [usr/bin/dpsd]
	return len(f) >= 4 && f[2] == "spelling-error-in-binary" && len(f[3]) < 4
}

// checkLayout compares the files, modes and owners of the packages of every
// architecture, and their relationships and conffiles.
func checkLayout(t *testing.T, debs map[string]string) {
	listings := map[string][]string{}
	for _, arch := range debArches {
		deb := debs[arch]
		if got := strings.TrimSpace(output(t, "dpkg-deb", "--field", deb, "Depends")); got != strings.Join(depends, ", ") {
			t.Errorf("%s: Depends %q, want %q", arch, got, strings.Join(depends, ", "))
		}
		if got := output(t, "dpkg-deb", "--info", deb, "conffiles"); got != "/etc/dpsd/config.toml\n" {
			t.Errorf("%s: conffiles %q, want only /etc/dpsd/config.toml", arch, got)
		}
		// dpkg-deb -c: mode, owner/group, size, date, time, path.
		for line := range strings.Lines(output(t, "dpkg-deb", "--contents", deb)) {
			f := strings.Fields(line)
			if len(f) < 6 {
				t.Fatalf("%s: unexpected listing line %q", arch, line)
			}
			listings[arch] = append(listings[arch], f[0]+" "+f[1]+" "+f[5])
		}
	}
	want := []string{
		"-rwxr-xr-x root/root ./usr/bin/dpsd",
		"-rw-r--r-- root/root ./lib/systemd/system/dpsd.service",
		"-rw-r--r-- root/root ./lib/systemd/system/dpsd.socket",
		"-rw-r--r-- root/root ./lib/systemd/system/dpsd-wait-provisioned.service",
		"-rw-r--r-- root/root ./etc/dpsd/config.toml",
		"drwxr-xr-x root/root ./etc/dpsd/config.d/",
		"-rw-r--r-- root/root ./usr/share/man/man8/dpsd.8.gz",
		"-rw-r--r-- root/root ./usr/share/doc/dpsd/copyright",
		"-rw-r--r-- root/root ./usr/share/doc/dpsd/changelog.Debian.gz",
	}
	for _, w := range want {
		if !slices.Contains(listings["amd64"], w) {
			t.Errorf("amd64 package lacks %q; it has:\n%s", w, strings.Join(listings["amd64"], "\n"))
		}
	}
	for _, arch := range debArches[1:] {
		if !slices.Equal(listings[arch], listings["amd64"]) {
			t.Errorf("%s ships other files than amd64:\n%s\nvs\n%s", arch,
				strings.Join(listings[arch], "\n"), strings.Join(listings["amd64"], "\n"))
		}
	}
}

// checkCopyright fails when the binary contains a module the copyright file
// does not name: a new dependency needs its license there.
func checkCopyright(t *testing.T, copyright, binary string) {
	text, err := os.ReadFile(copyright)
	if err != nil {
		t.Fatal(err)
	}
	// go version -m: "\tdep\tPATH\tVERSION\tSUM" per module linked in.
	for line := range strings.Lines(output(t, "go", "version", "-m", binary)) {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "dep" || f[0] == "=>") && !bytes.Contains(text, []byte(f[1])) {
			t.Errorf("%s is linked into dpsd but not named in packaging/copyright", f[1])
		}
	}
}

func hostArch(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(output(t, "dpkg", "--print-architecture"))
}

// chroot is a throwaway Debian root.
type chroot struct{ dir string }

// newChroot unpacks a fresh root from the cached base system.
func newChroot(t *testing.T) chroot {
	t.Helper()
	c := chroot{dir: t.TempDir()}
	output(t, "tar", "--numeric-owner", "-C", c.dir, "-xf", chrootTarball(t))
	return c
}

// run runs a script with /bin/sh -e inside the root and returns its
// standard output and error; it fails the test when the script fails.
func (c chroot) run(t *testing.T, script string) (stdout, stderr string) {
	t.Helper()
	cmd := exec.Command("chroot", c.dir, "/bin/sh", "-ec", script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"}
	var errBuf bytes.Buffer
	cmd.Stderr = &errBuf
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("in the chroot: %s\nerror: %v\nstdout:\n%s\nstderr:\n%s", script, err, out, errBuf.String())
	}
	return string(out), errBuf.String()
}

// sh is run that also fails on anything printed to standard error: the
// maintainer scripts and dpkg must work quietly.
func (c chroot) sh(t *testing.T, script string) string {
	t.Helper()
	out, stderr := c.run(t, script)
	if stderr != "" {
		t.Fatalf("in the chroot: %s\nunexpected stderr:\n%s", script, stderr)
	}
	return out
}

func (c chroot) write(t *testing.T, path string, data []byte) {
	t.Helper()
	full := filepath.Join(c.dir, path)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (c chroot) read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.dir, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (c chroot) exists(path string) bool {
	_, err := os.Lstat(filepath.Join(c.dir, path))
	return err == nil
}

// checkLifecycle walks the package through what image builders and admins
// do to it: install, reinstall, upgrade with an untouched and with an edited
// conffile, remove, purge and install again.
func checkLifecycle(t *testing.T, root, deb string) {
	start := time.Now()
	c := newChroot(t)
	t.Logf("chroot ready: %s", time.Since(start).Round(time.Second))
	if c.exists("/run/systemd/system") {
		t.Fatal("the chroot looks like a running systemd; the test is about image builds")
	}

	// Two later revisions of the same build, each with another conffile.
	version := strings.TrimSpace(output(t, "dpkg-deb", "--field", deb, "Version"))
	upstream, _, ok := strings.Cut(version, "-")
	if !ok {
		t.Fatalf("version %q has no Debian revision", version)
	}
	shipped, err := os.ReadFile(filepath.Join(root, "contrib", "config.toml"))
	if err != nil {
		t.Fatal(err)
	}
	configs := map[int][]byte{1: shipped}
	debs := map[int]string{1: deb}
	for rev := 2; rev <= 3; rev++ {
		configs[rev] = append(slices.Clone(shipped), []byte("# revision "+strconv.Itoa(rev)+" of the packaged defaults\n")...)
		src := filepath.Join(t.TempDir(), "config.toml")
		if err := os.WriteFile(src, configs[rev], 0o644); err != nil {
			t.Fatal(err)
		}
		path, err := buildPackage(&options{
			Root: root, Arch: hostArch(t), Binary: filepath.Join(root, "bin", "linux-"+hostArch(t), "dpsd"),
			OutDir: t.TempDir(), Describe: "test revision", Commit: "test", Config: src,
			Upstream: upstream, Revision: rev, Built: time.Unix(0, 0).UTC(),
		})
		if err != nil {
			t.Fatal(err)
		}
		debs[rev] = path
	}
	for rev, path := range debs {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		c.write(t, "/tmp/dpsd-"+strconv.Itoa(rev)+".deb", b)
	}

	c.sh(t, "dpkg -i /tmp/dpsd-1.deb >/dev/null")
	uid := checkInstalled(t, c, configs[1])
	// The static binary runs on a bare minbase system.
	if out := c.sh(t, "/usr/bin/dpsd version"); strings.TrimSpace(out) == "" {
		t.Error("dpsd version printed nothing")
	}

	t.Log("reinstall the same version")
	c.sh(t, "dpkg -i /tmp/dpsd-1.deb >/dev/null")
	if got := checkInstalled(t, c, configs[1]); got != uid {
		t.Errorf("reinstall changed the uid of dpsd from %d to %d", uid, got)
	}

	t.Log("upgrade; the conffile is untouched, so dpkg installs the new one")
	c.sh(t, "dpkg -i /tmp/dpsd-2.deb >/dev/null")
	checkInstalled(t, c, configs[2])
	if out := c.sh(t, "ls /etc/dpsd"); strings.Contains(out, "dpkg-") {
		t.Errorf("an untouched conffile left dpkg files behind: %s", out)
	}

	t.Log("upgrade; the admin edited the conffile and keeps it")
	edited := []byte("[provisioning]\nid_scope = \"0ne00000001\"\n")
	dropIn := []byte("[hub]\nverify = false\n")
	c.write(t, "/etc/dpsd/config.toml", edited)
	c.write(t, "/etc/dpsd/config.d/50-image.toml", dropIn)
	// dpkg reports the kept conffile on stderr; nothing else may appear.
	_, stderr := c.run(t, "dpkg --force-confold -i /tmp/dpsd-3.deb >/dev/null")
	for line := range strings.Lines(stderr) {
		if !strings.Contains(line, "/etc/dpsd/config.toml") && !strings.HasPrefix(line, " ==> ") && strings.TrimSpace(line) != "" {
			t.Errorf("unexpected stderr from the upgrade: %q", line)
		}
	}
	checkInstalled(t, c, edited)
	if got := c.read(t, "/etc/dpsd/config.toml.dpkg-dist"); got != string(configs[3]) {
		t.Errorf("config.toml.dpkg-dist is not the packaged config of revision 3:\n%s", got)
	}
	if got := c.read(t, "/etc/dpsd/config.d/50-image.toml"); got != string(dropIn) {
		t.Errorf("the upgrade changed a drop-in:\n%s", got)
	}

	t.Log("remove: the config, the state and the user stay; the units are masked")
	c.write(t, "/var/lib/dpsd/state.json", []byte("{}\n"))
	c.sh(t, "dpkg -r dpsd >/dev/null")
	for _, gone := range []string{"/usr/bin/dpsd", "/lib/systemd/system/dpsd.service", "/lib/systemd/system/dpsd.socket"} {
		if c.exists(gone) {
			t.Errorf("remove left %s", gone)
		}
	}
	for _, kept := range []string{"/etc/dpsd/config.toml", "/etc/dpsd/config.d/50-image.toml", "/var/lib/dpsd/state.json"} {
		if !c.exists(kept) {
			t.Errorf("remove deleted %s", kept)
		}
	}
	c.sh(t, "getent passwd dpsd >/dev/null")
	for _, unit := range []string{"dpsd.service", "dpsd.socket"} {
		if got := c.sh(t, "readlink /etc/systemd/system/"+unit); strings.TrimSpace(got) != "/dev/null" {
			t.Errorf("%s is not masked after remove: %q", unit, got)
		}
	}

	t.Log("purge: config, state, user, group and unit state are gone")
	c.sh(t, "dpkg -P dpsd >/dev/null")
	checkPurged(t, c)

	t.Log("install again after the purge")
	c.sh(t, "dpkg -i /tmp/dpsd-1.deb >/dev/null")
	checkInstalled(t, c, configs[1])
	c.sh(t, "dpkg -P dpsd >/dev/null")
	checkPurged(t, c)
	t.Logf("lifecycle: %s", time.Since(start).Round(time.Second))
}

// checkInstalled checks the user, group, files, modes and enabled units of an
// installed package whose conffile holds config, and returns dpsd's uid.
func checkInstalled(t *testing.T, c chroot, config []byte) int {
	t.Helper()
	// name:password:uid:gid:gecos:home:shell
	passwd := strings.Split(strings.TrimSpace(c.sh(t, "getent passwd dpsd")), ":")
	group := strings.Split(strings.TrimSpace(c.sh(t, "getent group dpsd")), ":")
	if len(passwd) != 7 || len(group) != 4 {
		t.Fatalf("passwd %q, group %q", passwd, group)
	}
	uid, err := strconv.Atoi(passwd[2])
	if err != nil {
		t.Fatal(err)
	}
	if uid == 0 || uid >= 1000 {
		t.Errorf("dpsd has uid %d, want a system uid", uid)
	}
	if passwd[3] != group[2] {
		t.Errorf("dpsd's primary group is %s, want dpsd (%s)", passwd[3], group[2])
	}
	if passwd[5] != "/nonexistent" || passwd[6] != "/usr/sbin/nologin" {
		t.Errorf("dpsd has home %q and shell %q, want /nonexistent and /usr/sbin/nologin", passwd[5], passwd[6])
	}
	if c.exists("/nonexistent") {
		t.Error("postinst created /nonexistent")
	}
	groups := strings.Fields(c.sh(t, "id -nG dpsd"))
	if !slices.Contains(groups, "tss") || !slices.Contains(groups, "dpsd") {
		t.Errorf("dpsd is in groups %v, want dpsd and tss", groups)
	}

	modes := map[string]string{
		"/usr/bin/dpsd":                                     "755 root root",
		"/lib/systemd/system/dpsd.service":                  "644 root root",
		"/lib/systemd/system/dpsd.socket":                   "644 root root",
		"/lib/systemd/system/dpsd-wait-provisioned.service": "644 root root",
		"/etc/dpsd":                               "755 root root",
		"/etc/dpsd/config.d":                      "755 root root",
		"/etc/dpsd/config.toml":                   "644 root root",
		"/usr/share/man/man8/dpsd.8.gz":           "644 root root",
		"/usr/share/doc/dpsd/copyright":           "644 root root",
		"/usr/share/doc/dpsd/changelog.Debian.gz": "644 root root",
	}
	paths := make([]string, 0, len(modes))
	for p := range modes {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	sc := bufio.NewScanner(strings.NewReader(c.sh(t, "stat -c '%n %a %U %G' "+strings.Join(paths, " "))))
	for sc.Scan() {
		path, got, _ := strings.Cut(sc.Text(), " ")
		if got != modes[path] {
			t.Errorf("%s: %s, want %s", path, got, modes[path])
		}
	}
	if got := c.read(t, "/etc/dpsd/config.toml"); got != string(config) {
		t.Errorf("/etc/dpsd/config.toml is not the expected one:\n%s", got)
	}

	// Enabled for the image's first boot; the wait unit only when an app
	// pulls it in.
	for link, target := range map[string]string{
		"/etc/systemd/system/multi-user.target.wants/dpsd.service": "/lib/systemd/system/dpsd.service",
		"/etc/systemd/system/sockets.target.wants/dpsd.socket":     "/lib/systemd/system/dpsd.socket",
	} {
		if got := strings.TrimSpace(c.sh(t, "readlink "+link)); got != target {
			t.Errorf("%s -> %q, want %s", link, got, target)
		}
	}
	if out := c.sh(t, "find /etc/systemd/system -name 'dpsd-wait-provisioned*'"); out != "" {
		t.Errorf("dpsd-wait-provisioned.service is enabled: %s", out)
	}
	return uid
}

// checkPurged checks that nothing of dpsd is left but what it never owned.
func checkPurged(t *testing.T, c chroot) {
	t.Helper()
	for _, gone := range []string{"/etc/dpsd", "/var/lib/dpsd", "/usr/share/doc/dpsd"} {
		if c.exists(gone) {
			t.Errorf("purge left %s", gone)
		}
	}
	if out := c.sh(t, "getent passwd dpsd || true; getent group dpsd || true"); out != "" {
		t.Errorf("purge left the account: %s", out)
	}
	if out := c.sh(t, "getent group tss"); strings.Contains(out, "dpsd") {
		t.Errorf("purge left dpsd in tss: %s", out)
	}
	if out := c.sh(t, "find /etc/systemd /var/lib/systemd -name '*dpsd*'"); out != "" {
		t.Errorf("purge left unit state:\n%s", out)
	}
	if c.exists("/etc/group") && !strings.Contains(c.read(t, "/etc/group"), "tss:") {
		t.Error("purge removed the tss group, which belongs to tpm-udev")
	}
}
