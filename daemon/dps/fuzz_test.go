package dps

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

// The response parsers read what the network sends; the seed corpora under
// testdata/fuzz are the recorded responses of testdata/dps/responses.

func FuzzParseChallenge(f *testing.F) {
	f.Add([]byte(loadRecorded(f, "challenge-401").Body))
	f.Fuzz(func(t *testing.T, body []byte) {
		ch, ok, err := parseChallenge(body)
		switch {
		case err != nil:
			if !ok || ch != nil || !errors.Is(err, ErrProtocol) {
				t.Fatalf("ok=%t ch=%v err=%v", ok, ch, err)
			}
		case ok:
			if len(ch.AuthenticationKey) == 0 || ch.KeyName == "" || len(ch.KeyName) > maxKeyName {
				t.Fatalf("accepted %+v", ch)
			}
		case ch != nil:
			t.Fatal("challenge returned for a non-challenge")
		}
	})
}

func FuzzParseOperation(f *testing.F) {
	for _, name := range []string{"register-202", "poll-202-assigning", "poll-200-assigned", "poll-200-failed", "poll-200-disabled"} {
		f.Add([]byte(loadRecorded(f, name).Body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, err := parseOperation(body)
		if err != nil {
			if op != nil || !errors.Is(err, ErrProtocol) {
				t.Fatalf("op=%v err=%v", op, err)
			}
			return
		}
		if op.ID == "" || len(op.ID) > maxOperationID {
			t.Fatalf("operationId %q accepted", op.ID)
		}
		if op.Status == StatusAssigned && checkAssigned(op.State) != nil {
			t.Fatalf("assigned accepted without its fields: %+v", op.State)
		}
	})
}

func FuzzParseError(f *testing.F) {
	for _, name := range []string{"error-401", "error-429", "error-503-proxy"} {
		rec := loadRecorded(f, name)
		f.Add(rec.Status, rec.Header["x-ms-error-code"], rec.body())
	}
	f.Fuzz(func(t *testing.T, status int, code string, body []byte) {
		h := http.Header{}
		h.Set("x-ms-error-code", code)
		e := parseError(status, h, body)
		if e.HTTPStatus != status || e.Code < 0 || len(e.Message) > 300 || len(e.TrackingID) > 300 {
			t.Fatalf("%+v", e)
		}
		_ = e.Error()
	})
}

func FuzzRetryAfter(f *testing.F) {
	for _, v := range []string{"3", "0", "Thu, 23 Feb 2023 23:43:27 GMT", "Thursday, 23-Feb-23 23:43:27 GMT", "Thu Feb 23 23:43:27 2023", ""} {
		f.Add(v)
	}
	date := time.Date(2023, 2, 23, 23, 42, 27, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d := retryAfter(v, date, date)
		if d != 0 && (d < minRetryAfter || d > maxRetryAfter) {
			t.Fatalf("retryAfter(%q) = %v", v, d)
		}
	})
}
