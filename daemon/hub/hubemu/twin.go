package hubemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// Limits of the reported properties, as the hub documents them.
const (
	maxTwinBytes = 32 << 10 // the whole reported document
	maxTwinDepth = 10       // nesting of JSON objects
)

// twinGet answers $iothub/twin/GET with the whole twin (§10).
func (s *Server) twinGet(cl *mqtt.Client, rid string) {
	s.mu.Lock()
	d, ok := s.devices[cl.ID]
	var body []byte
	var err error
	if ok {
		reported := maps.Clone(d.reported)
		reported["$version"] = d.reportedVersion
		body, err = json.Marshal(map[string]any{
			"desired":  map[string]any{"$version": 1},
			"reported": reported,
		})
	}
	s.mu.Unlock()
	if !ok {
		// Deleted while connected; the connection is on its way out.
		return
	}
	if err != nil {
		s.twinAnswer(cl, http.StatusInternalServerError, rid, nil, errorBody(err))
		return
	}
	s.twinAnswer(cl, http.StatusOK, rid, nil, body)
}

// twinPatch applies a reported-properties PATCH: a JSON merge patch where
// null deletes. The answer is 204 with the new $version, or 400 for a body
// that is not a JSON object of valid keys, 413 when the result is too big.
func (s *Server) twinPatch(cl *mqtt.Client, rid string, body []byte) {
	patch, err := decodePatch(body)
	if err != nil {
		s.twinAnswer(cl, http.StatusBadRequest, rid, nil, errorBody(err))
		return
	}
	s.mu.Lock()
	d, ok := s.devices[cl.ID]
	if !ok {
		s.mu.Unlock()
		return
	}
	merged := mergePatch(d.reported, patch)
	encoded, err := json.Marshal(merged)
	switch {
	case err != nil:
		s.mu.Unlock()
		s.twinAnswer(cl, http.StatusInternalServerError, rid, nil, errorBody(err))
		return
	case len(encoded) > maxTwinBytes:
		s.mu.Unlock()
		s.twinAnswer(cl, http.StatusRequestEntityTooLarge, rid, nil, errorBody(
			fmt.Errorf("reported properties would be %d bytes, more than %d", len(encoded), maxTwinBytes)))
		return
	}
	d.reported = merged
	d.reportedVersion++
	version := d.reportedVersion
	s.mu.Unlock()
	s.log.Debug("twin reported properties updated", "device", cl.ID, "version", version)
	s.twinAnswer(cl, http.StatusNoContent, rid, url.Values{"$version": {strconv.Itoa(version)}}, nil)
}

// twinAnswer publishes $iothub/twin/res/{status}/?$rid={rid}[&…]; a device
// that has not subscribed to twin responses gets none.
func (s *Server) twinAnswer(cl *mqtt.Client, status int, rid string, extra url.Values, body []byte) {
	topic := twinResponses + strconv.Itoa(status) + "/?$rid=" + url.QueryEscape(rid)
	for k, vs := range extra {
		for _, v := range vs {
			topic += "&" + k + "=" + url.QueryEscape(v)
		}
	}
	if err := s.send(cl, topic, body); err != nil {
		s.log.Info("twin answer not delivered", "device", cl.ID, "err", err)
	}
}

// decodePatch parses a reported PATCH body, keeping numbers exact.
func decodePatch(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("reported properties: %w", err)
	}
	if dec.More() {
		return nil, errors.New("reported properties: trailing data after the JSON object")
	}
	patch, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("reported properties: not a JSON object")
	}
	if err := checkKeys(patch, 1); err != nil {
		return nil, fmt.Errorf("reported properties: %w", err)
	}
	return patch, nil
}

// checkKeys applies the hub's rules for property names: no '$' prefix
// (reserved for metadata), no '.' or ' ', bounded nesting.
func checkKeys(obj map[string]any, depth int) error {
	if depth > maxTwinDepth {
		return fmt.Errorf("nested deeper than %d", maxTwinDepth)
	}
	for k, v := range obj {
		if k == "" || strings.HasPrefix(k, "$") || strings.ContainsAny(k, ". ") {
			return fmt.Errorf("invalid property name %q", k)
		}
		if child, ok := v.(map[string]any); ok {
			if err := checkKeys(child, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// mergePatch returns base with patch applied (RFC 7386): objects merge,
// null deletes, anything else replaces. base is not modified.
func mergePatch(base, patch map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range patch {
		switch pv := v.(type) {
		case nil:
			delete(out, k)
		case map[string]any:
			bv, _ := out[k].(map[string]any)
			out[k] = mergePatch(bv, pv)
		default:
			out[k] = v
		}
	}
	return out
}

func errorBody(err error) []byte {
	b, _ := json.Marshal(map[string]string{"message": err.Error()})
	return b
}
