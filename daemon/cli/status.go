package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
)

// callTimeout bounds one quick exchange with the daemon.
const callTimeout = 30 * time.Second

func statusCommand() command {
	return command{
		name:    "status",
		args:    "[--json] [--watch] [--config F] [--socket PATH]",
		summary: "Show the state, hub, device ID, last error, next attempt and TPM facts.",
		detail:  "With --watch, shows the status again at each change until interrupted (with --json: one JSON line each).",
		client:  true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			asJSON := fs.Bool("json", false, "print the status API's JSON")
			watch := fs.Bool("watch", false, "show each change of the status until interrupted")
			return func(ctx context.Context) int {
				if *watch {
					return e.watchStatus(ctx, *asJSON)
				}
				ctx, cancel := context.WithTimeout(ctx, callTimeout)
				defer cancel()
				st, err := e.client().Status(ctx)
				if err != nil {
					return e.fail("status", err)
				}
				if *asJSON {
					return e.printJSON("status", st)
				}
				renderStatus(e.stdout, st, e.now())
				return ExitOK
			}
		},
	}
}

// watchStatus is `dpsd status --watch`: the status at once, then again at
// each change, until interrupted (exit 0) or the daemon goes away (exit 1).
// On a terminal each view replaces the last.
func (e *env) watchStatus(ctx context.Context, asJSON bool) int {
	redraw := isTerminal(e.stdout)
	err := e.client().Watch(ctx, func(st apitype.Status) error {
		if asJSON {
			b, err := json.Marshal(st)
			if err != nil {
				return fmt.Errorf("encoding JSON: %w", err)
			}
			fmt.Fprintf(e.stdout, "%s\n", b)
			return nil
		}
		if redraw {
			fmt.Fprint(e.stdout, "\x1b[H\x1b[2J")
		} else {
			fmt.Fprintln(e.stdout, "---")
		}
		renderStatus(e.stdout, st, e.now())
		return nil
	})
	if ctx.Err() != nil {
		return ExitOK
	}
	return e.fail("status", err)
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// printJSON writes v as indented JSON, the same bytes for every --json.
func (e *env) printJSON(verb string, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return e.fail(verb, fmt.Errorf("encoding JSON: %w", err))
	}
	fmt.Fprintf(e.stdout, "%s\n", b)
	return ExitOK
}

// renderStatus is the technician's view of a Status: a headline that says
// at once whether the device has an identity, then the facts, then what to
// do when something is wrong.
func renderStatus(w io.Writer, st apitype.Status, now time.Time) {
	fmt.Fprintln(w, headline(st, now))
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }

	state := string(st.State)
	if st.Reason != "" {
		state += " (reason: " + string(st.Reason) + ")"
	}
	row("State", state)
	row("Device ID", orDash(st.DeviceID))
	row("Hub", orDash(st.AssignedHub))
	row("Hub check", hubCheck(st.Hub, now))
	if cr := st.Credential; cr.Type == apitype.CredentialX509 {
		row("Certificate", certificate(cr))
		row("Valid until", timeOrDash(cr.NotAfter, now))
		row("Renew at", timeOrDash(cr.RenewAt, now))
	}
	row("Registration ID", orDash(st.RegistrationID))
	row("ID scope", orDash(st.IDScope))
	if reregistering(st) {
		row("Provisioned before", timeOrDash(st.ProvisionedAt, now))
	} else {
		row("Provisioned at", timeOrDash(st.ProvisionedAt, now))
	}
	row("Attempts", fmt.Sprint(st.Attempts))
	lastErr := "-"
	if st.LastError != nil && *st.LastError != "" {
		lastErr = *st.LastError
	}
	row("Last error", lastErr)
	row("Next attempt", timeOrDash(st.NextAttemptAt, now))
	row("TPM", fmt.Sprintf("%s (%d commands since start)", orDash(st.TPM.Device), st.TPM.Commands))
	row("Ownership", ownership(st.TPM))
	row("EK digest", orDash(st.TPM.EKDigest))
	row("SRK Name", orDash(st.TPM.SRKName))
	row("Version", orDash(st.Version))
	_ = tw.Flush()
	if hint := statusHint(st); hint != "" {
		fmt.Fprintf(w, "\n%s\n", hint)
	}
}

// reregistering reports whether a device that was provisioned is being
// provisioned again (a TPM clear, a request, a config change, a hub
// rejection): not the same as a device that never was.
func reregistering(st apitype.Status) bool {
	return st.State != apitype.PhaseProvisioned && st.ProvisionedAt != nil && !st.ProvisionedAt.IsZero()
}

// headline is the first line: the answer to "does this device work?".
func headline(st apitype.Status, now time.Time) string {
	if reregistering(st) {
		s := "Re-registering"
		if st.Reason != "" {
			s += " (" + string(st.Reason) + ")"
		}
		s += ": " + progress(st, now)
		return s + fmt.Sprintf("; provisioned before as device %s on %s, %s",
			orDash(st.DeviceID), orDash(st.AssignedHub), relative(*st.ProvisionedAt, now))
	}
	switch st.State {
	case apitype.PhaseProvisioned:
		s := fmt.Sprintf("Provisioned: device %s on %s", orDash(st.DeviceID), orDash(st.AssignedHub))
		if st.Hub.Result != "" && st.Hub.Result != apitype.HubOK {
			s += " (hub check: " + string(st.Hub.Result) + ")"
		}
		return s
	case apitype.PhaseFailed, apitype.PhaseDisabled:
		return "Not provisioned: " + progress(st, now)
	}
	return "Not provisioned yet: " + progress(st, now)
}

// progress says where a device that is not provisioned stands.
func progress(st apitype.Status, now time.Time) string {
	switch st.State {
	case apitype.PhaseFailed, apitype.PhaseDisabled:
		s := string(st.State)
		if st.NextAttemptAt != nil {
			s += ", next attempt " + relative(*st.NextAttemptAt, now)
		}
		return s
	}
	return describeState(st.State)
}

// describeState says what the daemon is busy with, in words.
func describeState(s apitype.Phase) string {
	switch s {
	case apitype.PhaseStarting:
		return "starting"
	case apitype.PhaseWaitingForTPM:
		return "waiting for the TPM device to appear"
	case apitype.PhaseWaitingForTime:
		return "waiting for the system clock to be set"
	case apitype.PhaseTakingOwnership:
		return "taking ownership of the TPM and creating the SRK"
	case apitype.PhaseRegistering:
		return "registering with DPS"
	case apitype.PhaseAssigning:
		return "waiting for DPS to assign a hub"
	}
	return string(s)
}

// statusHint is what a technician can do about the current state.
func statusHint(st apitype.Status) string {
	switch st.State {
	case apitype.PhaseDisabled:
		return "DPS says the enrollment is disabled: enable it in the DPS enrollment, then run: sudo dpsd reprovision"
	case apitype.PhaseFailed:
		return "The daemon retries by itself. To find the cause: dpsd check; journalctl -u dpsd"
	case apitype.PhaseWaitingForTPM:
		return "No usable TPM yet: dpsd check shows why (device, permissions, udev)."
	case apitype.PhaseWaitingForTime:
		return "The clock is before this build's date: check time sync (timedatectl status)."
	}
	if st.TPM.InLockout {
		return "The TPM is in dictionary-attack lockout: wait for it to recover or clear it as the owner."
	}
	if st.Hub.Result == apitype.HubRejected {
		return "The hub refused the credential: the daemon provisions again; dpsd check for details."
	}
	return ""
}

func hubCheck(h apitype.HubStatus, now time.Time) string {
	if h.Result == "" {
		return "not checked yet"
	}
	s := string(h.Result)
	if h.CheckedAt != nil {
		s += ", " + relative(*h.CheckedAt, now)
	}
	if h.Connected {
		s += ", connected"
	}
	if h.Error != "" {
		s += ": " + h.Error
	}
	return s
}

func ownership(t apitype.TPMStatus) string {
	if t.EKDigest == "" && !t.OwnerAuthSet && !t.InLockout {
		return "unknown (the TPM has not been read yet)"
	}
	parts := []string{"owner auth not set"}
	if t.OwnerAuthSet {
		parts[0] = "owner auth set"
	}
	if t.InLockout {
		parts = append(parts, "IN LOCKOUT")
	} else {
		parts = append(parts, "not in lockout")
	}
	return strings.Join(parts, ", ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// certificate is the x509 credential in one line; "-" before one is issued.
func certificate(cr apitype.Credential) string {
	if cr.Subject == "" {
		return "none issued yet (x509)"
	}
	s := cr.Subject + ", serial " + cr.Serial
	if cr.KeyHandle != "" {
		s += ", key at " + cr.KeyHandle
	}
	return s
}

func timeOrDash(t *time.Time, now time.Time) string {
	if t == nil || t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + relative(*t, now) + ")"
}

// relative is "in 1m30s", "2h05m ago" or "now".
func relative(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	switch {
	case d > 0:
		return "in " + shortDuration(d)
	case d < 0:
		return shortDuration(-d) + " ago"
	}
	return "now"
}

// shortDuration is a positive duration to the second under an hour, to the
// minute above: "45s", "1m30s", "2h05m", "50h00m".
func shortDuration(d time.Duration) string {
	switch {
	case d >= time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%ds", int(d.Seconds()))
}
