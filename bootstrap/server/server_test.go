package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/schema"
)

// testFilters are the filters every page test runs with: none, sources,
// MOD and RANGE partitions, and both.
var testFilters = []url.Values{
	nil,
	{"sources": {"db.person"}},
	{"sources": {"db.tag,db.pair"}},
	{"partition": {"mod:1/3"}},
	{"partition": {"mod:0,2/5"}, "sources": {"db.pair,db.person"}},
	{"partition": {"range:-10-5,20-30"}, "sources": {"db.person"}},
}

// filterOf builds the filter a client means by p, independently of the
// server's parsing (the fixture's source ids are fixed).
func filterOf(t *testing.T, p url.Values) *filter.Filter {
	t.Helper()
	if p == nil {
		return nil
	}
	var f filter.Filter
	if s := p.Get("sources"); s != "" {
		f.Sources = map[uint32]struct{}{}
		for _, name := range strings.Split(s, ",") {
			i := slices.IndexFunc(testTables, func(tb schema.Table) bool { return tb.Name == name })
			f.Sources[testTables[i].ID] = struct{}{}
		}
	}
	if s := p.Get("partition"); s != "" {
		var err error
		if f.Partition, err = filter.ParsePartition(s); err != nil {
			t.Fatal(err)
		}
	}
	return &f
}

func TestInfo(t *testing.T) {
	fx := newFixture(t, 100)
	h := newHarness(t, fx, Config{})
	in := h.info(nil)
	if in.Store != fx.id || in.HeadSCN != 100 || in.LowWatermark != 100 || in.Windows != 0 || in.Rows != 0 || in.HeadTime != "" || in.Empty {
		t.Errorf("before any window: %+v", in)
	}
	fx.addWindows(40, 3)
	in = h.info(nil)
	want := infoJSON{Store: fx.id, HeadSCN: fx.head, HeadTime: time.Unix(0, tsOf(fx.head)).UTC().Format(time.RFC3339Nano),
		LowWatermark: 100, Windows: 40, Rows: uint64(len(fx.snapshot(fx.head, nil))),
		Sources: []sourceJSON{{1, "db.person", 1, []string{"id"}}, {2, "db.tag", 1, []string{"name"}}, {3, "db.pair", 1, []string{"a", "b"}}},
		Seeds:   []seedJSON{}}
	if d := cmp.Diff(want, in); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	for _, p := range testFilters[1:] {
		if got, want := h.info(p).Rows, uint64(len(fx.snapshot(fx.head, filterOf(t, p)))); got != want {
			t.Errorf("rows with %v: %d, want %d", p, got, want)
		}
	}
	fx.addSchemaChange()
	if got := h.info(nil).Sources[1]; got.SchemaVersion != 2 || got.Name != "db.tag" {
		t.Errorf("after an ALTER, db.tag is %+v", got)
	}
}

func TestSchemas(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(3, 1)
	fx.addSchemaChange()
	h := newHarness(t, fx, Config{})
	for path, want := range map[string][]string{
		"/v1/schemas":        {"db.person/1", "db.tag/1", "db.tag/2", "db.pair/1"},
		"/v1/schemas/db.tag": {"db.tag/1", "db.tag/2"},
		"/v1/schemas/3":      {"db.pair/1"},
	} {
		resp, body := h.get(path, nil)
		var got []struct {
			ID      uint32            `json:"id"`
			Name    string            `json:"name"`
			Version uint16            `json:"version"`
			Key     []string          `json:"key"`
			Columns []json.RawMessage `json:"columns"`
			Avro    struct {
				Type   string            `json:"type"`
				Fields []json.RawMessage `json:"fields"`
			} `json:"avro"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
		}
		var names []string
		for _, s := range got {
			names = append(names, fmt.Sprintf("%s/%d", s.Name, s.Version))
			if len(s.Key) == 0 || len(s.Columns) == 0 || s.Avro.Type != "record" || len(s.Avro.Fields) != len(s.Columns) {
				t.Errorf("%s: incomplete schema %+v", path, s)
			}
		}
		if d := cmp.Diff(want, names); d != "" {
			t.Errorf("%s (-want +got)\n%s", path, d)
		}
	}
	resp, body := h.get("/v1/schemas/db.nope", nil)
	if e := apiErr(t, body); resp.StatusCode != 404 || e.Code != codeUnknownSource || e.Source != "db.nope" {
		t.Errorf("unknown schema: %d %s", resp.StatusCode, body)
	}
}

// TestSnapshotPaging pages through the snapshot with every filter and
// several page sizes: the rows served, in order, are exactly the model's
// rows at startScn that filter.Filter.Match passes, each once.
func TestSnapshotPaging(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(150, 2)
	start := fx.head
	fx.addWindows(20, 2) // rows changed after start are left out
	h := newHarness(t, fx, Config{})
	for _, p := range testFilters {
		want := fx.snapshot(start, filterOf(t, p))
		if len(want) < 5 {
			t.Fatalf("filter %v keeps %d rows: too few to test paging", p, len(want))
		}
		for _, size := range []struct{ rows, bytes int }{{0, 0}, {1, 0}, {7, 0}, {0, 1024}, {len(want), 0}, {len(want) + 1, 0}} {
			got, pages := h.readSnapshot(start, p, size.rows, size.bytes, nil)
			if !slices.EqualFunc(want, got, bytes.Equal) {
				t.Errorf("filter %v, maxRows %d, maxBytes %d: %d rows served in %d pages, want %d rows (first difference at %d)",
					p, size.rows, size.bytes, len(got), pages, len(want), firstDiff(want, got))
			}
			if size.rows == 1 && pages != len(want) {
				t.Errorf("maxRows 1: %d pages for %d rows", pages, len(want))
			}
		}
	}
}

func firstDiff(a, b [][]byte) int {
	for i := range min(len(a), len(b)) {
		if !bytes.Equal(a[i], b[i]) {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestSnapshotResume restarts paging from a checkpoint taken mid-snapshot
// and from the last page's: the rest of the snapshot, then nothing.
func TestSnapshotResume(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(60, 1)
	h := newHarness(t, fx, Config{})
	want := fx.snapshot(fx.head, nil)
	p := url.Values{"checkpoint": {snapshotCP(fx.id, fx.head, "", 0)}, "maxRows": {"10"}, "client": {"consumer-1"}}
	resp, body := h.get("/v1/snapshot", p)
	first := splitFrames(t, body)
	token := resp.Header.Get(HeaderSnapshotAfter)
	if resp.StatusCode != 200 || len(first) != 10 || token == "" || resp.Header.Get(HeaderSnapshotDone) != "false" {
		t.Fatalf("first page: %d, %d rows, token %q, done %q", resp.StatusCode, len(first), token, resp.Header.Get(HeaderSnapshotDone))
	}
	p.Set("checkpoint", snapshotCP(fx.id, fx.head, token, 10))
	p.Set("maxRows", strconv.Itoa(len(want)))
	resp, body = h.get("/v1/snapshot", p)
	rest := splitFrames(t, body)
	if !slices.EqualFunc(want, append(first, rest...), bytes.Equal) || resp.Header.Get(HeaderSnapshotDone) != "true" {
		t.Fatalf("resumed: %d+%d rows, done %q; want %d rows", len(first), len(rest), resp.Header.Get(HeaderSnapshotDone), len(want))
	}
	last := resp.Header.Get(HeaderSnapshotAfter)
	p.Set("checkpoint", snapshotCP(fx.id, fx.head, last, uint64(len(want))))
	resp, body = h.get("/v1/snapshot", p)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get(HeaderSnapshotDone) != "true" ||
		resp.Header.Get(HeaderSnapshotAfter) != last || resp.Header.Get(HeaderRows) != "0" {
		t.Fatalf("after the last page: %d, %d bytes, done %q, token %q", resp.StatusCode, len(body), resp.Header.Get(HeaderSnapshotDone), resp.Header.Get(HeaderSnapshotAfter))
	}
}

// TestCatchup pages through the log with every filter and several budgets:
// whole windows in (scn, target], each once, in order, filtered exactly as
// filter.Filter.Match filters the stored windows.
func TestCatchup(t *testing.T) {
	fx := newFixture(t, 10)
	fx.addWindows(40, 5)
	fx.addSchemaChange() // schema-change frames pass every filter
	fx.addWindows(40, 5)
	h := newHarness(t, fx, Config{})
	start, target := uint64(10), fx.windows[len(fx.windows)-10].SCN
	for _, p := range testFilters {
		for _, from := range []uint64{start, fx.windows[20].SCN, fx.windows[20].SCN + 1} {
			want := fx.catchup(from, target, filterOf(t, p))
			for _, maxBytes := range []int{0, 1024, 1 << 16} {
				got, pages := h.readCatchup(start, from, target, p, maxBytes)
				if !slices.EqualFunc(want, got, bytes.Equal) {
					t.Errorf("filter %v from %d, maxBytes %d: %d windows in %d pages, want %d (first difference at %d)",
						p, from, maxBytes, len(got), pages, len(want), firstDiff(want, got))
				}
			}
		}
	}
	// At the target: an empty page.
	resp, body := h.get("/v1/catchup", url.Values{"checkpoint": {catchupCP(fx.id, start, target, target)}})
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get(HeaderWindows) != "0" {
		t.Errorf("at the target: %d, %d bytes", resp.StatusCode, len(body))
	}
}

// TestSnapshotThenCatchup is the bootstrap of docs/BOOTSTRAP.md under
// concurrent writes: a snapshot at S read while windows keep arriving, then
// the catch-up (S, T] folded over it, equals the model's rows at T.
func TestSnapshotThenCatchup(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(100, 1)
	h := newHarness(t, fx, Config{})
	for _, p := range testFilters {
		flt := filterOf(t, p)
		start := h.info(p).HeadSCN
		snap, _ := h.readSnapshot(start, p, 9, 0, func() { fx.addWindows(3, 1) })
		target := h.info(p).HeadSCN
		ws, _ := h.readCatchup(start, start, target, p, 2048)
		got := map[string]string{}
		for _, fr := range snap {
			e, _, _ := event.Decode(fr)
			got[rowID(e.Source, e.Key)] = string(e.Payload)
		}
		for _, w := range ws {
			for _, fr := range splitFrames(t, w) {
				e, _, _ := event.Decode(fr)
				switch {
				case e.Kind != event.KindData:
				case e.Op == event.OpDelete:
					delete(got, rowID(e.Source, e.Key))
				default:
					got[rowID(e.Source, e.Key)] = string(e.Payload)
				}
			}
		}
		want := map[string]string{}
		for _, fr := range fx.snapshot(target, flt) {
			e, _, _ := event.Decode(fr)
			want[rowID(e.Source, e.Key)] = string(e.Payload)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("filter %v: snapshot at %d + catch-up to %d (-want +got)\n%s", p, start, target, d)
		}
	}
}

// edit changes one character in the middle of a token.
func edit(token string) string {
	i := len(token) / 2
	c := byte('A')
	if token[i] == 'A' {
		c = 'B'
	}
	return token[:i] + string(c) + token[i+1:]
}

type apiErrorJSON struct {
	Code         string  `json:"code"`
	Parameter    string  `json:"parameter"`
	Source       string  `json:"source"`
	Message      string  `json:"message"`
	LowWatermark *uint64 `json:"lowWatermark"`
	HeadSCN      *uint64 `json:"headScn"`
	Store        string  `json:"store"`
}

func apiErr(t *testing.T, body []byte) apiErrorJSON {
	t.Helper()
	var e struct {
		Error apiErrorJSON `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		t.Fatalf("not an error body: %s", body)
	}
	return e.Error
}

// TestBadRequests sends every kind of bad input: each gets its status, a
// JSON body with its stable code, the parameter it names, and a message
// that names the problem.
func TestBadRequests(t *testing.T) {
	fx := newFixture(t, 50)
	fx.addWindows(20, 10) // head 250
	h := newHarness(t, fx, Config{})
	id, head := fx.id, fx.head
	snap := func(cp string, kv ...string) url.Values {
		return pageParams(nil, append([]string{"checkpoint", cp}, kv...)...)
	}
	good := snapshotCP(id, head, "", 0)
	goodCatchup := catchupCP(id, 100, 100, head)
	token := encodeAfter(store.Cursor{Source: 1, Key: event.AppendKeyInt(nil, 5)})
	for _, tc := range []struct {
		name, path string
		params     url.Values
		status     int
		code       string
		param      string
		message    string // a substring of the message
	}{
		{"no checkpoint", "/v1/snapshot", nil, 400, codeBadCheckpoint, "checkpoint", "required"},
		{"checkpoint not JSON", "/v1/snapshot", snap("{"), 400, codeBadCheckpoint, "checkpoint", "invalid checkpoint"},
		{"checkpoint bad field", "/v1/snapshot", snap(`{"v":1,"mode":"bootstrap_snapshot","bootstrap":{"startScn":1,"targetScn":1,"store":"x"},"extra":1}`), 400, codeBadCheckpoint, "checkpoint", "extra"},
		{"online checkpoint", "/v1/snapshot", snap(`{"v":1,"mode":"online","scn":5}`), 400, codeBadCheckpoint, "checkpoint", `mode is "online"`},
		{"catch-up checkpoint to snapshot", "/v1/snapshot", snap(goodCatchup), 400, codeBadCheckpoint, "checkpoint", `mode is "bootstrap_catchup"`},
		{"snapshot checkpoint to catch-up", "/v1/catchup", snap(good), 400, codeBadCheckpoint, "checkpoint", `mode is "bootstrap_snapshot"`},
		{"new bootstrap without store", "/v1/snapshot", snap(`{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":0,"targetScn":0}}`), 400, codeBadCheckpoint, "checkpoint", "/v1/info"},
		{"after not base64", "/v1/snapshot", snap(snapshotCP(id, head, "!!", 1)), 400, codeBadCheckpoint, "checkpoint", "bootstrap.after"},
		{"after truncated", "/v1/snapshot", snap(snapshotCP(id, head, token[:len(token)-2], 1)), 400, codeBadCheckpoint, "checkpoint", "bootstrap.after"},
		{"after edited", "/v1/snapshot", snap(snapshotCP(id, head, edit(token), 1)), 400, codeBadCheckpoint, "checkpoint", "bootstrap.after"},
		{"foreign store", "/v1/snapshot", snap(snapshotCP("another-store", head, "", 0)), 409, codeForeignCheckpoint, "checkpoint", "another-store"},
		{"foreign store catch-up", "/v1/catchup", snap(catchupCP("another-store", 100, 100, head)), 409, codeForeignCheckpoint, "checkpoint", "another-store"},
		{"startScn beyond head", "/v1/snapshot", snap(snapshotCP(id, head+1, "", 0)), 409, codeForeignCheckpoint, "checkpoint", "beyond"},
		{"targetScn beyond head", "/v1/catchup", snap(catchupCP(id, 100, 100, head+1)), 409, codeForeignCheckpoint, "checkpoint", "beyond"},
		{"scn beyond head", "/v1/catchup", snap(catchupCP(id, head+5, head+5, head+5)), 409, codeForeignCheckpoint, "checkpoint", "beyond"},
		{"maxBytes not a number", "/v1/snapshot", snap(good, "maxBytes", "1MiB"), 400, codeBadParameter, "maxBytes", "not an integer"},
		{"maxBytes too small", "/v1/snapshot", snap(good, "maxBytes", "1023"), 400, codeBadParameter, "maxBytes", "out of range"},
		{"maxBytes too large", "/v1/catchup", snap(goodCatchup, "maxBytes", strconv.Itoa(MaxMaxBytes+1)), 400, codeBadParameter, "maxBytes", "out of range"},
		{"maxRows zero", "/v1/snapshot", snap(good, "maxRows", "0"), 400, codeBadParameter, "maxRows", "out of range"},
		{"maxRows too large", "/v1/snapshot", snap(good, "maxRows", "1000001"), 400, codeBadParameter, "maxRows", "out of range"},
		{"maxRows on catch-up", "/v1/catchup", snap(goodCatchup, "maxRows", "10"), 400, codeBadParameter, "maxRows", "unknown parameter"},
		{"unknown parameter", "/v1/snapshot", snap(good, "wait", "5s"), 400, codeBadParameter, "wait", "unknown parameter"},
		{"bad client", "/v1/catchup", snap(goodCatchup, "client", "a b"), 400, codeBadParameter, "client", "characters"},
		{"parameter twice", "/v1/snapshot", url.Values{"checkpoint": {good, good}}, 400, codeBadParameter, "checkpoint", "2 times"},
		{"info parameter", "/v1/info", url.Values{"checkpoint": {good}}, 400, codeBadParameter, "checkpoint", "unknown parameter"},
		{"schemas parameter", "/v1/schemas", url.Values{"sources": {"db.tag"}}, 400, codeBadParameter, "sources", "takes none"},
		{"bad partition", "/v1/snapshot", snap(good, "partition", "mod:9/3"), 400, codeBadPartition, "partition", "bad partition"},
		{"empty partition", "/v1/catchup", snap(goodCatchup, "partition", ""), 400, codeBadPartition, "partition", "empty"},
		{"range over a string key", "/v1/snapshot", snap(good, "partition", "range:0-10"), 400, codeBadPartition, "partition", `source "db.tag"`},
		{"range over a composite key", "/v1/info", url.Values{"partition": {"range:0-10"}, "sources": {"db.pair"}}, 400, codeBadPartition, "partition", "a single integer key"},
		{"unknown source", "/v1/snapshot", snap(good, "sources", "db.person,db.nope"), 400, codeUnknownSource, "sources", `"db.nope"`},
		{"unknown source catch-up", "/v1/catchup", snap(goodCatchup, "sources", "db.nope"), 400, codeUnknownSource, "sources", `"db.nope"`},
		{"empty sources", "/v1/snapshot", snap(good, "sources", ""), 400, codeBadParameter, "sources", "empty"},
		{"empty source name", "/v1/info", url.Values{"sources": {"db.tag,"}}, 400, codeBadParameter, "sources", "empty name"},
		{"seed without table", "/v1/seed", nil, 400, codeBadParameter, "table", "required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodGet
			if tc.path == "/v1/seed" {
				method = http.MethodPost
			}
			resp, body := h.do(method, tc.path, tc.params)
			e := apiErr(t, body)
			if resp.StatusCode != tc.status || e.Code != tc.code || e.Parameter != tc.param || !strings.Contains(e.Message, tc.message) {
				t.Errorf("got %d %s; want %d %s parameter %q with %q", resp.StatusCode, body, tc.status, tc.code, tc.param, tc.message)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
	// The 409 of an SCN beyond the head says which head.
	_, body := h.get("/v1/snapshot", snap(snapshotCP(id, head+1, "", 0)))
	if e := apiErr(t, body); e.HeadSCN == nil || *e.HeadSCN != head || e.Store != id {
		t.Errorf("beyond head: %s", body)
	}
}

// TestNotHeld purges the oldest windows: a snapshot whose start is below
// the new low watermark, and a catch-up from there, get 410 with the low
// watermark; from the low watermark on, both are served.
func TestNotHeld(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(30, 1)
	h := newHarness(t, fx, Config{})
	res, err := fx.st.Purge(context.Background(), store.PurgePolicy{LogBefore: time.Unix(0, tsOf(11))})
	if err != nil || res.LowWatermark != 10 {
		t.Fatalf("Purge: %+v, %v; want the low watermark at 10", res, err)
	}
	for _, tc := range []struct {
		path string
		cp   string
	}{
		{"/v1/snapshot", snapshotCP(fx.id, 9, "", 0)},
		{"/v1/catchup", catchupCP(fx.id, 9, 9, fx.head)},
		{"/v1/catchup", catchupCP(fx.id, 0, 5, 20)},
	} {
		resp, body := h.get(tc.path, url.Values{"checkpoint": {tc.cp}})
		e := apiErr(t, body)
		if resp.StatusCode != 410 || e.Code != codeSCNNotHeld || e.LowWatermark == nil || *e.LowWatermark != 10 {
			t.Errorf("%s %s: %d %s", tc.path, tc.cp, resp.StatusCode, body)
		}
	}
	if got, _ := h.readSnapshot(10, nil, 0, 0, nil); len(got) != len(fx.snapshot(10, nil)) {
		t.Errorf("snapshot at the low watermark: %d rows, want %d", len(got), len(fx.snapshot(10, nil)))
	}
	if got, _ := h.readCatchup(10, 10, fx.head, nil, 0); len(got) != 20 {
		t.Errorf("catch-up from the low watermark: %d windows, want 20", len(got))
	}
}

func TestEmptyStore(t *testing.T) {
	st := openStore(t, t.TempDir()+"/empty.db")
	t.Cleanup(func() { st.Close() })
	fx := &fixture{t: t, st: st, rows: map[string]*mrow{}}
	s, err := st.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fx.id = s.ID
	h := newHarness(t, fx, Config{})
	if in := h.info(nil); !in.Empty || in.HeadSCN != 0 || in.Rows != 0 || len(in.Sources) != 0 || in.Store != fx.id {
		t.Errorf("info of an empty store: %+v", in)
	}
	if rows, pages := h.readSnapshot(0, nil, 0, 0, nil); len(rows) != 0 || pages != 1 {
		t.Errorf("snapshot of an empty store: %d rows in %d pages", len(rows), pages)
	}
	if ws, _ := h.readCatchup(0, 0, 0, nil, 0); len(ws) != 0 {
		t.Errorf("catch-up of an empty store: %d windows", len(ws))
	}
}

func TestAuthAndMethods(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(5, 1)
	h := newHarness(t, fx, Config{AuthToken: "s3cret"})
	cp := url.Values{"checkpoint": {snapshotCP(fx.id, fx.head, "", 0)}}
	paths := []string{"/v1/info", "/v1/schemas", "/v1/schemas/db.tag", "/v1/snapshot", "/v1/catchup", "/v1/seed", "/metrics", "/", "/v1/nope", "/nope"}
	for _, tok := range []string{"", "wrong", "s3cre", "s3cret2"} {
		h.token = tok
		for _, p := range paths {
			resp, body := h.get(p, cp)
			if e := apiErr(t, body); resp.StatusCode != 401 || e.Code != codeUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s with token %q: %d %s", p, tok, resp.StatusCode, body)
			}
		}
		if resp, _ := h.get("/healthz", nil); resp.StatusCode != 200 {
			t.Errorf("/healthz needs no token, got %d", resp.StatusCode)
		}
	}
	h.token = "s3cret"
	for _, p := range []string{"/v1/info", "/v1/schemas", "/metrics", "/"} {
		if resp, body := h.get(p, nil); resp.StatusCode != 200 {
			t.Errorf("%s with the token: %d %s", p, resp.StatusCode, body)
		}
	}
	if resp, body := h.do(http.MethodHead, "/v1/snapshot", cp); resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get(HeaderRows) != strconv.Itoa(len(fx.snapshot(fx.head, nil))) {
		t.Errorf("HEAD /v1/snapshot: %d, %d bytes, rows %q", resp.StatusCode, len(body), resp.Header.Get(HeaderRows))
	}
	for _, p := range []string{"/v1/info", "/v1/schemas", "/v1/snapshot", "/v1/catchup", "/healthz", "/metrics", "/"} {
		for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
			resp, body := h.do(m, p, cp)
			if e := apiErr(t, body); resp.StatusCode != 405 || e.Code != codeMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d %s", m, p, resp.StatusCode, body)
			}
		}
	}
	resp, body := h.get("/v1/seed", url.Values{"table": {"db.person"}})
	if e := apiErr(t, body); resp.StatusCode != 405 || e.Code != codeMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET /v1/seed: %d %s", resp.StatusCode, body)
	}
	resp, body = h.get("/v1/nope", nil)
	if e := apiErr(t, body); resp.StatusCode != 404 || e.Code != codeNotFound {
		t.Errorf("/v1/nope: %d %s", resp.StatusCode, body)
	}
}

// testSeeder stands for the bootstrap producer's side of seeding.
type testSeeder struct {
	mu      sync.Mutex
	tables  []string
	running map[string]string // table → run
	status  []SeedStatus
}

func (s *testSeeder) Seed(ctx context.Context, table string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if table == "db.off" {
		return "", fmt.Errorf("%w: no chunk reader", ErrSeedingUnavailable)
	}
	if !slices.Contains(s.tables, table) {
		return "", fmt.Errorf("%w %q: the source has no such table", ErrUnknownTable, table)
	}
	if run, ok := s.running[table]; ok {
		return "", fmt.Errorf("%w: %s (run %s)", ErrSeedRunning, table, run)
	}
	run := fmt.Sprintf("run-%d", len(s.running)+1)
	s.running[table] = run
	return run, nil
}

func (s *testSeeder) SeedStatus() []SeedStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.status)
}

func TestSeed(t *testing.T) {
	fx := newFixture(t, 0)
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	fx.apply(&store.Batch{After: fx.head, Seeds: []store.SeedProgress{
		{Table: "db.person", Run: "old", Rows: 10, Done: true, Started: started, Updated: started.Add(time.Minute)},
		{Table: "db.tag", Run: "r7", Rows: 500, Started: started, Updated: started.Add(time.Second)},
	}})

	t.Run("not configured", func(t *testing.T) {
		h := newHarness(t, fx, Config{})
		resp, body := h.do(http.MethodPost, "/v1/seed", url.Values{"table": {"db.person"}})
		if e := apiErr(t, body); resp.StatusCode != 501 || e.Code != codeSeedingNotEnabled {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
		want := []seedJSON{
			{Table: "db.person", Run: "old", Rows: 10, Done: true, Started: "2026-01-02T03:04:05Z", Updated: "2026-01-02T03:05:05Z"},
			{Table: "db.tag", Run: "r7", Rows: 500, Started: "2026-01-02T03:04:05Z", Updated: "2026-01-02T03:04:06Z"},
		}
		if d := cmp.Diff(want, h.info(nil).Seeds); d != "" {
			t.Errorf("seeds (-want +got)\n%s", d)
		}
	})
	t.Run("configured", func(t *testing.T) {
		sd := &testSeeder{tables: []string{"db.person", "db.tag", "db.new"}, running: map[string]string{"db.tag": "r7"},
			status: []SeedStatus{
				{Table: "db.tag", Run: "r7", Rows: 600, Running: true, Estimate: 1000, RowsPerSecond: 200, ETA: 2 * time.Second},
				{Table: "db.new", Run: "r9", Rows: 3, Running: true, Estimate: 10, RowsPerSecond: 1, ETA: 7 * time.Second,
					Started: started.Add(time.Hour), Updated: started.Add(2 * time.Hour), Error: "chunk timed out"},
				{Table: "db.person", Run: "r8", Rows: 0, Queued: true, Estimate: 50},
			}}
		h := newHarness(t, fx, Config{}, WithSeeder(sd))
		for _, tc := range []struct {
			table  string
			status int
			code   string
		}{
			{"db.nope", 400, codeUnknownSource},
			{"db.tag", 409, codeSeedRunning},
			{"db.off", 501, codeSeedingNotEnabled},
		} {
			resp, body := h.do(http.MethodPost, "/v1/seed", url.Values{"table": {tc.table}})
			if e := apiErr(t, body); resp.StatusCode != tc.status || e.Code != tc.code || e.Source != tc.table {
				t.Errorf("seed %s: %d %s", tc.table, resp.StatusCode, body)
			}
		}
		resp, body := h.do(http.MethodPost, "/v1/seed", url.Values{"table": {"db.person"}})
		var got seedStartedJSON
		if resp.StatusCode != 202 || json.Unmarshal(body, &got) != nil || got.Table != "db.person" || got.Run == "" {
			t.Errorf("seed db.person: %d %s", resp.StatusCode, body)
		}
		want := []seedJSON{
			{Table: "db.new", Run: "r9", Rows: 3, Running: true, Estimate: 10, RowsPerSecond: 1, ETASeconds: 7,
				Started: "2026-01-02T04:04:05Z", Updated: "2026-01-02T05:04:05Z", Error: "chunk timed out"},
			{Table: "db.person", Run: "r8", Queued: true, Estimate: 50}, // the new run replaces the old record
			{Table: "db.tag", Run: "r7", Rows: 600, Running: true, Estimate: 1000, RowsPerSecond: 200, ETASeconds: 2, Started: "2026-01-02T03:04:05Z", Updated: "2026-01-02T03:04:06Z"},
		}
		if d := cmp.Diff(want, h.info(nil).Seeds); d != "" {
			t.Errorf("seeds (-want +got)\n%s", d)
		}
		if resp, body := h.get("/", nil); resp.StatusCode != 200 || !bytes.Contains(body, []byte("db.new")) || !bytes.Contains(body, []byte(fx.id)) {
			t.Errorf("status page: %d %s", resp.StatusCode, body)
		}
	})
}

// TestStoreDown closes the store under the server: every endpoint that
// reads it answers 503 unavailable (which clients retry), never a 200
// with a partial body.
func TestStoreDown(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(5, 1)
	h := newHarness(t, fx, Config{})
	fx.st.Close()
	for _, tc := range []struct {
		path   string
		params url.Values
	}{
		{"/v1/snapshot", url.Values{"checkpoint": {snapshotCP(fx.id, fx.head, "", 0)}}},
		{"/v1/catchup", url.Values{"checkpoint": {catchupCP(fx.id, 0, 0, fx.head)}}},
		{"/v1/info", nil},
		{"/v1/schemas", nil},
		{"/v1/snapshot", url.Values{"checkpoint": {snapshotCP(fx.id, fx.head, "", 0)}, "sources": {"db.tag"}}},
	} {
		resp, body := h.get(tc.path, tc.params)
		if e := apiErr(t, body); resp.StatusCode != 503 || e.Code != codeUnavailable {
			t.Errorf("%s: %d %s", tc.path, resp.StatusCode, body)
		}
	}
	resp, body := h.get("/healthz", nil)
	var hj healthJSON
	if resp.StatusCode != 503 || json.Unmarshal(body, &hj) != nil || hj.Status != "error" {
		t.Errorf("/healthz: %d %s", resp.StatusCode, body)
	}
	if resp, body := h.get("/", nil); resp.StatusCode != 200 || !bytes.Contains(body, []byte("error")) {
		t.Errorf("status page: %d %s", resp.StatusCode, body)
	}
}

func TestMetrics(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(30, 1)
	h := newHarness(t, fx, Config{})
	rows, _ := h.readSnapshot(fx.head, nil, 7, 0, nil)
	ws, _ := h.readCatchup(0, 0, fx.head, nil, 0)
	h.get("/v1/snapshot", nil) // a 400
	resp, body := h.get("/metrics", nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	var bytesServed int
	for _, r := range rows {
		bytesServed += len(r)
	}
	for _, w := range ws {
		bytesServed += len(w)
	}
	for _, want := range []string{
		`databus_bootstrap_server_requests_total{endpoint="snapshot",status="200"} ` + strconv.Itoa((len(rows)+6)/7),
		`databus_bootstrap_server_requests_total{endpoint="snapshot",status="400"} 1`,
		`databus_bootstrap_server_requests_total{endpoint="catchup",status="200"} 2`,
		`databus_bootstrap_server_errors_total{code="bad_checkpoint"} 1`,
		`databus_bootstrap_server_rows_served_total ` + strconv.Itoa(len(rows)),
		`databus_bootstrap_server_windows_served_total 30`,
		`databus_bootstrap_server_bytes_served_total ` + strconv.Itoa(bytesServed),
		`databus_bootstrap_server_store_head_scn 30`,
		`databus_bootstrap_server_store_log_windows 30`,
		`databus_bootstrap_server_store_up 1`,
	} {
		if !bytes.Contains(body, []byte(want+"\n")) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRun serves on a real listener through Run and shuts down when the
// context ends.
func TestRun(t *testing.T) {
	fx := newFixture(t, 0)
	fx.addWindows(3, 1)
	s, err := New(Config{Listen: "127.0.0.1:0"}, fx.st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Addr() != "" {
		t.Fatal("Addr before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not listen")
	}
	resp, err := http.Get("http://" + s.Addr() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var hj healthJSON
	json.NewDecoder(resp.Body).Decode(&hj)
	resp.Body.Close()
	if resp.StatusCode != 200 || hj.Status != "ok" || hj.Store != fx.id || hj.HeadSCN != 3 {
		t.Errorf("/healthz: %d %+v", resp.StatusCode, hj)
	}
	if err := s.Run(ctx); !errors.Is(err, ErrRunTwice) {
		t.Errorf("second Run: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestNewErrors(t *testing.T) {
	fx := newFixture(t, 0)
	if _, err := New(Config{MaxBytes: 10}, fx.st, nil, nil); !errors.Is(err, ErrConfig) {
		t.Errorf("bad config: %v", err)
	}
	if _, err := New(Config{}, nil, nil, nil); err == nil {
		t.Error("nil store accepted")
	}
}
