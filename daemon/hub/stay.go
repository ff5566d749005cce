package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/dpsd-project/dpsd/daemon/backoff"
	paho "github.com/eclipse/paho.mqtt.golang"
)

// Handlers serve the direct methods of a kept session. A nil handler makes
// its method unknown (404). Handlers run on their own goroutine and get
// Stay's context; Stay does not wait for them to return.
type Handlers struct {
	// Reprovision is called after the hub has been answered 200 for the
	// method "reprovision"; it re-registers the device with DPS.
	Reprovision func(ctx context.Context) error
	// Status returns the body of the answer to the method "status" (the
	// daemon's status, encoded as JSON).
	Status func() any
}

// reconnect spaces the reconnection attempts (jittered).
var reconnect = backoff.Policy{Base: time.Second, Max: 5 * time.Minute}

// stableSession: a session that lasted this long resets the backoff.
const stableSession = time.Minute

// Stay keeps a session with the hub until ctx ends (then it returns nil):
// it reports the reported properties once (unless nil), answers direct
// methods, opens a new connection with a fresh token before the current
// one expires, and reconnects with backoff and jitter after a network
// failure. It returns an error wrapping ErrRejected as soon as the hub
// refuses the credentials, and one wrapping the signer's error when
// signing fails (the TPM key may be gone: retrying cannot help). onState
// (may be nil) is called after each connection (token renewals included)
// with connected = true, and after each failure or loss with the reason.
func Stay(ctx context.Context, cfg Config, reported map[string]any, h Handlers, onState func(connected bool, err error)) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if onState == nil {
		onState = func(bool, error) {}
	}
	log := cfg.logger().With("hub", cfg.Hub, "device", cfg.DeviceID)
	var failures int
	for {
		c, _, err := connect(ctx, cfg, &h)
		if ctx.Err() != nil {
			if err == nil {
				c.close()
			}
			return nil
		}
		if err != nil {
			onState(false, err)
			if errors.Is(err, ErrRejected) || errors.As(err, new(signError)) {
				return err
			}
			failures++
			delay := reconnect.Jittered(failures)
			log.Info("hub unreachable, retrying", "attempt", failures, "in", delay, "err", err)
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		onState(true, nil)
		up := time.Now()

		if reported != nil {
			if err := c.report(ctx, reported); err != nil {
				// Reported again on the next connection.
				c.log.Warn("reporting twin properties failed", "err", err)
			} else {
				reported = nil
			}
		}

		// At 80 % of the token's life; never sooner than a second, so that
		// a tiny TTL cannot make a reconnection storm.
		renew := time.NewTimer(max(c.expiry.Sub(cfg.now())*4/5, time.Second))
		select {
		case <-ctx.Done():
			renew.Stop()
			c.close()
			return nil
		case <-renew.C:
			// The hub closes a connection whose token expired, and MQTT
			// cannot carry a new one: reconnect with a fresh token.
			c.log.Info("renewing the hub token")
			c.close()
			failures = 0
		case <-c.lost:
			renew.Stop()
			onState(false, fmt.Errorf("connection to hub %s lost: %w", cfg.Hub, c.err))
			if time.Since(up) >= stableSession {
				failures = 0
			}
			failures++
			delay := reconnect.Jittered(failures)
			log.Info("connection to the hub lost, reconnecting", "attempt", failures, "in", delay, "err", c.err)
			if !sleep(ctx, delay) {
				return nil
			}
		}
	}
}

// sleep waits d or until ctx ends; it reports whether d elapsed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// onMethod answers $iothub/methods/POST/{name}/?$rid={rid}.
func (c *conn) onMethod(ctx context.Context, h Handlers, m paho.Message) {
	path, query, _ := strings.Cut(m.Topic(), "?")
	name := strings.TrimSuffix(strings.TrimPrefix(path, "$iothub/methods/POST/"), "/")
	params, err := url.ParseQuery(query)
	rid := params.Get("$rid")
	if err != nil || rid == "" {
		c.log.Warn("malformed direct method request", "topic", m.Topic())
		return
	}
	c.log.Info("direct method called", "method", name)

	switch {
	case name == "reprovision" && h.Reprovision != nil:
		// Answer first: re-provisioning replaces the credential, and this
		// connection with it.
		c.answer(ctx, rid, 200, []byte("{}"))
		if err := h.Reprovision(ctx); err != nil {
			c.log.Warn("re-provisioning requested by the hub failed", "err", err)
		}
	case name == "status" && h.Status != nil:
		body, err := json.Marshal(h.Status())
		if err != nil {
			c.answer(ctx, rid, 500, errorBody(fmt.Errorf("encoding status: %w", err)))
			return
		}
		c.answer(ctx, rid, 200, body)
	default:
		c.answer(ctx, rid, 404, errorBody(fmt.Errorf("unknown method %q", name)))
	}
}

// answer publishes $iothub/methods/res/{status}/?$rid={rid}.
func (c *conn) answer(ctx context.Context, rid string, status int, body []byte) {
	topic := fmt.Sprintf("$iothub/methods/res/%d/?$rid=%s", status, url.QueryEscape(rid))
	if err := c.wait(ctx, c.client.Publish(topic, 1, false, body)); err != nil && ctx.Err() == nil {
		c.log.Warn("answering a direct method failed", "status", status, "err", err)
	}
}

func errorBody(err error) []byte {
	b, _ := json.Marshal(map[string]string{"message": err.Error()})
	return b
}
