package hubemu

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/sas"
)

// grant is what an accepted CONNECT proves.
type grant struct {
	deviceID string
	expiry   time.Time // of the token; the connection lives until expiry+grace
}

// authenticateLocked checks a CONNECT against the registry (§10): client ID
// = device ID, user name "{hub}/{deviceId}/?api-version=…", password a
// device-scoped SAS token (§4.2) signed with the device's key. The error
// says why, for the log; it never contains the token.
func (s *Server) authenticateLocked(clientID, username, password string, now time.Time) (grant, error) {
	hub, deviceID, err := parseUsername(username)
	if err != nil {
		return grant{}, err
	}
	if deviceID != clientID {
		return grant{}, fmt.Errorf("user name names device %q but the client ID is %q", deviceID, clientID)
	}
	if len(s.hubs) > 0 && !containsFold(s.hubs, hub) {
		return grant{}, fmt.Errorf("hub %q is not served here", hub)
	}
	d, ok := s.devices[deviceID]
	switch {
	case !ok:
		return grant{}, errors.New("unknown device")
	case !d.enabled:
		return grant{}, errors.New("device disabled")
	case !strings.EqualFold(d.hub, hub):
		return grant{}, fmt.Errorf("device belongs to hub %q", d.hub)
	}
	tok, err := sas.Parse(password)
	if err != nil {
		return grant{}, fmt.Errorf("password: %w", err)
	}
	if tok.KeyName != "" {
		// skn names a hub-level shared access policy; devices sign without.
		return grant{}, errors.New("token names a shared access policy (skn)")
	}
	if err := tok.Verify(d.key, d.hub+"/devices/"+deviceID, now, s.grace); err != nil {
		return grant{}, fmt.Errorf("token: %w", err)
	}
	return grant{deviceID: deviceID, expiry: tok.Expiry}, nil
}

// parseUsername splits "{hub}/{deviceId}/?api-version=V[&…]" and the old
// form without "?" ("{hub}/{deviceId}/api-version=V"). Any api-version
// value is accepted, but one must be present; other parameters
// (DeviceClientType, model-id) are ignored.
func parseUsername(u string) (hub, deviceID string, err error) {
	hub, rest, ok := strings.Cut(u, "/")
	if !ok || hub == "" {
		return "", "", fmt.Errorf("user name %q is not {hub}/{deviceId}/?api-version=…", u)
	}
	deviceID, params, ok := strings.Cut(rest, "/")
	if !ok || deviceID == "" {
		return "", "", fmt.Errorf("user name %q is not {hub}/{deviceId}/?api-version=…", u)
	}
	// A malformed pair (model-id values carry a raw ';') is skipped, not fatal.
	q, _ := url.ParseQuery(strings.TrimPrefix(params, "?"))
	if q.Get("api-version") == "" {
		return "", "", fmt.Errorf("user name %q carries no api-version", u)
	}
	return hub, deviceID, nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
