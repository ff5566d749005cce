package cli

import (
	"errors"
	"fmt"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/client"
)

// TestRefused: dpsd wait gives up at once on what waiting cannot change,
// and keeps waiting through what a restarting daemon says.
func TestRefused(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"permission denied", fmt.Errorf("%w on /run/dpsd/status.sock", client.ErrPermission), true},
		{"impostor on the socket", fmt.Errorf("%w: served by uid 2001", client.ErrImpostor), true},
		{"403", &client.APIError{StatusCode: 403}, true},
		{"404", &client.APIError{StatusCode: 404}, true},
		{"503 still starting", &client.APIError{StatusCode: 503}, false},
		{"watch ended by a stopping daemon", client.ErrWatchEnded, false},
		{"not running", errors.New("dial unix /run/dpsd/status.sock: connect: connection refused"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := refused(tt.err); got != tt.want {
				t.Errorf("refused(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
