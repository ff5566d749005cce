package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/client"
)

// waitPoll is how often wait asks the daemon: often enough that units
// ordered after provisioning start promptly, and cheap, since a status
// answer costs the daemon no TPM command and no I/O.
const waitPoll = 250 * time.Millisecond

func waitCommand() command {
	return command{
		name:    "wait",
		args:    "[--timeout D] [--config F] [--socket PATH]",
		summary: "Block until the device is provisioned (exit 0), or give up (exit 1).",
		detail: "Waits through daemon restarts and failed attempts, which the daemon retries, and tells stderr of each\n" +
			"change of state. Gives up at --timeout, or at once when waiting cannot succeed (permission denied).",
		client: true,
		setup: func(fs *flag.FlagSet, e *env) func(context.Context) int {
			timeout := fs.Duration("timeout", 0, "give up after this long (0: wait forever)")
			return func(ctx context.Context) int {
				if *timeout < 0 {
					fmt.Fprintln(e.stderr, "dpsd wait: --timeout must not be negative")
					return ExitUsage
				}
				if *timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, *timeout)
					defer cancel()
				}
				return e.wait(ctx, e.client(), *timeout)
			}
		},
	}
}

// wait polls the status until provisioned, telling stderr about each change
// of state so that a unit's journal shows what it waited for.
func (e *env) wait(ctx context.Context, c *client.Client, timeout time.Duration) int {
	var last string
	for {
		st, err := c.Status(ctx)
		var seen string
		switch {
		case err == nil && st.State == apitype.StateProvisioned:
			fmt.Fprintf(e.stdout, "provisioned: device %s on %s\n", orDash(st.DeviceID), orDash(st.AssignedHub))
			return ExitOK
		case err == nil:
			seen = "state " + string(st.State)
			if st.LastError != nil && *st.LastError != "" {
				seen += ": " + *st.LastError
			}
		case ctx.Err() != nil:
			// The deadline cut the request itself short; reported below.
		case refused(err):
			return e.fail("wait", err)
		default:
			// Not running, restarting, or gone mid-answer: the daemon will
			// be back (systemd restarts it); keep waiting.
			seen = err.Error()
		}
		if seen != "" && seen != last {
			fmt.Fprintf(e.stderr, "dpsd wait: %s\n", seen)
			last = seen
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				fmt.Fprintf(e.stderr, "dpsd wait: not provisioned after %s (%s)\n", timeout, orDash(last))
			} else {
				fmt.Fprintln(e.stderr, "dpsd wait: interrupted")
			}
			return ExitFailure
		case <-time.After(waitPoll):
		}
	}
}

// refused reports whether the daemon turned the caller away: waiting longer
// cannot help (permission denied, a request it does not serve).
func refused(err error) bool {
	var api *client.APIError
	return errors.Is(err, client.ErrPermission) ||
		errors.As(err, &api) && api.StatusCode >= 400 && api.StatusCode < 500
}
