package cli

import (
	"context"
	"flag"
	"fmt"
)

func tokenCommand() command {
	return command{
		name:    "token",
		args:    "[--ttl D] [--json] [--config F] [--socket PATH]",
		summary: "Print a hub SAS token signed in the TPM, for apps on the device.",
		detail:  "For root and the users and @groups of [token] allow. Without --json, prints only the token.",
		client:  true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			ttl := fs.Duration("ttl", 0, "lifetime of the token, at most [token] max_ttl (0: the daemon's default, 1h)")
			asJSON := fs.Bool("json", false, "print the token with its hub, device ID and expiry as JSON")
			return func(ctx context.Context) int {
				if *ttl < 0 {
					fmt.Fprintln(e.stderr, "dpsd token: --ttl must not be negative")
					return ExitUsage
				}
				ctx, cancel := context.WithTimeout(ctx, callTimeout)
				defer cancel()
				tok, err := e.client().Token(ctx, *ttl)
				if err != nil {
					return e.fail("token", err)
				}
				if *asJSON {
					return e.printJSON("token", tok)
				}
				fmt.Fprintln(e.stdout, tok.SAS)
				return ExitOK
			}
		},
	}
}

func reprovisionCommand() command {
	return command{
		name:    "reprovision",
		args:    "[--config F] [--socket PATH]",
		summary: "Force a new registration with DPS (root only).",
		detail:  "The old identity stays in use until DPS assigns the new one; the status then shows reason \"requested\".",
		client:  true,
		setup: func(_ *flag.FlagSet, e *env) func(context.Context) int {
			return func(ctx context.Context) int {
				ctx, cancel := context.WithTimeout(ctx, callTimeout)
				defer cancel()
				if _, err := e.client().Reprovision(ctx); err != nil {
					return e.fail("reprovision", err)
				}
				// The state may not have moved yet: the engine takes the
				// request at its next step.
				fmt.Fprintln(e.stdout, "re-provisioning requested; follow it with: dpsd status")
				return ExitOK
			}
		},
	}
}
