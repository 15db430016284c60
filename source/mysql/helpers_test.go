package mysql

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

func TestMain(m *testing.M) {
	code := dbtest.Run(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// serverIDs gives every adapter of the test binary its own replica id.
var serverIDs atomic.Uint32

func init() { serverIDs.Store(2000) }

// testConfig is a Config for srv capturing database db.
func testConfig(t testing.TB, srv *dbtest.MariaDBServer, db string) Config {
	return Config{
		Host:              srv.Host,
		Port:              srv.Port,
		User:              "root",
		ServerID:          serverIDs.Add(1),
		Include:           []string{db + ".*"},
		StateDir:          t.TempDir(),
		HeartbeatInterval: 200 * time.Millisecond,
		MinBackoff:        20 * time.Millisecond,
		MaxBackoff:        500 * time.Millisecond,
	}
}

// dropDatabases removes what an earlier run of the test (go test -count)
// left on the shared server.
func dropDatabases(t testing.TB, srv *dbtest.MariaDBServer, names ...string) {
	t.Helper()
	for _, n := range names {
		srv.Exec(t, "DROP DATABASE IF EXISTS "+n)
	}
}

// quietLogger drops the adapter's logs unless -v.
func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

// openSource builds and opens a Source.
func openSource(t testing.TB, cfg Config) (*Source, []schema.Table) {
	t.Helper()
	s, err := New(cfg, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tables, err := s.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, tables
}

// binlogEnd is the server's current binlog end as a source.Position.
func binlogEnd(t testing.TB, db *sql.DB) source.Position {
	t.Helper()
	p, err := masterStatus(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	n, err := fileNumber(p.File)
	if err != nil {
		t.Fatal(err)
	}
	return p.position(makeSCN(n, p.Pos))
}

// runner runs a Source in the background and collects its windows. It
// assembles the chunks of a large transaction (source.Window.Partial) into
// its whole window, as the relay does.
type runner struct {
	cancel context.CancelFunc
	done   chan error

	mu        sync.Mutex
	windows   []*source.Window
	pending   []event.Event // chunks of the window in progress, copied
	chunks    int           // chunks received
	abandoned int           // abandoning chunks received
	changed   chan struct{}
}

// take records what emit received.
func (r *runner) take(w *source.Window) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case w.Partial && w.Abandon:
		r.abandoned++
		r.pending = nil
		return
	case w.Partial:
		r.chunks++
		for _, e := range w.Events { // the adapter reuses their memory
			e.Key, e.Payload, e.Before = bytes.Clone(e.Key), bytes.Clone(e.Payload), bytes.Clone(e.Before)
			r.pending = append(r.pending, e)
		}
		return
	case r.pending != nil:
		whole := *w
		whole.Events = r.pending
		for i := range whole.Events {
			whole.Events[i].SCN, whole.Events[i].Timestamp = w.SCN, w.Timestamp
		}
		whole.Events = append(whole.Events, w.Events...)
		r.pending = nil
		w = &whole
	}
	r.windows = append(r.windows, w)
}

func startRun(t testing.TB, s *Source, from source.Position) *runner {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1), changed: make(chan struct{}, 1)}
	go func() {
		r.done <- s.Run(ctx, from, func(ctx context.Context, w *source.Window) error {
			r.take(w)
			select {
			case r.changed <- struct{}{}:
			default:
			}
			return nil
		})
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the run and checks that it ended with ctx's error.
func (r *runner) stop(t testing.TB) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context's end")
	}
}

func (r *runner) snapshot() []*source.Window {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*source.Window(nil), r.windows...)
}

// waitSCN waits until a window with SCN >= scn arrived and returns the
// windows so far.
func (r *runner) waitSCN(t testing.TB, scn uint64, timeout time.Duration) []*source.Window {
	t.Helper()
	deadline := time.After(timeout)
	for {
		ws := r.snapshot()
		if len(ws) > 0 && ws[len(ws)-1].SCN >= scn {
			return ws
		}
		select {
		case err := <-r.done:
			t.Fatalf("Run returned early: %v", err)
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			last := uint64(0)
			if len(ws) > 0 {
				last = ws[len(ws)-1].SCN
			}
			t.Fatalf("no window at SCN %d within %v (last %d, %d windows)", scn, timeout, last, len(ws))
		}
	}
}

// collect runs s from `from` until the binlog end as it is now, and returns
// the windows.
func collect(t testing.TB, s *Source, db *sql.DB, from source.Position) []*source.Window {
	t.Helper()
	end := binlogEnd(t, db)
	r := startRun(t, s, from)
	ws := r.waitSCN(t, end.SCN, 60*time.Second)
	r.stop(t)
	// Keep exactly the windows up to end: a heartbeat may have come after.
	out := ws[:0:0]
	for _, w := range ws {
		if w.SCN <= end.SCN {
			out = append(out, w)
		}
	}
	return out
}

// checkWindows asserts the source.Window invariants over a run.
func checkWindows(t testing.TB, ws []*source.Window) {
	t.Helper()
	var last uint64
	for i, w := range ws {
		if w.SCN <= last {
			t.Fatalf("window %d: SCN %d not above %d", i, w.SCN, last)
		}
		last = w.SCN
		if w.Position.SCN != w.SCN {
			t.Fatalf("window %d: position SCN %d != %d", i, w.Position.SCN, w.SCN)
		}
		if _, ok, err := decodePosition(w.Position); err != nil || !ok {
			t.Fatalf("window %d: position %s: %v", i, w.Position.Data, err)
		}
		for j, e := range w.Events {
			if e.SCN != w.SCN || e.Timestamp != w.Timestamp {
				t.Fatalf("window %d event %d: SCN/ts %d/%d, window %d/%d", i, j, e.SCN, e.Timestamp, w.SCN, w.Timestamp)
			}
		}
	}
}

// registry follows the schema-change events of a stream, as a consumer
// would, and decodes data events with the version they name.
type registry struct {
	t       testing.TB
	reg     *schema.Registry
	changes []change // in stream order
}

type change struct {
	scn uint64
	event.SchemaChange
}

func newRegistry(t testing.TB, initial []schema.Table) *registry {
	r := &registry{t: t, reg: schema.NewRegistry()}
	for _, tb := range initial {
		if _, err := r.reg.Put(tb); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// observe registers a schema-change event; it fails the test when a data
// event names a version no earlier schema-change or Open announced.
func (r *registry) observe(w *source.Window, e *event.Event) {
	r.t.Helper()
	switch e.Kind {
	case event.KindSchemaChange:
		var d event.SchemaChange
		if err := json.Unmarshal(e.Payload, &d); err != nil {
			r.t.Fatal(err)
		}
		r.changes = append(r.changes, change{scn: w.SCN, SchemaChange: d})
		if _, ok := r.reg.Get(d.Source, d.Version); ok {
			return
		}
		t := schema.Table{ID: d.Source, Name: d.Name, Version: d.Version, Key: d.Key, Columns: columnsFromAvro(r.t, d.Avro)}
		if _, err := r.reg.Put(t); err != nil {
			r.t.Fatal(err)
		}
	case event.KindData:
		if _, ok := r.reg.Get(e.Source, e.SchemaVersion); !ok {
			r.t.Fatalf("window %d: data event of source %d version %d before its schema", w.SCN, e.Source, e.SchemaVersion)
		}
	}
}

// columnsFromAvro rebuilds the columns of a record schema, as the relay
// does: nullable when the type is a union with "null" first.
func columnsFromAvro(t testing.TB, avro []byte) []schema.Column {
	var rec struct {
		Fields []struct {
			Name string          `json:"name"`
			Type json.RawMessage `json:"type"`
			Doc  string          `json:"doc"`
		} `json:"fields"`
	}
	if err := json.Unmarshal(avro, &rec); err != nil {
		t.Fatal(err)
	}
	var cols []schema.Column
	for _, f := range rec.Fields {
		c := schema.Column{Name: f.Name, Avro: f.Type, SourceType: f.Doc}
		var union []json.RawMessage
		if json.Unmarshal(f.Type, &union) == nil && len(union) == 2 && string(union[0]) == `"null"` {
			c.Avro, c.Nullable = union[1], true
		}
		cols = append(cols, c)
	}
	return cols
}

// decode returns the payload and before-image of a data event as rows with
// unions unwrapped.
func (r *registry) decode(e *event.Event) (row, before map[string]any) {
	r.t.Helper()
	en, ok := r.reg.Get(e.Source, e.SchemaVersion)
	if !ok {
		r.t.Fatalf("unknown schema %d/%d", e.Source, e.SchemaVersion)
	}
	dec := func(b []byte) map[string]any {
		m, err := en.Codec.Decode(b)
		if err != nil {
			r.t.Fatalf("decode %s v%d: %v", en.Name, en.Version, err)
		}
		return unwrapUnions(m)
	}
	if e.Op != event.OpDelete {
		row = dec(e.Payload)
	}
	if e.HasBefore {
		before = dec(e.Before)
	}
	return row, before
}

func (r *registry) name(id uint32) string {
	en, ok := r.reg.Latest(id)
	if !ok {
		return fmt.Sprint(id)
	}
	return en.Name
}

// unwrapUnions turns hamba's {"type": value} union values into value.
func unwrapUnions(m map[string]any) map[string]any {
	for k, v := range m {
		if u, ok := v.(map[string]any); ok && len(u) == 1 {
			for _, x := range u {
				m[k] = x
			}
		}
	}
	return m
}

// keyString renders a key for use as a map key in tests.
func keyString(t testing.TB, k []byte) string {
	t.Helper()
	parts, err := event.DecodeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('|')
		}
		fmt.Fprintf(&b, "%v", p)
	}
	return b.String()
}

// materialise applies the data events of ws, per source name, by key.
func materialise(t testing.TB, reg *registry, ws []*source.Window) map[string]map[string]map[string]any {
	out := map[string]map[string]map[string]any{}
	for _, w := range ws {
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			if e.Kind != event.KindData {
				continue
			}
			name := reg.name(e.Source)
			if out[name] == nil {
				out[name] = map[string]map[string]any{}
			}
			k := keyString(t, e.Key)
			row, _ := reg.decode(e)
			switch e.Op {
			case event.OpDelete:
				if _, ok := out[name][k]; !ok {
					t.Fatalf("window %d: delete of %s key %s, which is not there", w.SCN, name, k)
				}
				delete(out[name], k)
			case event.OpInsert:
				if _, ok := out[name][k]; ok {
					t.Fatalf("window %d: insert of %s key %s, which is already there", w.SCN, name, k)
				}
				out[name][k] = row
			default:
				if _, ok := out[name][k]; !ok {
					t.Fatalf("window %d: update of %s key %s, which is not there", w.SCN, name, k)
				}
				out[name][k] = row
			}
		}
	}
	return out
}
