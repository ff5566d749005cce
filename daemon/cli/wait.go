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

// waitRetry is how soon wait watches again after the daemon went away or
// could not be reached: systemd restarts it, or socket activation starts
// it at the next connection. Changes themselves are pushed by the daemon
// (GET /v1/watch), not polled.
const waitRetry = 250 * time.Millisecond

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

// errProvisioned ends a watch that saw the device provisioned.
var errProvisioned = errors.New("provisioned")

// wait watches the status until provisioned, telling stderr about each
// change of state so that a unit's journal shows what it waited for.
func (e *env) wait(ctx context.Context, c *client.Client, timeout time.Duration) int {
	var last string
	report := func(seen string) {
		if seen != "" && seen != last {
			fmt.Fprintf(e.stderr, "dpsd wait: %s\n", seen)
			last = seen
		}
	}
	for {
		err := c.Watch(ctx, func(st apitype.Status) error {
			if st.State == apitype.PhaseProvisioned {
				fmt.Fprintf(e.stdout, "provisioned: device %s on %s\n", orDash(st.DeviceID), orDash(st.AssignedHub))
				return errProvisioned
			}
			seen := "state " + string(st.State)
			if st.LastError != nil && *st.LastError != "" {
				seen += ": " + *st.LastError
			}
			report(seen)
			return nil
		})
		switch {
		case errors.Is(err, errProvisioned):
			return ExitOK
		case ctx.Err() != nil:
			// The deadline cut the watch short; reported below.
		case refused(err):
			return e.fail("wait", err)
		case !errors.Is(err, client.ErrWatchEnded):
			// Not running, restarting, or gone mid-answer: the daemon will
			// be back (systemd restarts it); keep waiting.
			report(err.Error())
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				fmt.Fprintf(e.stderr, "dpsd wait: not provisioned after %s (%s)\n", timeout, orDash(last))
			} else {
				fmt.Fprintln(e.stderr, "dpsd wait: interrupted")
			}
			return ExitFailure
		case <-time.After(waitRetry):
		}
	}
}

// refused reports whether the daemon turned the caller away, or the socket
// is not dpsd's: waiting longer cannot help (permission denied, a request
// it does not serve, an impostor holding the socket path).
func refused(err error) bool {
	var api *client.APIError
	return errors.Is(err, client.ErrPermission) || errors.Is(err, client.ErrImpostor) ||
		errors.As(err, &api) && api.StatusCode >= 400 && api.StatusCode < 500
}
