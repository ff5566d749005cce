package hubemu

import (
	"crypto/x509"
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
	// until is when the credential runs out and the connection is closed:
	// a token's expiry plus the grace, a certificate's notAfter.
	until time.Time
	// by says how the device authenticated, for the log.
	by string
}

// authenticateLocked checks a CONNECT against the registry (§10): client ID
// = device ID, user name "{hub}/{deviceId}/?api-version=…", and either a
// password that is a device-scoped SAS token (§4.2) signed with the
// device's key, or an empty password and a TLS client certificate (peer,
// leaf first) that chains to ClientCAs and names the device. The error
// says why, for the log; it never contains the token.
func (s *Server) authenticateLocked(clientID, username, password string, peer []*x509.Certificate, now time.Time) (grant, error) {
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
	if password == "" {
		return s.authenticateCertificate(deviceID, d, peer, now)
	}
	tok, err := sas.Parse(password)
	if err != nil {
		return grant{}, fmt.Errorf("password: %w", err)
	}
	if tok.KeyName != "" {
		// skn names a hub-level shared access policy; devices sign without.
		return grant{}, errors.New("token names a shared access policy (skn)")
	}
	if err := tok.Verify(d.key, sas.DeviceResource(d.hub, deviceID), now, s.grace); err != nil {
		return grant{}, fmt.Errorf("token: %w", err)
	}
	return grant{deviceID: deviceID, until: tok.Expiry.Add(s.grace), by: "sas"}, nil
}

// authenticateCertificate accepts a client certificate that verifies to
// ClientCAs at now, for client authentication, whose common name is the
// name the device's certificates carry (its registration ID).
func (s *Server) authenticateCertificate(deviceID string, d *device, peer []*x509.Certificate, now time.Time) (grant, error) {
	switch {
	case len(peer) == 0:
		return grant{}, errors.New("empty password and no client certificate")
	case s.clientCAs == nil:
		return grant{}, errors.New("client certificate offered, but this hub trusts no device CA")
	}
	leaf := peer[0]
	inter := x509.NewCertPool()
	for _, c := range peer[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         s.clientCAs,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return grant{}, fmt.Errorf("client certificate: %w", err)
	}
	if want := d.certName(deviceID); !strings.EqualFold(leaf.Subject.CommonName, want) {
		return grant{}, fmt.Errorf("client certificate names %q, want %q", leaf.Subject.CommonName, want)
	}
	return grant{deviceID: deviceID, until: leaf.NotAfter, by: "x509"}, nil
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
