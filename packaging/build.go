package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

const (
	packageName = "dpsd"
	maintainer  = "dpsd maintainers <maintainers@users.noreply.r-seed-666b22b2.example>"
	homepage    = "https://github.com/dpsd-project/dpsd"
	description = `TPM attested provisioning daemon for Azure IoT Hub DPS
dpsd provisions an embedded Linux device against the Azure IoT Hub Device
Provisioning Service with TPM 2.0 attestation. It takes ownership of the
TPM, keeps the hub credential sealed under the TPM's Storage Root Key, so
that the key never exists in the clear on the device, and provisions again
when the TPM is cleared.

The hardened service runs as the system user dpsd. A local status socket
and the dpsd command show technicians what it does, and the unit
dpsd-wait-provisioned.service lets applications start after provisioning.`
)

// depends lists what the package needs at run time. The binary is static Go
// (no libc); tpm-udev brings the tss group and the udev rule that gives it
// /dev/tpmrm0, adduser the postinst's user creation.
var depends = []string{"adduser", "tpm-udev"}

// goMachines maps each Debian architecture to the ELF machine its binary
// must be built for.
var goMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64,
	"arm64": elf.EM_AARCH64,
	"armhf": elf.EM_ARM,
}

// options says what to package and where to put it.
type options struct {
	Root     string    // the source tree: units, man page, conffile, packaging/
	Arch     string    // Debian architecture
	Binary   string    // dpsd built for Arch
	OutDir   string    // where the .deb goes
	Describe string    // git describe of the tree, for the changelog
	Upstream string    // Debian upstream version (see upstreamVersion)
	Commit   string    // commit of the binary
	Config   string    // the conffile; empty: Root/contrib/config.toml
	Revision int       // Debian revision
	Built    time.Time // SOURCE_DATE_EPOCH: every timestamp in the package
}

// buildPackage writes the .deb for o into o.OutDir and returns its path.
func buildPackage(o *options) (string, error) {
	if err := checkBinary(o.Binary, o.Arch); err != nil {
		return "", err
	}
	if o.Config == "" {
		o.Config = filepath.Join(o.Root, "contrib", "config.toml")
	}
	if _, err := os.Stat(o.Config); err != nil {
		return "", fmt.Errorf("reading the conffile: %w", err)
	}

	// The man page and the changelog are compressed here; nfpm copies files
	// as they are.
	staging, err := os.MkdirTemp("", "dpsd-package-")
	if err != nil {
		return "", fmt.Errorf("creating a staging directory: %w", err)
	}
	defer os.RemoveAll(staging)
	page, err := os.ReadFile(filepath.Join(o.Root, "docs", "dpsd.8"))
	if err != nil {
		return "", fmt.Errorf("reading the man page: %w", err)
	}
	manGz := filepath.Join(staging, "dpsd.8.gz")
	if err := writeGzip(manGz, page); err != nil {
		return "", err
	}
	version := o.Upstream + "-" + strconv.Itoa(o.Revision)
	changelogGz := filepath.Join(staging, "changelog.Debian.gz")
	if err := writeGzip(changelogGz, changelog(version, o.Describe, o.Commit, o.Built)); err != nil {
		return "", err
	}

	pkg := filepath.Join(o.Root, "packaging")
	units := filepath.Join(o.Root, "contrib", "systemd")
	contents := files.Contents{
		file(o.Binary, "/usr/bin/dpsd", 0o755),
		file(filepath.Join(units, "dpsd.service"), "/lib/systemd/system/dpsd.service", 0o644),
		file(filepath.Join(units, "dpsd.socket"), "/lib/systemd/system/dpsd.socket", 0o644),
		file(filepath.Join(units, "dpsd-wait-provisioned.service"), "/lib/systemd/system/dpsd-wait-provisioned.service", 0o644),
		{Source: o.Config, Destination: "/etc/dpsd/config.toml", Type: files.TypeConfig, FileInfo: &files.ContentFileInfo{Mode: 0o644}},
		// Drop-ins go here; the package owns the directory so that purge
		// and dpkg -S know about it.
		{Destination: "/etc/dpsd/config.d", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o755}},
		file(manGz, "/usr/share/man/man8/dpsd.8.gz", 0o644),
		file(filepath.Join(pkg, "copyright"), "/usr/share/doc/dpsd/copyright", 0o644),
		file(changelogGz, "/usr/share/doc/dpsd/changelog.Debian.gz", 0o644),
		file(filepath.Join(pkg, "lintian-overrides"), "/usr/share/lintian/overrides/dpsd", 0o644),
	}

	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          packageName,
		Arch:          o.Arch,
		Platform:      "linux",
		Version:       o.Upstream,
		VersionSchema: "none",
		Release:       strconv.Itoa(o.Revision),
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    maintainer,
		Description:   description,
		Homepage:      homepage,
		MTime:         o.Built,
		Overridables: nfpm.Overridables{
			Depends:  depends,
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(pkg, "postinst"),
				PreRemove:   filepath.Join(pkg, "prerm"),
				PostRemove:  filepath.Join(pkg, "postrm"),
			},
			Deb: nfpm.Deb{Compression: "gzip:9"},
		},
	})

	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", o.OutDir, err)
	}
	out := filepath.Join(o.OutDir, deb.Default.ConventionalFileName(info))
	tmp, err := os.CreateTemp(o.OutDir, ".dpsd-*.deb")
	if err != nil {
		return "", fmt.Errorf("creating the package file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := deb.Default.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("packaging %s: %w", o.Arch, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", fmt.Errorf("setting the mode of %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("writing %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("moving the package into place: %w", err)
	}
	return out, nil
}

// file is a regular file of the package, owned by root.
func file(src, dst string, mode os.FileMode) *files.Content {
	return &files.Content{Source: src, Destination: dst, Type: files.TypeFile, FileInfo: &files.ContentFileInfo{Mode: mode}}
}

// checkBinary refuses a binary built for another machine or linked against
// libc: the package's architecture and its empty library dependencies both
// rest on it.
func checkBinary(path, arch string) error {
	want, ok := goMachines[arch]
	if !ok {
		return fmt.Errorf("architecture %q: want amd64, arm64 or armhf", arch)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading the dpsd binary: %w", err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("%s is built for %s, not %s", path, f.Machine, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked: build it with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// changelog is the Debian changelog of this build: one entry naming the
// commit, dated by SOURCE_DATE_EPOCH.
func changelog(version, describe, commit string, built time.Time) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s (%s) unstable; urgency=medium\n\n", packageName, version)
	fmt.Fprintf(&b, "  * Build of %s (commit %s).\n\n", describe, commit)
	fmt.Fprintf(&b, " -- %s  %s\n", maintainer, built.UTC().Format(time.RFC1123Z))
	return b.Bytes()
}

// writeGzip compresses data at the highest level with no name or time in the
// header, as dpkg and lintian expect and reproducibility needs.
func writeGzip(path string, data []byte) error {
	var b bytes.Buffer
	zw, err := gzip.NewWriterLevel(&b, gzip.BestCompression)
	if err != nil {
		return fmt.Errorf("compressing %s: %w", filepath.Base(path), err)
	}
	if _, err := zw.Write(data); err != nil {
		return fmt.Errorf("compressing %s: %w", filepath.Base(path), err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compressing %s: %w", filepath.Base(path), err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
