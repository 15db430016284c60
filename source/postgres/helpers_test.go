package postgres

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// quietLogger drops the adapter's logs unless -v.
func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

var envSeq atomic.Uint32

// env is one test's database on a server, with a slot of its own.
type env struct {
	srv  *dbtest.PostgresServer
	name string  // database and slot name
	db   *sql.DB // superuser pool
	cfg  Config
}

var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

// newEnv creates a fresh database on srv (dropping what an earlier run with
// -count left) and a Config capturing tables from it, with a slot named
// after the database (slots are cluster-wide).
func newEnv(t testing.TB, srv *dbtest.PostgresServer, tables ...string) *env {
	t.Helper()
	base := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(base) > 30 {
		base = base[:30]
	}
	name := fmt.Sprintf("t%s_%08x_%d", base, crc32.ChecksumIEEE([]byte(t.Name())), envSeq.Add(1))
	dropSlot(t, srv, name)
	srv.Exec(t, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	e := &env{srv: srv, name: name, db: srv.DB(t, name)}
	e.cfg = Config{
		ConnString:        Secret(srv.ConnString(name)),
		Tables:            tables,
		Slot:              name,
		StateDir:          t.TempDir(),
		HeartbeatInterval: 200 * time.Millisecond,
		StatusInterval:    200 * time.Millisecond,
		MinBackoff:        20 * time.Millisecond,
		MaxBackoff:        500 * time.Millisecond,
	}
	t.Cleanup(func() { dropSlot(t, srv, name) })
	return e
}

// dropSlot drops a slot if it exists, waiting for a session that still
// holds it to end.
func dropSlot(t testing.TB, srv *dbtest.PostgresServer, slot string) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.ConnString(""))
	if err != nil {
		t.Logf("drop slot %s: %v", slot, err)
		return
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Errorf("drop slot %s: %v", slot, err)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exec runs statements in the test's database, failing the test on error.
func (e *env) exec(t testing.TB, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := e.db.Exec(s); err != nil {
			t.Fatalf("exec %q: %v", s, err)
		}
	}
}

// tx runs the statements in one transaction.
func (e *env) tx(t testing.TB, stmts ...string) {
	t.Helper()
	e.exec(t, "BEGIN;"+strings.Join(stmts, ";")+";COMMIT")
}

// mark writes a heartbeat message and returns its LSN: every window the
// test wrote before is at or below it, and a window at exactly it follows.
func (e *env) mark(t testing.TB) uint64 {
	t.Helper()
	var lsn string
	var xid int64
	if err := e.db.QueryRow(`SELECT pg_logical_emit_message(false, 'databus', 'heartbeat 0')::text, txid_current()`).Scan(&lsn, &xid); err != nil {
		t.Fatal(err)
	}
	return parseLSN(t, lsn)
}

func parseLSN(t testing.TB, s string) uint64 {
	t.Helper()
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		t.Fatalf("LSN %q: %v", s, err)
	}
	return uint64(hi)<<32 | uint64(lo)
}

// slotConfirmed is the slot's confirmed_flush_lsn.
func (e *env) slotConfirmed(t testing.TB) uint64 {
	t.Helper()
	var s string
	if err := e.db.QueryRow(`SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.name).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return parseLSN(t, s)
}

// open builds and opens a Source for cfg.
func open(t testing.TB, cfg Config) (*Source, []schema.Table) {
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

// runner runs a Source in the background and collects its windows. It
// assembles the chunks of a large transaction (source.Window.Partial) into
// its whole window, as the relay does.
type runner struct {
	cancel context.CancelFunc
	done   chan error
	ended  bool
	err    error

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
			if e.SCN != 0 {
				panic(fmt.Sprintf("chunk event with SCN %d", e.SCN))
			}
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
	if r.ended {
		return
	}
	select {
	case err := <-r.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context's end")
	}
}

// wait waits for Run to return by itself and returns its error.
func (r *runner) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.ended, r.err = true, err
		return err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %v", timeout)
	}
	return nil
}

func (r *runner) snapshot() []*source.Window {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*source.Window(nil), r.windows...)
}

// waitSCN waits until a window with SCN >= scn arrived and returns the
// windows up to scn.
func (r *runner) waitSCN(t testing.TB, scn uint64, timeout time.Duration) []*source.Window {
	t.Helper()
	deadline := time.After(timeout)
	for {
		ws := r.snapshot()
		if len(ws) > 0 && ws[len(ws)-1].SCN >= scn {
			out := ws[:0:0]
			for _, w := range ws {
				if w.SCN <= scn {
					out = append(out, w)
				}
			}
			return out
		}
		select {
		case err := <-r.done:
			r.ended = true
			t.Fatalf("Run returned early: %v", err)
		case <-r.changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			last := uint64(0)
			if len(ws) > 0 {
				last = ws[len(ws)-1].SCN
			}
			t.Fatalf("no window at SCN %s within %v (last %s, %d windows)", lsnString(scn), timeout, lsnString(last), len(ws))
		}
	}
}

// captureUntilMark runs s from `from` until a mark written now and returns the
// windows up to the mark (the mark's own heartbeat window excluded).
func captureUntilMark(t testing.TB, e *env, s *Source, from source.Position) []*source.Window {
	t.Helper()
	end := e.mark(t)
	r := startRun(t, s, from)
	ws := r.waitSCN(t, end, 60*time.Second)
	r.stop(t)
	return ws[:len(ws)-1]
}

// dataWindows drops the empty (heartbeat) windows.
func dataWindows(ws []*source.Window) []*source.Window {
	var out []*source.Window
	for _, w := range ws {
		if len(w.Events) > 0 {
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
			t.Fatalf("window %d: SCN %s not above %s", i, lsnString(w.SCN), lsnString(last))
		}
		last = w.SCN
		if w.Position.SCN != w.SCN {
			t.Fatalf("window %d: position SCN %d != %d", i, w.Position.SCN, w.SCN)
		}
		for j, e := range w.Events {
			if e.SCN != w.SCN || e.Timestamp != w.Timestamp {
				t.Fatalf("window %d event %d: SCN/ts %d/%d, window %d/%d", i, j, e.SCN, e.Timestamp, w.SCN, w.Timestamp)
			}
			if _, err := event.AppendFrame(nil, &e); err != nil {
				t.Fatalf("window %d event %d: %v", i, j, err)
			}
		}
	}
}

// registry follows the schema-change events of a stream, as a consumer
// would, and decodes data events with the version they name.
type registry struct {
	t       testing.TB
	codecs  map[[2]uint32]*schema.Codec
	tables  map[[2]uint32]event.SchemaChange
	names   map[uint32]string
	changes []event.SchemaChange // in stream order
}

func newRegistry(t testing.TB, initial []schema.Table) *registry {
	r := &registry{t: t, codecs: map[[2]uint32]*schema.Codec{}, tables: map[[2]uint32]event.SchemaChange{}, names: map[uint32]string{}}
	for _, tb := range initial {
		r.add(schema.ChangeOf(tb))
	}
	return r
}

func (r *registry) add(sc event.SchemaChange) {
	r.t.Helper()
	k := [2]uint32{sc.Source, uint32(sc.Version)}
	c, err := schema.NewCodec(sc.Avro)
	if err != nil {
		r.t.Fatal(err)
	}
	if old, ok := r.tables[k]; ok && string(old.Avro) != string(sc.Avro) {
		r.t.Fatalf("source %d version %d announced with two definitions:\n%s\n%s", sc.Source, sc.Version, old.Avro, sc.Avro)
	}
	r.codecs[k], r.tables[k], r.names[sc.Source] = c, sc, sc.Name
}

// observe registers a schema-change event; it fails the test when a data
// event names a version no earlier schema change announced (Open's tables
// do not count: the stream must be self-describing).
func (r *registry) observe(w *source.Window, e *event.Event) {
	r.t.Helper()
	switch e.Kind {
	case event.KindSchemaChange:
		var d event.SchemaChange
		if err := json.Unmarshal(e.Payload, &d); err != nil {
			r.t.Fatal(err)
		}
		if d.Source != e.Source || d.Version != e.SchemaVersion {
			r.t.Fatalf("window %d: schema change frame %d/%d with payload %d/%d", w.SCN, e.Source, e.SchemaVersion, d.Source, d.Version)
		}
		r.changes = append(r.changes, d)
		r.add(d)
	case event.KindData:
		if _, ok := r.codecs[[2]uint32{e.Source, uint32(e.SchemaVersion)}]; !ok {
			r.t.Fatalf("window %d: data event of source %d version %d before its schema", w.SCN, e.Source, e.SchemaVersion)
		}
	}
}

// decode returns the payload and before-image of a data event as rows with
// unions unwrapped.
func (r *registry) decode(e *event.Event) (row, before map[string]any) {
	r.t.Helper()
	c, ok := r.codecs[[2]uint32{e.Source, uint32(e.SchemaVersion)}]
	if !ok {
		r.t.Fatalf("unknown schema %d/%d", e.Source, e.SchemaVersion)
	}
	dec := func(b []byte) map[string]any {
		m, err := c.Decode(b)
		if err != nil {
			r.t.Fatalf("decode %s v%d: %v", r.names[e.Source], e.SchemaVersion, err)
		}
		return unwrap(m).(map[string]any)
	}
	if e.Op != event.OpDelete {
		row = dec(e.Payload)
	}
	if e.HasBefore {
		before = dec(e.Before)
	}
	return row, before
}

// unwrap turns hamba's {"type": value} union values into value, in records
// and arrays.
func unwrap(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, y := range x {
			if u, ok := y.(map[string]any); ok && len(u) == 1 {
				for _, z := range u {
					y = z
				}
			}
			x[k] = unwrap(y)
		}
		return x
	case []any:
		for i, y := range x {
			if u, ok := y.(map[string]any); ok && len(u) == 1 {
				for _, z := range u {
					y = z
				}
			}
			x[i] = unwrap(y)
		}
		return x
	}
	return v
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

// materialise applies the data events of ws, per source name, by key. Rows
// lose the UnchangedColumn field (which must be empty: the tests that use
// materialise write no TOASTed values).
func materialise(t testing.TB, reg *registry, ws []*source.Window) map[string]map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]map[string]any{}
	for _, w := range ws {
		for i := range w.Events {
			e := &w.Events[i]
			reg.observe(w, e)
			if e.Kind == event.KindSchemaChange {
				var d event.SchemaChange
				_ = json.Unmarshal(e.Payload, &d)
				if d.Truncate {
					out[d.Name] = map[string]map[string]any{}
				}
				continue
			}
			name := reg.names[e.Source]
			if out[name] == nil {
				out[name] = map[string]map[string]any{}
			}
			k := keyString(t, e.Key)
			row, _ := reg.decode(e)
			if row != nil {
				if u, _ := row[UnchangedColumn].([]any); len(u) > 0 {
					t.Fatalf("window %d: unexpected unchanged columns %v", w.SCN, u)
				}
				delete(row, UnchangedColumn)
			}
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
			case event.OpUpdate:
				if _, ok := out[name][k]; !ok {
					t.Fatalf("window %d: update of %s key %s, which is not there", w.SCN, name, k)
				}
				out[name][k] = row
			}
		}
	}
	return out
}
