package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/databus-go/databus/event"
)

// slowRelay serves one window far larger than any maxBytes, in pieces with
// a pause between them, and an empty body afterwards.
type slowRelay struct {
	body     []byte
	pieces   int
	pause    time.Duration
	stallAt  int // when > 0, the first response stops sending after this many pieces
	attempts atomic.Int32
}

func (s *slowRelay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/schemas" {
		b, _ := json.Marshal([]any{personV1()})
		w.Write(b)
		return
	}
	var cp struct {
		SCN uint64 `json:"scn"`
	}
	json.Unmarshal([]byte(r.URL.Query().Get("checkpoint")), &cp)
	if cp.SCN >= 10 {
		w.Header().Set("Content-Length", "0")
		return
	}
	attempt := s.attempts.Add(1)
	w.Header().Set("Content-Type", framesType)
	w.Header().Set("Content-Length", strconv.Itoa(len(s.body)))
	rc := http.NewResponseController(w)
	step := len(s.body)/s.pieces + 1
	for i, off := 0, 0; off < len(s.body); i, off = i+1, off+step {
		if attempt == 1 && s.stallAt > 0 && i == s.stallAt {
			<-r.Context().Done() // stall until the client gives up
			return
		}
		w.Write(s.body[off:min(off+step, len(s.body))])
		rc.Flush()
		time.Sleep(s.pause)
	}
}

// bigWindow is the frames of one window of n person events at SCN 10.
func bigWindow(t *testing.T, n int) []byte {
	c := codecOf(t, personV1())
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = personEvent(t, c, 10, int64(i))
	}
	var b bytes.Buffer
	for _, f := range window(t, 10, evs...).frames {
		b.Write(f)
	}
	return b.Bytes()
}

// TestLargeSlowResponse: a response holding one window far larger than
// maxBytes is accepted whole even when it takes longer than the request
// timeout to arrive, as long as it keeps arriving; one that stalls for the
// request timeout is given up and asked again.
func TestLargeSlowResponse(t *testing.T) {
	for _, stall := range []bool{false, true} {
		s := &slowRelay{body: bigWindow(t, 40000), pieces: 40, pause: 20 * time.Millisecond}
		if stall {
			s.stallAt = 10
		}
		srv := httptest.NewServer(s)
		rec := &recorder{}
		c := newClient(t, []string{srv.URL}, rec, WithMaxBytes(1024), WithRequestTimeout(300*time.Millisecond))
		if err := runUntil(t, c, atSCN(c, 10)); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
		srv.Close()
		rec.check(t)
		ok := rec.okWindows()
		if len(ok) != 1 || len(ok[0].IDs) != 40000 {
			t.Fatalf("stall %v: %d windows", stall, len(ok))
		}
		if got, want := s.attempts.Load(), int32(1); stall {
			if got != 2 {
				t.Errorf("a stalled response was not given up and asked again: %d attempts", got)
			}
		} else if got != want {
			t.Errorf("%d attempts of a response that kept flowing (%d bytes over about %v), want 1",
				got, len(s.body), time.Duration(s.pieces)*s.pause)
		}
	}
}
