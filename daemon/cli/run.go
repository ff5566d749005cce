package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/dpsd-project/dpsd/daemon/config"
	"github.com/dpsd-project/dpsd/daemon/version"
)

func runCommand() command {
	return command{
		name:    "run",
		args:    "[--config F] [--log-level L]",
		summary: "Run the daemon (normally started by systemd as dpsd.service).",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			fs.StringVar(&e.configPath, "config", DefaultConfigPath, "config `file`; drop-ins are read from config.d/ beside it")
			level := fs.String("log-level", "info", "debug, info, warn or error")
			return func(ctx context.Context) int {
				var lvl slog.Level
				if err := lvl.UnmarshalText([]byte(*level)); err != nil {
					fmt.Fprintf(e.stderr, "dpsd run: bad --log-level %q: want debug, info, warn or error\n", *level)
					return ExitUsage
				}
				if e.app.Run == nil {
					return e.fail("run", errors.New("this binary was built without the daemon"))
				}
				if err := e.app.Run(ctx, e.configPath, newLogger(e.stderr, lvl)); err != nil {
					e.fail("run", err)
					if errors.Is(err, config.ErrUnusable) {
						return ExitConfig
					}
					return ExitFailure
				}
				return ExitOK
			}
		},
	}
}

func checkConfigCommand() command {
	return command{
		name:    "check-config",
		args:    "[--config F]",
		summary: "Parse and validate the config and its drop-ins (errors name file, line and key).",
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			fs.StringVar(&e.configPath, "config", DefaultConfigPath, "config `file`; drop-ins are read from config.d/ beside it")
			return func(context.Context) int {
				cfg, err := config.Load(e.configPath)
				if err != nil {
					fmt.Fprintln(e.stderr, err)
					return ExitFailure
				}
				fmt.Fprintf(e.stdout, "config valid: %s\n", strings.Join(cfg.Files, ", "))
				return ExitOK
			}
		},
	}
}

func versionCommand() command {
	return command{
		name:    "version",
		args:    "",
		summary: "Print the version, commit and Go version.",
		setup: func(_ *flag.FlagSet, e *env) func(context.Context) int {
			return func(context.Context) int {
				fmt.Fprintln(e.stdout, version.String())
				return ExitOK
			}
		},
	}
}
