// Command dpsemu is the local Azure DPS + IoT Hub emulator for development
// and for CI of device images (docs/dpsemu.md). It is not shipped in the
// .deb.
//
//	dpsemu --dir DIR --id-scope SCOPE --hub NAME[,NAME...] \
//	       --dps-listen 127.0.0.1:PORT --hub-listen 127.0.0.1:PORT --admin-listen 127.0.0.1:PORT
//
// When ready it prints one JSON line with the bound addresses on stdout;
// logs go to stderr. SIGTERM or SIGINT stop it cleanly (exit 0).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dpsd-project/dpsd/daemon/dps/dpsemu"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("dpsemu", flag.ContinueOnError)
	var (
		opts     dpsemu.Options
		hubs     string
		polls    int
		logLevel slog.Level
	)
	fs.StringVar(&opts.Dir, "dir", "", "state directory: ca.pem, ca-key.pem, device-root.pem, device-ca.pem (and keys), registry.json (required)")
	fs.StringVar(&opts.IDScope, "id-scope", "", "DPS ID scope devices use (required)")
	fs.StringVar(&hubs, "hub", "", "IoT Hub host names, comma-separated (required)")
	fs.StringVar(&opts.DPSListen, "dps-listen", dpsemu.DefaultListen, "DPS HTTPS address (port 0: any free port)")
	fs.StringVar(&opts.HubListen, "hub-listen", dpsemu.DefaultListen, "IoT Hub MQTT/TLS address")
	fs.StringVar(&opts.AdminListen, "admin-listen", dpsemu.DefaultListen, "admin HTTP address (loopback only)")
	fs.IntVar(&polls, "assign-after-polls", dpsemu.DefaultAssignAfterPolls, "polls answered \"assigning\" before \"assigned\"")
	fs.IntVar(&opts.RetryAfter, "retry-after", 1, "Retry-After seconds in 202 answers (production DPS sends 3)")
	fs.DurationVar(&opts.MethodTimeout, "method-timeout", 0, "direct method answer timeout (0: 30s)")
	fs.TextVar(&logLevel, "log-level", slog.LevelInfo, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "dpsemu: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	opts.Hubs = strings.Split(hubs, ",")
	opts.AssignAfterPolls = &polls
	opts.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: logLevel}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := dpsemu.Run(ctx, opts, func(a dpsemu.Addrs) {
		line, _ := json.Marshal(a) // three strings always encode
		fmt.Println(string(line))
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "dpsemu: %v\n", err)
		return 1
	}
	return 0
}
