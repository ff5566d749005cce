// Package sdnotify tells systemd what the daemon is doing: READY=1 when it
// serves, STATUS= on each phase, STOPPING=1 on shutdown and WATCHDOG=1 while
// it is alive. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
package sdnotify

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends state changes to the service manager.
type Notifier struct {
	log *slog.Logger
}

// New returns a Notifier that logs (at debug level) when a message cannot be
// delivered; systemd treats a lost STATUS as harmless, so callers need not.
func New(log *slog.Logger) *Notifier { return &Notifier{log: log} }

func (n *Notifier) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Debug("sd_notify failed", "state", state, "err", err)
	}
}

// Ready reports that the daemon is up: config read, state loaded, TPM and
// status socket usable (not that the device is provisioned).
func (n *Notifier) Ready() { n.send(daemon.SdNotifyReady) }

// Stopping reports the start of a clean shutdown.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Status sets the one-line text that `systemctl status dpsd` shows.
func (n *Notifier) Status(text string) {
	// A newline would end the STATUS= assignment early.
	n.send("STATUS=" + strings.ReplaceAll(text, "\n", " "))
}

// Watchdog pings the service manager at half the interval it asked for
// (WATCHDOG_USEC) until ctx ends, skipping a ping whenever healthy (may be
// nil) says the daemon is stuck, so that systemd restarts it. It returns at
// once when no watchdog is set.
func (n *Notifier) Watchdog(ctx context.Context, healthy func() bool) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if healthy != nil && !healthy() {
				n.log.Error("not feeding the watchdog: the daemon is stuck")
				continue
			}
			n.send(daemon.SdNotifyWatchdog)
		}
	}
}
