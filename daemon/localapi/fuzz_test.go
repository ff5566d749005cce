package localapi_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dpsd-project/dpsd/daemon/apitype"
	"github.com/dpsd-project/dpsd/daemon/localapi"
	"github.com/dpsd-project/dpsd/daemon/localapi/localapitest"
)

// FuzzHandler feeds arbitrary requests from arbitrary peers to the handler:
// it must answer every one with a known status and a JSON body, refuse with
// an apitype.Error, and reach the backend's reprovision only for root.
func FuzzHandler(f *testing.F) {
	seeds := []string{
		"GET /v1/status HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"GET /v1/enroll-info HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"GET /v1/check HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"POST /v1/reprovision HTTP/1.1\r\nHost: local-dpsd\r\nContent-Length: 0\r\n\r\n",
		"POST /v1/token?ttl=90m HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"POST /v1/token?ttl=86401 HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"POST /v1/token?ttl=-1h&ttl=2h HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
		"GET /v1/status HTTP/1.1\r\nHost: local-dpsd\r\nOrigin: null\r\n\r\n",
		"GET http://local-dpsd/v1/status HTTP/1.1\r\nHost: evil\r\n\r\n",
		"GET /v1/../v1/status HTTP/1.0\r\n\r\n",
		"POST /v1/token HTTP/1.1\r\nHost: local-dpsd\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /v1/reprovision HTTP/1.1\r\nHost: local-dpsd\r\nContent-Length: 99999999\r\n\r\n",
		"DELETE /v1/status HTTP/1.1\r\nHost: local-dpsd\r\n\r\n",
	}
	for i, s := range seeds {
		f.Add([]byte(s), uint8(i))
	}
	peers := []localapi.Peer{rootPeer, readerPeer, tokenUserPeer, tokenGroupPeer, strangerPeer, noCredsPeer}
	known := map[int]bool{200: true, 202: true, 400: true, 403: true, 404: true, 405: true, 409: true, 413: true, 500: true}
	f.Fuzz(func(t *testing.T, raw []byte, who uint8) {
		r, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		r.RemoteAddr = "@"
		r.RequestURI = ""
		if r.URL.Path == "/v1/watch" {
			return // a stream that ends with its connection: TestWatch covers it
		}
		peer := peers[int(who)%len(peers)]
		b := localapitest.NewBackend(provisionedStatus())
		o := testOptions
		o.Log = slog.New(slog.DiscardHandler)
		srv := localapi.New(b, o)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, srv.RequestAs(r, peer))
		_, _ = io.Copy(io.Discard, r.Body)

		if !known[w.Code] {
			t.Fatalf("status %d for %q", w.Code, raw)
		}
		if !json.Valid(w.Body.Bytes()) {
			t.Fatalf("body is not JSON: %q", w.Body)
		}
		if w.Code >= 400 {
			var e apitype.Error
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
				t.Fatalf("error answer %q is not an apitype.Error", w.Body)
			}
		}
		if b.Reprovisions() > 0 && peer.UID != 0 {
			t.Fatalf("uid %d reached Reprovision with %q", peer.UID, raw)
		}
		if w.Code < 300 && peer.Err != nil {
			t.Fatalf("a peer without credentials got %d for %q", w.Code, raw)
		}
	})
}
