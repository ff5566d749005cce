// Command vmtest is the project's field test (make vm-test): the freshly
// built .deb on a Debian bookworm guest under QEMU, with a real systemd,
// udev and the kernel's TPM drivers (tpm_tis, and tpm_crb for one boot) in
// front of swtpm, and dpsemu on the guest's loopback. The guest has no
// network device.
//
// The host drives a sequence of boots. In each, vmtest.service runs this
// same binary in the guest (`vmtest guest`), which runs the boot's phase
// (named on the kernel command line), writes one JSON line per scenario to
// the second serial port and powers off. Between boots the host may act on
// the powered-off hardware (it clears the TPM). It prints a table and exits
// 1 on any failure.
//
// The guest image (debootstrap, kernel, initrd) is cached under -cache,
// keyed on a hash of its recipe; each run copies it and writes the
// packages, dpsemu and this binary into the copy.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "guest":
			os.Exit(guestMain())
		case "await":
			if len(os.Args) == 3 {
				os.Exit(awaitMain(os.Args[2]))
			}
		}
	}
	var o options
	flag.StringVar(&o.deb, "deb", "", "the dpsd .deb to test (amd64)")
	flag.StringVar(&o.upgrade, "upgrade", "", "a later revision of the same package, for the upgrade")
	flag.StringVar(&o.dpsemu, "dpsemu", "bin/dpsemu", "the dpsemu binary to run in the guest")
	flag.StringVar(&o.cache, "cache", "/var/cache/dpsd-vm-test", "where the guest image is cached")
	flag.DurationVar(&o.bootTimeout, "boot-timeout", 8*time.Minute, "longest one boot may take, power on to power off")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (disk, TPM state, consoles) even when every scenario passes")
	flag.Parse()
	if o.deb == "" || o.upgrade == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: vmtest -deb DPSD.deb -upgrade DPSD-LATER.deb [-dpsemu BIN] [-cache DIR] (make vm-test builds them)")
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rows, err := runAll(context.Background(), log, &o)
	printTable(os.Stdout, rows)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmtest:", err)
		os.Exit(1)
	}
	for _, r := range rows {
		if !r.OK {
			os.Exit(1)
		}
	}
}

type options struct {
	deb, upgrade, dpsemu, cache string
	bootTimeout                 time.Duration
	keep                        bool
}

// tools are what the host needs (scripts/install-deps.sh vm installs them).
var tools = []string{"qemu-system-x86_64", "swtpm", "swtpm_ioctl", "tpm2_clear", "debootstrap", "mkfs.ext4", "debugfs", "chroot", "apt-get"}

// boots are the guest's power cycles: the phase the guest runs and the
// TPM interface it sees. The host clears the TPM before "cleared".
var boots = []struct{ phase, device string }{
	{"install", "tpm-tis"},
	{"reboot", "tpm-tis"},
	{"cleared", "tpm-crb"},
}

// row is one line of the table: a host step or a guest scenario.
type row struct {
	Name   string
	OK     bool
	Time   time.Duration
	Detail string
}

func runAll(ctx context.Context, log *slog.Logger, o *options) (rows []row, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("needs root (debootstrap, chroot)")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			return nil, fmt.Errorf("%s not found: run scripts/install-deps.sh vm", t)
		}
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	img, cached, err := cachedImage(log, o.cache)
	if err != nil {
		return nil, fmt.Errorf("guest image: %w", err)
	}
	name := "guest image (debootstrap, cached for the next run)"
	if cached {
		name = "guest image (cached)"
	}
	rows = append(rows, row{Name: name, OK: true, Time: time.Since(start)})

	dir, err := os.MkdirTemp("", "dpsd-vm-test-")
	if err != nil {
		return rows, err
	}
	defer func() {
		failed := err != nil
		for _, r := range rows {
			failed = failed || !r.OK
		}
		if failed || o.keep {
			fmt.Fprintf(os.Stderr, "vmtest: disk, TPM state, consoles and results kept in %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	v := &vm{img: img, dir: dir, disk: filepath.Join(dir, "disk.ext4"), tpmState: filepath.Join(dir, "tpm"), timeout: o.bootTimeout}
	if err := os.Mkdir(v.tpmState, 0o700); err != nil {
		return rows, err
	}
	start = time.Now()
	err = newDisk(img, v.disk, []guestFile{
		{self, "/usr/local/bin/vmtest"},
		{o.dpsemu, "/usr/local/bin/dpsemu"},
		{o.deb, guestDeb},
		{o.upgrade, guestUpgrade},
	})
	if err != nil {
		return rows, fmt.Errorf("the guest's disk: %w", err)
	}
	rows = append(rows, row{Name: "disk: copy the image, add the packages", OK: true, Time: time.Since(start)})

	for i, b := range boots {
		if b.phase == "cleared" {
			start = time.Now()
			err := v.clearTPM(ctx)
			rows = append(rows, row{Name: "host: tpm2_clear -c p on the powered-off TPM", OK: err == nil, Time: time.Since(start), Detail: errString(err)})
			if err != nil {
				return rows, nil
			}
		}
		start = time.Now()
		log.Info("boot", "n", i+1, "phase", b.phase, "tpm", b.device)
		reports, err := v.boot(ctx, b.phase, b.device)
		done := false
		var scenarios []row
		for _, r := range reports {
			if r.Done {
				done = true
				continue
			}
			scenarios = append(scenarios, row{Name: "  " + r.Scenario, OK: r.OK, Time: time.Duration(r.Millis) * time.Millisecond, Detail: r.Detail})
		}
		if err == nil && !done {
			err = fmt.Errorf("the phase did not finish; see %s", filepath.Join(dir, b.phase+".console"))
		}
		rows = append(rows, row{Name: fmt.Sprintf("boot %d: %s (%s), power on to off", i+1, b.phase, b.device),
			OK: err == nil, Time: time.Since(start), Detail: errString(err)})
		rows = append(rows, scenarios...)
		if err != nil {
			return rows, nil
		}
	}
	return rows, nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// printTable writes the scenarios, their results and times, then the
// details of the failures and notes.
func printTable(w *os.File, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tresult\ttime")
	var total time.Duration
	for _, r := range rows {
		result := "ok"
		if !r.OK {
			result = "FAIL"
		}
		if !strings.HasPrefix(r.Name, "  ") {
			total += r.Time
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Name, result, r.Time.Round(100*time.Millisecond))
	}
	fmt.Fprintf(tw, "total\t\t%s\n", total.Round(time.Second))
	tw.Flush()
	for _, r := range rows {
		if r.Detail != "" {
			fmt.Fprintf(w, "\n%s (%s):\n  %s\n", strings.TrimSpace(r.Name), map[bool]string{true: "note", false: "failure"}[r.OK],
				strings.ReplaceAll(strings.TrimSpace(r.Detail), "\n", "\n  "))
		}
	}
}
