package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
)

// checkCallTimeout outlasts the daemon's own bound on a check.
const checkCallTimeout = 3 * time.Minute

func checkCommand() command {
	return command{
		name:    "check",
		args:    "[--json] [--config F] [--socket PATH]",
		summary: "Diagnose the device; each check passes, warns or fails with a one-line fix (exit 1 on a failure).",
		detail: "Checks: config, TPM device and permissions, resource manager, EK and its certificate, SRK, ownership,\n" +
			"dictionary-attack lockout, identity key, state directory, DNS and TLS to DPS, clock, TLS to the hub.\n" +
			"Asks the daemon, or checks by itself when it is not running.",
		client: true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			asJSON := fs.Bool("json", false, "print the check API's JSON")
			return func(ctx context.Context) int {
				ctx, cancel := context.WithTimeout(ctx, checkCallTimeout)
				defer cancel()
				c := e.client()
				rep, err := c.Check(ctx)
				if errors.Is(err, client.ErrNotRunning) && e.app.Standalone != nil {
					rep = e.app.Standalone.Check(ctx, e.configPath, c.Socket(), e.stderr)
				} else if err != nil {
					return e.fail("check", err)
				}
				if *asJSON {
					if code := e.printJSON("check", rep); code != ExitOK {
						return code
					}
				} else {
					renderChecks(e.stdout, rep)
				}
				if rep.Failed() {
					return ExitFailure
				}
				return ExitOK
			}
		},
	}
}

// renderChecks prints one line per check and its fix under it.
func renderChecks(w io.Writer, rep apitype.CheckReport) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	counts := map[apitype.CheckStatus]int{}
	for _, c := range rep.Checks {
		counts[c.Status]++
		label := map[apitype.CheckStatus]string{apitype.CheckPass: "PASS", apitype.CheckWarn: "WARN", apitype.CheckFail: "FAIL"}[c.Status]
		fmt.Fprintf(tw, "%s\t%s\t%s\n", label, c.Name, c.Detail)
		if c.Fix != "" && c.Status != apitype.CheckPass {
			fmt.Fprintf(tw, "\t\tfix: %s\n", c.Fix)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d passed, %d with warnings, %d failed\n",
		counts[apitype.CheckPass], counts[apitype.CheckWarn], counts[apitype.CheckFail])
}

func enrollInfoCommand() command {
	return command{
		name:    "enroll-info",
		args:    "[--json] [--config F] [--socket PATH]",
		summary: "Print what a DPS individual enrollment needs: registration ID, EK public, EK certificate.",
		detail: "The EK public is the base64 of its marshalled TPM2B_PUBLIC, as DPS stores it. Asks the daemon, or reads\n" +
			"the TPM itself when it is not running: it never takes ownership, and creates the EK (as dpsd's first start\n" +
			"would) only when that needs no password.",
		client: true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			asJSON := fs.Bool("json", false, "print the enroll-info API's JSON")
			return func(ctx context.Context) int {
				ctx, cancel := context.WithTimeout(ctx, callTimeout)
				defer cancel()
				info, err := e.client().EnrollInfo(ctx)
				if errors.Is(err, client.ErrNotRunning) && e.app.Standalone != nil {
					info, err = e.app.Standalone.EnrollInfo(ctx, e.configPath, e.stderr)
				}
				if err != nil {
					return e.fail("enroll-info", err)
				}
				if *asJSON {
					return e.printJSON("enroll-info", info)
				}
				renderEnrollInfo(e.stdout, info)
				return ExitOK
			}
		},
	}
}

func renderEnrollInfo(w io.Writer, info apitype.EnrollInfo) {
	fmt.Fprintf(w, "Registration ID:  %s\n", info.RegistrationID)
	fmt.Fprintf(w, "Endorsement key:  %s\n", info.EndorsementKey)
	if info.EKCertificate == "" {
		fmt.Fprintln(w, "EK certificate:   none")
		return
	}
	fmt.Fprintf(w, "EK certificate:\n%s", info.EKCertificate)
}
