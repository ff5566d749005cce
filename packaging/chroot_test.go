package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// chrootSuite and chrootPackages describe the throwaway root: Debian's
// minimal base plus the package's dependencies, so that dpkg -i needs no
// network.
const chrootSuite = "bookworm"

var chrootPackages = []string{"adduser", "tpm-udev"}

// chrootTarball returns a tarball of a debootstrap minbase root, building it
// on first use. It is cached in $DPSD_DEB_TEST_CACHE (default
// /var/cache/dpsd-deb-test) because debootstrap downloads and unpacks some
// hundred packages; delete the file to refresh it.
func chrootTarball(t *testing.T) string {
	t.Helper()
	cache := os.Getenv("DPSD_DEB_TEST_CACHE")
	if cache == "" {
		cache = "/var/cache/dpsd-deb-test"
	}
	tarball := filepath.Join(cache, chrootSuite+"-minbase-"+hostArch(t)+"-"+strings.Join(chrootPackages, "-")+".tar")
	if _, err := os.Stat(tarball); err == nil {
		return tarball
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	work, err := os.MkdirTemp(cache, "debootstrap-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	rootDir := filepath.Join(work, "root")
	mirror := debianMirror(t)
	t.Logf("debootstrap %s from %s into the cache %s", chrootSuite, mirror, cache)
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(chrootPackages, ","),
		chrootSuite, rootDir, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("debootstrap: %v\n%s", err, out)
	}
	tmp := filepath.Join(work, "root.tar")
	output(t, "tar", "--numeric-owner", "-C", rootDir, "-cf", tmp, ".")
	if err := os.Rename(tmp, tarball); err != nil {
		t.Fatal(err)
	}
	return tarball
}

// debianMirror returns the Debian mirror apt uses for the chroot's suite, as
// configured in /etc/apt/sources.list and /etc/apt/sources.list.d.
func debianMirror(t *testing.T) string {
	t.Helper()
	files := []string{"/etc/apt/sources.list"}
	for _, pattern := range []string{"*.list", "*.sources"} {
		m, _ := filepath.Glob(filepath.Join("/etc/apt/sources.list.d", pattern))
		files = append(files, m...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var uri string
		if strings.HasSuffix(f, ".sources") {
			uri = mirrorFromDeb822(string(b), chrootSuite)
		} else {
			uri = mirrorFromOneLine(string(b), chrootSuite)
		}
		if uri != "" {
			return uri
		}
	}
	t.Fatalf("no apt source in /etc/apt serves %s main", chrootSuite)
	return ""
}

// mirrorFromDeb822 finds, in a deb822 .sources file, the first URI of a
// "deb" stanza that lists suite and the main component.
func mirrorFromDeb822(text, suite string) string {
	for stanza := range strings.SplitSeq(text, "\n\n") {
		fields := map[string][]string{}
		sc := bufio.NewScanner(strings.NewReader(stanza))
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "#") {
				continue
			}
			if key, value, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(key)] = strings.Fields(value)
			}
		}
		if slices.Contains(fields["types"], "deb") && slices.Contains(fields["suites"], suite) &&
			slices.Contains(fields["components"], "main") && len(fields["uris"]) > 0 &&
			!slices.Contains(fields["enabled"], "no") {
			return fields["uris"][0]
		}
	}
	return ""
}

// mirrorFromOneLine finds, in a one-line sources.list, the URI of the first
// "deb URI suite main ..." line.
func mirrorFromOneLine(text, suite string) string {
	for line := range strings.Lines(text) {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if len(f) > 0 && strings.HasPrefix(f[0], "[") { // options: [arch=amd64 signed-by=...]
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) > 0 {
				f = f[1:]
			}
		}
		if len(f) >= 3 && f[1] == suite && slices.Contains(f[2:], "main") {
			return f[0]
		}
	}
	return ""
}
