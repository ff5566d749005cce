// Command dpsd-package builds the dpsd Debian package for one architecture
// with nfpm: the cross-built binary, the systemd units, the conffile, the
// man page, the copyright and changelog, and the maintainer scripts beside
// this file. Every timestamp comes from SOURCE_DATE_EPOCH, so two runs on the
// same inputs write the same bytes. `make deb` runs it once per architecture.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.Root, "root", ".", "the dpsd source tree")
	flag.StringVar(&o.Arch, "arch", "", "Debian architecture: amd64, arm64 or armhf")
	flag.StringVar(&o.Binary, "bin", "", "the dpsd binary built for -arch")
	flag.StringVar(&o.OutDir, "out", "dist", "directory the .deb is written to")
	flag.StringVar(&o.Describe, "version", "", "`git describe --tags --always --dirty` of the tree")
	flag.StringVar(&o.Commit, "commit", "", "commit the binary was built from")
	flag.StringVar(&o.Config, "config", "", "the conffile to ship (default ROOT/contrib/config.toml)")
	flag.IntVar(&o.Revision, "revision", 1, "Debian revision of the package")
	flag.Parse()

	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "dpsd-package:", err)
		os.Exit(1)
	}
}

func run(o *options) error {
	if o.Arch == "" || o.Binary == "" || o.Describe == "" || o.Commit == "" {
		return fmt.Errorf("-arch, -bin, -version and -commit are required (make deb passes them)")
	}
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		return fmt.Errorf("SOURCE_DATE_EPOCH is not set: make deb sets it to the last commit's time")
	}
	secs, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return fmt.Errorf("parsing SOURCE_DATE_EPOCH %q: %w", epoch, err)
	}
	o.Built = time.Unix(secs, 0).UTC()
	if o.Upstream, err = upstreamVersion(o.Describe, o.Built); err != nil {
		return err
	}
	path, err := buildPackage(o)
	if err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}
