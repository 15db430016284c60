package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/schema"
)

func TestMain(m *testing.M) {
	code := m.Run()
	removeBenchStore()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreAnyFunction("database/sql.(*DB).connectionOpener")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// baseTime is the commit time of SCN 0 in the fixtures' windows: window s
// commits at baseTime + s seconds, so Purge times are easy to state.
const baseTime = int64(1_700_000_000) * int64(time.Second)

func tsOf(scn uint64) int64 { return baseTime + int64(scn)*int64(time.Second) }

// The fixtures' sources: an integer key, a string key and a composite key,
// so that RANGE partitions apply to one of them only and MOD partitions
// hash two of them.
var testTables = []schema.Table{
	{ID: 1, Name: "db.person", Version: 1, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long")}, {Name: "v", Avro: schema.Primitive("string")}}},
	{ID: 2, Name: "db.tag", Version: 1, Key: []string{"name"}, Columns: []schema.Column{
		{Name: "name", Avro: schema.Primitive("string")}, {Name: "v", Avro: schema.Primitive("string")}}},
	{ID: 3, Name: "db.pair", Version: 1, Key: []string{"a", "b"}, Columns: []schema.Column{
		{Name: "a", Avro: schema.Primitive("long")}, {Name: "b", Avro: schema.Primitive("string")}, {Name: "v", Avro: schema.Primitive("string")}}},
}

// mrow is one snapshot row of the fixture's model.
type mrow struct {
	src     uint32
	key     []byte
	scn     uint64
	deleted bool
	payload []byte
	frame   []byte // the snapshot frame (op insert) when not deleted
}

// fixture is a real SQLite store filled through Apply, with a model of what
// it must hold: the latest version of every row, and every window.
type fixture struct {
	t       testing.TB
	st      store.Store
	id      string
	head    uint64
	rows    map[string]*mrow
	windows []store.Window
	rng     *rand.Rand
}

func rowID(src uint32, key []byte) string { return fmt.Sprintf("%08x", src) + string(key) }

func openSQLite(path string) (store.Store, error) {
	return sqlitestore.Open(path, sqlitestore.Options{})
}

func openStore(t testing.TB, path string) store.Store {
	t.Helper()
	st, err := openSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// newFixture opens a new store whose log starts after after: the first
// batch records the schemas.
func newFixture(t testing.TB, after uint64) *fixture {
	t.Helper()
	st := openStore(t, filepath.Join(t.TempDir(), "bootstrap.db"))
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, st: st, head: after, rows: map[string]*mrow{}, rng: rand.New(rand.NewPCG(1, 2))}
	f.apply(&store.Batch{After: after, Schemas: testTables})
	s, err := st.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.id = s.ID
	return f
}

func (f *fixture) apply(b *store.Batch) {
	f.t.Helper()
	if err := f.st.Apply(context.Background(), b); err != nil {
		f.t.Fatalf("Apply: %v", err)
	}
	for _, w := range b.Windows {
		f.head = w.SCN
		f.windows = append(f.windows, w)
	}
}

func testKey(src uint32, k int) []byte {
	switch src {
	case 1:
		return event.AppendKeyInt(nil, int64(k)-20) // negative keys too
	case 2:
		return event.AppendKeyString(nil, fmt.Sprintf("tag-%03d", k))
	default:
		return event.AppendKeyString(event.AppendKeyInt(nil, int64(k%7)), fmt.Sprintf("b%d", k))
	}
}

// addWindows appends n windows of random inserts, updates and deletes over
// a small key space (so rows change several times), in one batch, with the
// SCNs head+gap, head+2*gap, ...
func (f *fixture) addWindows(n, gap int) {
	f.t.Helper()
	b := &store.Batch{After: f.head}
	scn := f.head
	for range n {
		scn += uint64(gap)
		ts := tsOf(scn)
		var frames []byte
		var rows []store.Row
		changes := 1 + f.rng.IntN(6)
		for range changes {
			src := uint32(1 + f.rng.IntN(3))
			key := testKey(src, f.rng.IntN(60))
			id := rowID(src, key)
			r, ok := f.rows[id]
			op := event.OpInsert
			if ok && !r.deleted {
				op = event.OpUpdate
				if f.rng.IntN(4) == 0 {
					op = event.OpDelete
				}
			}
			if !ok {
				r = &mrow{src: src, key: key}
				f.rows[id] = r
			}
			e := event.Event{Kind: event.KindData, Op: op, SCN: scn, Timestamp: ts, Source: src, SchemaVersion: 1, Key: key}
			r.scn = scn
			if op == event.OpDelete {
				r.deleted, r.payload, r.frame = true, nil, nil
				rows = append(rows, store.Row{Source: src, Key: key, SCN: scn, Op: store.RowDelete})
			} else {
				r.deleted = false
				r.payload = fmt.Appendf(nil, "row %x at %d: %s", key, scn, bytes.Repeat([]byte{'x'}, f.rng.IntN(40)))
				e.Payload = r.payload
				r.frame = mustFrame(&event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: ts, Source: src, SchemaVersion: 1, Key: key, Payload: r.payload})
				rows = append(rows, store.Row{Source: src, Key: key, SCN: scn, Op: store.RowUpsert, Frame: r.frame})
			}
			frames = append(frames, mustFrame(&e)...)
		}
		eow := event.EndOfWindow(scn, ts, uint32(changes), "tx-"+strconv.FormatUint(scn, 10))
		frames = append(frames, mustFrame(&eow)...)
		b.Windows = append(b.Windows, store.Window{SCN: scn, Timestamp: ts, Frames: frames, Rows: rows})
	}
	f.apply(b)
}

// addSchemaChange appends a window holding only a schema-change frame (a
// new version of db.tag), as a relay sends an ALTER.
func (f *fixture) addSchemaChange() {
	f.t.Helper()
	scn := f.head + 1
	t := testTables[1]
	t.Version = 2
	t.Columns = append(slices.Clone(t.Columns), schema.Column{Name: "w", Avro: schema.Primitive("long"), Nullable: true})
	e, err := event.NewSchemaChange(scn, tsOf(scn), schema.ChangeOf(t))
	if err != nil {
		f.t.Fatal(err)
	}
	frames := mustFrame(&e)
	eow := event.EndOfWindow(scn, tsOf(scn), 0, "")
	frames = append(frames, mustFrame(&eow)...)
	f.apply(&store.Batch{After: f.head, Schemas: []schema.Table{t}, Windows: []store.Window{{SCN: scn, Timestamp: tsOf(scn), Frames: frames}}})
}

func mustFrame(e *event.Event) []byte {
	b, err := event.AppendFrame(nil, e)
	if err != nil {
		panic(err)
	}
	return b
}

// snapshot returns the frames of the live rows with SCN <= asOf that pass
// flt, in (source, key) order: what paging the snapshot must yield.
func (f *fixture) snapshot(asOf uint64, flt *filter.Filter) [][]byte {
	var rs []*mrow
	for _, r := range f.rows {
		if r.deleted || r.scn > asOf {
			continue
		}
		h, _ := event.PeekHeader(r.frame)
		if flt != nil && !flt.Match(h) {
			continue
		}
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b *mrow) int {
		return cmp.Or(cmp.Compare(a.src, b.src), bytes.Compare(a.key, b.key))
	})
	out := make([][]byte, len(rs))
	for i, r := range rs {
		out[i] = r.frame
	}
	return out
}

// catchup returns the windows in (after, upTo] with the data frames flt
// rejects removed: what paging the catch-up must yield.
func (f *fixture) catchup(after, upTo uint64, flt *filter.Filter) [][]byte {
	var out [][]byte
	for _, w := range f.windows {
		if w.SCN <= after || w.SCN > upTo {
			continue
		}
		var kept []byte
		for _, fr := range splitFrames(f.t, w.Frames) {
			h, _ := event.PeekHeader(fr)
			if flt == nil || flt.Match(h) {
				kept = append(kept, fr...)
			}
		}
		out = append(out, kept)
	}
	return out
}

func splitFrames(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		_, n, err := event.Decode(b)
		if err != nil {
			t.Fatalf("decoding a served frame: %v", err)
		}
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// splitWindows cuts a catch-up body into whole windows, failing the test
// when it does not end with an end-of-window frame.
func splitWindows(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	start := 0
	for off := 0; off < len(b); {
		e, n, err := event.Decode(b[off:])
		if err != nil {
			t.Fatalf("decoding a served frame: %v", err)
		}
		off += n
		if e.Kind == event.KindEndOfWindow {
			out = append(out, b[start:off])
			start = off
		}
	}
	if start != len(b) {
		t.Fatalf("catch-up body ends inside a window (%d trailing bytes)", len(b)-start)
	}
	return out
}

// harness serves a fixture's store over real loopback HTTP.
type harness struct {
	t     *testing.T
	fx    *fixture
	srv   *Server
	base  string
	token string
}

func newHarness(t *testing.T, fx *fixture, cfg Config, opts ...Option) *harness {
	t.Helper()
	s, err := New(cfg, fx.st, nil, nil, opts...)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return &harness{t: t, fx: fx, srv: s, base: hs.URL, token: string(cfg.AuthToken)}
}

func (h *harness) do(method, path string, params url.Values) (*http.Response, []byte) {
	h.t.Helper()
	u := h.base + path
	if len(params) > 0 {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.token != "" {
		req.Header.Set("Authorization", "Bearer "+h.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp, body
}

func (h *harness) get(path string, params url.Values) (*http.Response, []byte) {
	h.t.Helper()
	return h.do(http.MethodGet, path, params)
}

func (h *harness) info(params url.Values) infoJSON {
	h.t.Helper()
	resp, body := h.get("/v1/info", params)
	var in infoJSON
	if resp.StatusCode != 200 || json.Unmarshal(body, &in) != nil {
		h.t.Fatalf("/v1/info: %d %s", resp.StatusCode, body)
	}
	return in
}

func snapshotCP(storeID string, start uint64, after string, rows uint64) string {
	return checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapSnapshot,
		Bootstrap: &checkpoint.Bootstrap{StartSCN: start, TargetSCN: start, Store: storeID, After: after, Rows: rows}}.String()
}

func catchupCP(storeID string, start, scn, target uint64) string {
	return checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapCatchup, SCN: scn,
		Bootstrap: &checkpoint.Bootstrap{StartSCN: start, TargetSCN: target, Store: storeID}}.String()
}

// pageParams returns the filter parameters plus extra ones.
func pageParams(filt url.Values, kv ...string) url.Values {
	p := url.Values{}
	for k, v := range filt {
		p[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		p.Set(kv[i], kv[i+1])
	}
	return p
}

// readSnapshot pages through the snapshot at start as a client does,
// checking every page's headers and frames, and calls between (if not nil)
// after each page. It returns the frames in the order served and the
// number of pages.
func (h *harness) readSnapshot(start uint64, filt url.Values, maxRows, maxBytes int, between func()) (frames [][]byte, pages int) {
	h.t.Helper()
	after, rows := "", uint64(0)
	for {
		p := pageParams(filt, "checkpoint", snapshotCP(h.fx.id, start, after, rows))
		if maxRows > 0 {
			p.Set("maxRows", strconv.Itoa(maxRows))
		}
		if maxBytes > 0 {
			p.Set("maxBytes", strconv.Itoa(maxBytes))
		}
		resp, body := h.get("/v1/snapshot", p)
		if resp.StatusCode != 200 {
			h.t.Fatalf("/v1/snapshot: %d %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != ContentTypeFrames {
			h.t.Fatalf("Content-Type %q", ct)
		}
		page := splitFrames(h.t, body)
		if n, _ := strconv.Atoi(resp.Header.Get(HeaderRows)); n != len(page) {
			h.t.Fatalf("%s %q, but the page holds %d frames", HeaderRows, resp.Header.Get(HeaderRows), len(page))
		}
		if maxRows > 0 && len(page) > maxRows {
			h.t.Fatalf("page of %d rows exceeds maxRows %d", len(page), maxRows)
		}
		if maxBytes > 0 && len(page) > 1 && len(body) > maxBytes {
			h.t.Fatalf("page of %d bytes and %d rows exceeds maxBytes %d", len(body), len(page), maxBytes)
		}
		for _, fr := range page {
			e, _, _ := event.Decode(fr)
			if e.Kind != event.KindData || e.Op != event.OpInsert || e.HasBefore || e.SCN > start {
				h.t.Fatalf("snapshot frame %v %v before=%v scn %d (start %d)", e.Kind, e.Op, e.HasBefore, e.SCN, start)
			}
		}
		frames = append(frames, page...)
		pages++
		rows += uint64(len(page))
		next := resp.Header.Get(HeaderSnapshotAfter)
		if _, err := decodeAfter(next); err != nil {
			h.t.Fatalf("served token %q: %v", next, err)
		}
		if len(page) > 0 {
			last, _ := event.PeekHeader(page[len(page)-1])
			if next != encodeAfter(store.Cursor{Source: last.Source, Key: last.Key}) {
				h.t.Fatalf("token %q is not the cursor of the page's last row", next)
			}
		} else if next != after {
			h.t.Fatalf("empty page moved the token from %q to %q", after, next)
		}
		after = next
		switch done := resp.Header.Get(HeaderSnapshotDone); done {
		case "true":
			return frames, pages
		case "false":
			if len(page) == 0 {
				h.t.Fatal("an empty page that is not done: the client would loop")
			}
		default:
			h.t.Fatalf("%s %q", HeaderSnapshotDone, done)
		}
		if between != nil {
			between()
		}
		if pages > 100000 {
			h.t.Fatal("snapshot never ends")
		}
	}
}

// readCatchup pages through the catch-up from scn to target, checking that
// every page holds whole windows in order within range.
func (h *harness) readCatchup(start, scn, target uint64, filt url.Values, maxBytes int) (windows [][]byte, pages int) {
	h.t.Helper()
	for {
		p := pageParams(filt, "checkpoint", catchupCP(h.fx.id, start, scn, target))
		if maxBytes > 0 {
			p.Set("maxBytes", strconv.Itoa(maxBytes))
		}
		resp, body := h.get("/v1/catchup", p)
		if resp.StatusCode != 200 {
			h.t.Fatalf("/v1/catchup: %d %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != ContentTypeFrames {
			h.t.Fatalf("Content-Type %q", ct)
		}
		if got := resp.Header.Get(HeaderMaxSCN); got != strconv.FormatUint(h.fx.head, 10) {
			h.t.Fatalf("%s %s, head is %d", HeaderMaxSCN, got, h.fx.head)
		}
		ws := splitWindows(h.t, body)
		pages++
		if len(ws) == 0 {
			if scn != target {
				h.t.Fatalf("empty catch-up page at scn %d before target %d", scn, target)
			}
			return windows, pages
		}
		if maxBytes > 0 && len(ws) > 1 && len(body) > maxBytes {
			h.t.Fatalf("page of %d bytes and %d windows exceeds maxBytes %d", len(body), len(ws), maxBytes)
		}
		for _, w := range ws {
			fs := splitFrames(h.t, w)
			e, _, _ := event.Decode(fs[len(fs)-1])
			if e.SCN <= scn || e.SCN > target {
				h.t.Fatalf("window %d served after %d, target %d", e.SCN, scn, target)
			}
			scn = e.SCN
		}
		if got := resp.Header.Get(HeaderLastSCN); got != strconv.FormatUint(scn, 10) {
			h.t.Fatalf("%s %s, last window served %d", HeaderLastSCN, got, scn)
		}
		windows = append(windows, ws...)
		if pages > 100000 {
			h.t.Fatal("catch-up never ends")
		}
	}
}
