package hubemu

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"strings"
	"testing"
	"time"

	"github.com/dpsd-project/dpsd/daemon/sas"
)

// FuzzAuthenticate feeds arbitrary CONNECT credentials to the hub's
// authentication: it must never panic, and must grant a connection only to
// the enrolled device with a token signed by its key.
func FuzzAuthenticate(f *testing.F) {
	const hub, device = "hub.example", "dev-1"
	key := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	good, err := sas.New(context.Background(), sas.DeviceResource(hub, device), now.Add(time.Hour), "",
		func(_ context.Context, data []byte) ([]byte, error) {
			m := hmac.New(sha256.New, key)
			m.Write(data)
			return m.Sum(nil), nil
		})
	if err != nil {
		f.Fatal(err)
	}
	user := hub + "/" + device + "/?api-version=2021-04-12"
	f.Add(device, user, good)
	f.Add(device, hub+"/"+device+"/api-version=2016-11-14", good)
	f.Add(device, user, strings.Replace(good, "sig=", "sig=A", 1))
	f.Add("other", hub+"/other/?api-version=1", good)
	f.Add(device, "/", "")
	f.Add(device, user+"&model-id=dtmi:x;1", good+"&skn=policy")

	s := New(Options{Hubs: []string{hub}})
	s.UpsertDevice(hub, device, key)
	f.Fuzz(func(t *testing.T, clientID, username, password string) {
		s.mu.Lock()
		g, err := s.authenticateLocked(clientID, username, password, nil, now)
		s.mu.Unlock()
		if err != nil {
			return
		}
		if g.deviceID != device || clientID != device {
			t.Fatalf("granted %q to client %q", g.deviceID, clientID)
		}
		tok, perr := sas.Parse(password)
		if perr != nil || tok.Verify(key, sas.DeviceResource(hub, device), now, s.grace) != nil {
			t.Fatalf("granted a connection to a token that does not verify: %q", password)
		}
	})
}
