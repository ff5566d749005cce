package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// suite and guestPackages make the guest: Debian's minimal base with
// systemd as init, udev and tpm-udev (the package's dependencies), and a
// kernel whose initrd mounts an ext4 root on virtio-blk.
const suite = "bookworm"

var guestPackages = []string{
	"systemd", "systemd-sysv", "udev", "tpm-udev", "adduser", "linux-image-amd64",
}

// guestSetup prepares the debootstrapped root: no login prompts or timers,
// only what the test starts.
const guestSetup = `set -e
echo vmtest >/etc/hostname
echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >/etc/fstab
systemctl mask getty@tty1.service getty-static.service serial-getty@ttyS0.service apt-daily.timer \
	apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer
`

// initramfsConfig keeps the initrd to the modules that mount the root:
// the default (MODULES=most) takes minutes to build several times over
// during debootstrap. Neither file is a conffile, so they can be in place
// before the packages are configured.
var initramfsConfig = map[string]string{
	"etc/initramfs-tools/conf.d/vmtest": "MODULES=list\n",
	"etc/initramfs-tools/hooks/vmtest": `#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
for m in virtio_pci virtio_blk ext4; do force_load $m; done
`,
}

// image is a cached guest: an ext4 root file system and the kernel and
// initrd to boot it with.
type image struct {
	Root, Kernel, Initrd string
}

// cachedImage returns the guest image for the current recipe, building it
// on first use under cacheDir/KEY, where KEY hashes what goes into it.
// Building debootstraps from apt's configured Debian mirror (a few minutes);
// delete the directory to rebuild.
func cachedImage(log *slog.Logger, cacheDir string) (image, bool, error) {
	recipe := suite + "\n" + strings.Join(guestPackages, ",") + "\n" + guestSetup
	for _, name := range slices.Sorted(maps.Keys(initramfsConfig)) {
		recipe += "\n" + name + "\n" + initramfsConfig[name]
	}
	sum := sha256.Sum256([]byte(recipe))
	dir := filepath.Join(cacheDir, suite+"-"+hex.EncodeToString(sum[:8]))
	img := image{Root: filepath.Join(dir, "root.ext4"), Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initrd.img")}
	if _, err := os.Stat(img.Root); err == nil {
		return img, true, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return img, false, err
	}
	work, err := os.MkdirTemp(cacheDir, "build-")
	if err != nil {
		return img, false, err
	}
	defer os.RemoveAll(work)
	mirror, err := debianMirror()
	if err != nil {
		return img, false, err
	}
	root := filepath.Join(work, "root")
	log.Info("building the guest image (debootstrap)", "suite", suite, "mirror", mirror, "cache", dir)
	// Two stages, so that the initramfs configuration is in place before
	// the kernel package is configured.
	if err := run("debootstrap", "--foreign", "--variant=minbase", "--include="+strings.Join(guestPackages, ","), suite, root, mirror); err != nil {
		return img, false, err
	}
	for name, text := range initramfsConfig {
		path := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return img, false, err
		}
		if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
			return img, false, err
		}
	}
	if err := run("chroot", root, "/debootstrap/debootstrap", "--second-stage"); err != nil {
		return img, false, err
	}
	if err := run("chroot", root, "/bin/sh", "-ec", guestSetup); err != nil {
		return img, false, err
	}
	built := filepath.Join(work, "image")
	if err := os.Mkdir(built, 0o755); err != nil {
		return img, false, err
	}
	for name, pattern := range map[string]string{"vmlinuz": "boot/vmlinuz-*", "initrd.img": "boot/initrd.img-*"} {
		m, _ := filepath.Glob(filepath.Join(root, pattern))
		if len(m) != 1 {
			return img, false, fmt.Errorf("want one %s in the guest, found %v", pattern, m)
		}
		if err := os.Rename(m[0], filepath.Join(built, name)); err != nil {
			return img, false, err
		}
	}
	if err := run("mkfs.ext4", "-q", "-L", "root", "-d", root, filepath.Join(built, "root.ext4"), "2G"); err != nil {
		return img, false, err
	}
	if err := os.Rename(built, dir); err != nil {
		return img, false, fmt.Errorf("moving the image into the cache: %w", err)
	}
	return img, false, nil
}

// debianMirror asks apt which mirror serves the suite's main component.
func debianMirror() (string, error) {
	out, err := exec.Command("apt-get", "indextargets", "--format", "$(REPO_URI)",
		"Release: "+suite, "Component: main", "Created-By: Packages").Output()
	if err != nil {
		return "", fmt.Errorf("apt-get indextargets: %w", err)
	}
	uri, _, _ := strings.Cut(string(out), "\n")
	if uri == "" {
		return "", fmt.Errorf("no apt source serves %s main (see /etc/apt/sources.list*)", suite)
	}
	return uri, nil
}

// guestFile is a host file copied into the guest's disk.
type guestFile struct{ src, dst string }

// newDisk copies the cached root file system (sparse) to path and writes
// into it, with debugfs, which needs no mount: the test's units and their
// enablement, then files.
func newDisk(img image, path string, files []guestFile) error {
	if err := run("cp", "--sparse=always", img.Root, path); err != nil {
		return err
	}
	var cmds strings.Builder
	cmds.WriteString("mkdir /vmtest\nmkdir /etc/systemd/system/dpsd.service.d\n")
	for name, text := range testUnits {
		src := path + "." + filepath.Base(name)
		if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(&cmds, "write %s %s\n", src, name)
	}
	for _, unit := range []string{"vmtest.service", "vmtest-dpsemu.service"} {
		fmt.Fprintf(&cmds, "symlink /etc/systemd/system/multi-user.target.wants/%s /etc/systemd/system/%s\n", unit, unit)
	}
	for _, f := range files {
		fmt.Fprintf(&cmds, "write %s %s\n", f.src, f.dst)
	}
	script := path + ".debugfs"
	if err := os.WriteFile(script, []byte(cmds.String()), 0o600); err != nil {
		return err
	}
	out, err := exec.Command("debugfs", "-w", "-f", script, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs: %w\n%s", err, out)
	}
	// debugfs reports a failed write on its output but still exits 0.
	for line := range strings.Lines(string(out)) {
		if !strings.HasPrefix(line, "debugfs") && !strings.HasPrefix(line, "Allocated inode") && strings.TrimSpace(line) != "" {
			return fmt.Errorf("debugfs: %s", out)
		}
	}
	return nil
}

// run runs a command; its output is returned in the error when it fails.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
