// Command dpsd is the TPM provisioning daemon (`dpsd run`) and its clients
// (`dpsd status`, `dpsd check`, …); see `dpsd --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/dpsd-project/dpsd/daemon"
	"github.com/dpsd-project/dpsd/daemon/cli"
	"github.com/dpsd-project/dpsd/daemon/standalone"
)

func main() {
	// The first SIGTERM/SIGINT cancels ctx: the daemon stops cleanly, a
	// client verb gives up its request.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := cli.App{Run: daemon.Run, Standalone: standalone.Local{}}.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
