// Package version carries the build's version, stamped by the Makefile with
// -ldflags -X, and the build time that the daemon uses as a floor for a sane
// clock.
package version

import (
	"runtime"
	"strconv"
	"time"
)

// Set at link time (see the Makefile); the defaults are for `go run` and tests.
var (
	Version = "dev"
	Commit  = "unknown"
	// BuildUnix is the build's time in Unix seconds (SOURCE_DATE_EPOCH in
	// release builds, so that builds stay reproducible).
	BuildUnix = "0"
)

// String is the one-line form printed by `dpsd version`.
func String() string {
	return "dpsd " + Version + " (commit " + Commit + ", " + runtime.Version() + ")"
}

// BuildTime is the time the binary was built; a system clock before it is
// certainly wrong.
func BuildTime() time.Time {
	n, err := strconv.ParseInt(BuildUnix, 10, 64)
	if err != nil {
		return time.Unix(0, 0)
	}
	return time.Unix(n, 0)
}
