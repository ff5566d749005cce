package harness_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/internal/harness"
)

// A stand-in for dpsemu: sh prints the ready line, then becomes a process
// that ignores SIGTERM (an ignored signal stays ignored across exec).
func TestDpsemuReadyLineAndKill(t *testing.T) {
	t.Parallel()
	e, err := harness.StartDpsemu("/bin/sh", "-c",
		`trap "" TERM; echo '{"DPS":"127.0.0.1:1","Hub":"127.0.0.1:2","Admin":"127.0.0.1:3"}'; echo after; exec sleep 600`)
	if err != nil {
		t.Fatal(err)
	}
	if e.DPS != "127.0.0.1:1" || e.Hub != "127.0.0.1:2" || e.Admin != "127.0.0.1:3" {
		t.Errorf("addresses %q %q %q", e.DPS, e.Hub, e.Admin)
	}
	if err := e.Stop(100 * time.Millisecond); !errors.Is(err, harness.ErrKilled) {
		t.Errorf("Stop of a process that ignores SIGTERM: %v, want ErrKilled", err)
	}
	if err := e.Stop(time.Minute); !errors.Is(err, harness.ErrKilled) {
		t.Errorf("a second Stop: %v, want the first one's answer", err)
	}
}

func TestDpsemuWithoutReadyLine(t *testing.T) {
	t.Parallel()
	for _, script := range []string{`echo "listening on :1"; exec sleep 600`, `echo broken >&2; exit 3`} {
		_, err := harness.StartDpsemu("/bin/sh", "-c", script)
		if err == nil || !strings.Contains(err.Error(), "ready line") {
			t.Errorf("%s: %v, want an error about the ready line", script, err)
		}
	}
}
