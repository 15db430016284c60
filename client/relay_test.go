package client

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// fakeRelay is a tiny relay following PROTOCOL.md: it serves a list of
// windows from a checkpoint, honours maxBytes and wait, and injects faults
// on request.
type fakeRelay struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	windows []fakeWindow   // in SCN order
	schemas []schema.Table // what /v1/schemas lists
	// lowWatermark: checkpoints older than it get 410 scn_not_held.
	lowWatermark uint64
	// faults are consumed one per /v1/stream request.
	faults []fault
	// always is applied to every /v1/stream request once faults run out.
	always      fault
	requested   []uint64 // checkpoint SCN of every /v1/stream request
	params      []url.Values
	schemaCalls int
	conns       int           // TCP connections accepted
	notify      chan struct{} // closed and replaced when windows are added
}

// fakeWindow is one window's encoded frames.
type fakeWindow struct {
	scn    uint64
	frames [][]byte
}

func (w fakeWindow) size() int {
	n := 0
	for _, f := range w.frames {
		n += len(f)
	}
	return n
}

type fault int

const (
	faultNone        fault = iota
	fault500               // 500 with a JSON error
	fault503               // 503 unavailable
	fault400               // 400 bad_partition
	faultCorrupt           // a bit flipped in the second window of the body
	faultTruncWindow       // body ends after the first frame of the second window
	faultTruncFrame        // body ends inside the first frame of the second window
	faultAbort             // connection cut inside the second window
	faultHTML              // 200 with an HTML page
)

func newFakeRelay(t *testing.T, schemas ...schema.Table) *fakeRelay {
	f := &fakeRelay{t: t, schemas: schemas, notify: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/stream", f.serveStream)
	mux.HandleFunc("GET /v1/schemas", f.serveSchemas)
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			f.mu.Lock()
			f.conns++
			f.mu.Unlock()
		}
	}
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRelay) URL() string { return f.srv.URL }

// add appends windows and wakes long polls.
func (f *fakeRelay) add(ws ...fakeWindow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.windows = append(f.windows, ws...)
	close(f.notify)
	f.notify = make(chan struct{})
}

func (f *fakeRelay) setSchemas(ts ...schema.Table) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.schemas = ts
}

func (f *fakeRelay) inject(fs ...fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fs...)
}

func (f *fakeRelay) setAlways(ft fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.always = ft
}

func (f *fakeRelay) param(i int) url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.params[i]
}

func (f *fakeRelay) connCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns
}

func (f *fakeRelay) schemaCallCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.schemaCalls
}

func (f *fakeRelay) requests() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.requested...)
}

func writeError(w http.ResponseWriter, status int, body map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": body})
}

func (f *fakeRelay) serveSchemas(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.schemaCalls++
	type entry struct {
		schema.Table
		Avro json.RawMessage `json:"avro"`
	}
	var out []entry
	for _, t := range f.schemas {
		out = append(out, entry{t, t.AvroSchema()})
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

func (f *fakeRelay) serveStream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	cp, err := checkpoint.Parse([]byte(q.Get("checkpoint")))
	if err != nil {
		writeError(w, 400, map[string]any{"code": "bad_checkpoint", "parameter": "checkpoint", "message": err.Error()})
		return
	}
	maxBytes, err := strconv.Atoi(q.Get("maxBytes"))
	if err != nil || maxBytes < 1024 {
		writeError(w, 400, map[string]any{"code": "bad_parameter", "parameter": "maxBytes", "message": "bad maxBytes"})
		return
	}
	wait, err := time.ParseDuration(q.Get("wait"))
	if err != nil || q.Get("format") != "binary" {
		writeError(w, 400, map[string]any{"code": "bad_parameter", "parameter": "wait", "message": "bad wait or format"})
		return
	}

	f.mu.Lock()
	f.requested = append(f.requested, cp.SCN)
	f.params = append(f.params, q)
	ft := f.always
	if len(f.faults) > 0 {
		ft, f.faults = f.faults[0], f.faults[1:]
	}
	switch ft {
	case fault500:
		f.mu.Unlock()
		writeError(w, 500, map[string]any{"code": "internal", "message": "injected"})
		return
	case fault503:
		f.mu.Unlock()
		writeError(w, 503, map[string]any{"code": "unavailable", "message": "shutting down"})
		return
	case fault400:
		f.mu.Unlock()
		writeError(w, 400, map[string]any{"code": "bad_partition", "parameter": "partition", "message": "range over a string key"})
		return
	case faultHTML:
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, "<html>proxy says hello</html>")
		return
	}
	if f.lowWatermark > 0 && cp.SCN < f.lowWatermark {
		oldest := f.windows[0].scn
		f.mu.Unlock()
		writeError(w, 410, map[string]any{"code": "scn_not_held", "message": "fell off", "oldestScn": oldest, "lowWatermark": f.lowWatermark})
		return
	}
	deadline := time.Now().Add(wait)
	var ws []fakeWindow
	for {
		for i := range f.windows {
			if f.windows[i].scn > cp.SCN {
				ws = f.windows[i:]
				break
			}
		}
		if len(ws) > 0 || time.Until(deadline) <= 0 {
			break
		}
		ch := f.notify
		f.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-ch:
		case <-t.C:
		case <-r.Context().Done():
		}
		t.Stop()
		f.mu.Lock()
	}
	var maxSCN uint64
	if len(f.windows) > 0 {
		maxSCN = f.windows[len(f.windows)-1].scn
	}
	f.mu.Unlock()

	var body []byte
	var starts []int // offset of each window in body
	for _, win := range ws {
		if len(body) > 0 && len(body)+win.size() > maxBytes {
			break
		}
		starts = append(starts, len(body))
		for _, fr := range win.frames {
			body = append(body, fr...)
		}
	}
	w.Header().Set("Content-Type", "application/x-databus-frames")
	w.Header().Set("X-Databus-Max-Scn", strconv.FormatUint(maxSCN, 10))
	// Body faults hit the second window of the response that has a data
	// frame, or the first if it is the only one.
	idx := -1
	for i := range starts {
		if len(ws[i].frames) >= 2 {
			idx = i
			if i >= 1 {
				break
			}
		}
	}
	if idx >= 0 {
		k := starts[idx]
		second := ws[idx]
		switch ft {
		case faultCorrupt:
			body = append([]byte(nil), body...)
			body[k+event.HeaderSize] ^= 0x40
		case faultTruncWindow:
			body = body[:k+len(second.frames[0])]
		case faultTruncFrame:
			body = body[:k+10]
		case faultAbort:
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body[:k+10])
			w.(http.Flusher).Flush() // headers and part of the body reach the client
			panic(http.ErrAbortHandler)
		}
	}
	w.Write(body)
}

// ---- test data ----

// personV1 and personV2 are two versions of a table; v2 adds a column whose
// source name is not a valid Avro name.
func personV1() schema.Table {
	return schema.Table{ID: 1, Name: "demo.person", Version: 1, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long"), SourceType: "INTEGER"},
		{Name: "name", Avro: schema.Primitive("string"), Nullable: true, SourceType: "TEXT"},
	}}
}

func personV2() schema.Table {
	t := personV1()
	t.Version = 2
	t.Columns = append(t.Columns, schema.Column{Name: "e mail", Avro: schema.Primitive("string"), Nullable: true, SourceType: "TEXT"})
	return t
}

func codecOf(t testing.TB, tab schema.Table) *schema.Codec {
	c, err := schema.NewCodec(tab.AvroSchema())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustFrame(t testing.TB, e event.Event) []byte {
	b, err := event.AppendFrame(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// personEvent is an insert of person id (schema v1) at scn.
func personEvent(t testing.TB, c *schema.Codec, scn uint64, id int64) event.Event {
	p, err := c.Encode(map[string]any{"id": id, "name": fmt.Sprintf("person-%d", id)})
	if err != nil {
		t.Fatal(err)
	}
	return event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: int64(scn) * 1e6,
		Source: 1, SchemaVersion: 1, Key: event.AppendKeyInt(nil, id), Payload: p}
}

// window encodes a window of the given frames, closed by its end-of-window
// frame counting the data events.
func window(t testing.TB, scn uint64, evs ...event.Event) fakeWindow {
	w := fakeWindow{scn: scn}
	var n uint32
	for _, e := range evs {
		if e.Kind == event.KindData {
			n++
		}
		w.frames = append(w.frames, mustFrame(t, e))
	}
	eow := event.EndOfWindow(scn, int64(scn)*1e6, n, fmt.Sprintf("tx-%d", scn))
	w.frames = append(w.frames, mustFrame(t, eow))
	return w
}

// stream returns n windows at SCNs 10, 20, ...; window i has i%4 events
// (so every fourth is an empty heartbeat), with ids 1000*i+j.
func stream(t testing.TB, n int) []fakeWindow {
	c := codecOf(t, personV1())
	var ws []fakeWindow
	for i := 1; i <= n; i++ {
		scn := uint64(10 * i)
		var evs []event.Event
		for j := 0; j < i%4; j++ {
			evs = append(evs, personEvent(t, c, scn, int64(1000*i+j)))
		}
		ws = append(ws, window(t, scn, evs...))
	}
	return ws
}

// expected returns what a handler should see of ws: the SCN and ids of
// every non-empty window.
func expected(t testing.TB, ws []fakeWindow) []seenWindow {
	var out []seenWindow
	for _, w := range ws {
		s := seenWindow{SCN: w.scn}
		for _, fr := range w.frames {
			e, _, err := event.Decode(fr)
			if err != nil {
				t.Fatal(err)
			}
			if e.Kind == event.KindData {
				k, _ := event.KeyInt(e.Key)
				s.IDs = append(s.IDs, k)
			}
		}
		if len(s.IDs) > 0 {
			out = append(out, s)
		}
	}
	return out
}
