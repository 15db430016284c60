package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var _ source.Source = (*Source)(nil)

// newDB creates a database file in a temporary directory, runs ddl on it
// and returns its path and a writer connection pool that is independent of
// the source's connections.
func newDB(t testing.TB, ddl ...string) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite", "file:"+strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, q := range ddl {
		mustExec(t, db, q)
	}
	return path, db
}

func mustExec(t testing.TB, db interface {
	Exec(string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// open creates and opens a source; it is closed at cleanup.
func open(t testing.TB, cfg Config) (*Source, []schema.Table) {
	t.Helper()
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 2 * time.Millisecond
	}
	if cfg.HeartbeatInterval == 0 {
		cfg.HeartbeatInterval = -1
	}
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	tables, err := s.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s, tables
}

// capture runs a source in the background and collects its windows.
type capture struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned, err set
	err    error
	once   sync.Once

	mu      sync.Mutex
	windows []*source.Window
}

func run(t testing.TB, s *Source, from source.Position) *capture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &capture{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = s.Run(ctx, from, func(_ context.Context, w *source.Window) error {
			c.mu.Lock()
			c.windows = append(c.windows, w)
			c.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop cancels Run, waits for it and checks it ended because of that.
func (c *capture) stop() []*source.Window {
	c.t.Helper()
	c.cancel()
	<-c.done
	c.once.Do(func() {
		if !errors.Is(c.err, context.Canceled) {
			c.t.Errorf("Run returned %v, want context.Canceled", c.err)
		}
	})
	return c.snapshot()
}

func (c *capture) snapshot() []*source.Window {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*source.Window(nil), c.windows...)
}

// waitSCN waits until the window holding change-log entry seq (a row
// entry, or the marker that is the window's SCN) has arrived.
func (c *capture) waitSCN(seq uint64) []*source.Window {
	c.t.Helper()
	return c.waitFor(fmt.Sprintf("the window of entry %d", seq), func(ws []*source.Window) bool {
		return len(ws) > 0 && ws[len(ws)-1].SCN >= seq
	})
}

func (c *capture) waitFor(what string, cond func([]*source.Window) bool) []*source.Window {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ws := c.snapshot()
		if cond(ws) {
			return ws
		}
		select {
		case <-c.done:
			c.once.Do(func() {})
			c.t.Fatalf("Run ended while waiting for %s: %v", what, c.err)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s (%d windows so far)", what, len(ws))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// logEnd returns the highest change-log sequence.
func logEnd(t testing.TB, db *sql.DB) uint64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(`SELECT COALESCE(MAX(seq), 0) FROM _databus_changelog`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return uint64(n)
}

// registry returns a registry with every version the source recorded.
func registry(t testing.TB, s *Source) *schema.Registry {
	t.Helper()
	reg := schema.NewRegistry()
	for _, tb := range s.Versions() {
		if _, err := reg.Put(tb); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// state is a materialised copy of captured tables: source name → key →
// row (decoded Avro, keyed by field name).
type state map[string]map[string]map[string]any

// apply folds windows into st, checking on the way that SCNs increase,
// that keys match rows, that before-images match the row they replace and
// that schema changes precede their first use (when fromStart says the
// windows start at the beginning of the change log).
func apply(t testing.TB, reg *schema.Registry, st state, ws []*source.Window, fromStart bool) {
	t.Helper()
	announced := map[[2]uint32]bool{}
	var prev uint64
	for _, w := range ws {
		if w.SCN <= prev {
			t.Fatalf("window SCN %d after %d", w.SCN, prev)
		}
		prev = w.SCN
		if w.Position.SCN != w.SCN {
			t.Fatalf("window %d has position %d", w.SCN, w.Position.SCN)
		}
		for i := range w.Events {
			ev := &w.Events[i]
			if ev.SCN != w.SCN {
				t.Fatalf("event SCN %d in window %d", ev.SCN, w.SCN)
			}
			if ev.Kind == event.KindSchemaChange {
				sc, err := ev.SchemaChange()
				if err != nil {
					t.Fatal(err)
				}
				e, ok := reg.Get(sc.Source, sc.Version)
				if !ok || string(e.AvroSchema()) != string(sc.Avro) {
					t.Fatalf("schema change %+v does not match the recorded version", sc)
				}
				announced[[2]uint32{sc.Source, uint32(sc.Version)}] = true
				continue
			}
			if fromStart && !announced[[2]uint32{ev.Source, uint32(ev.SchemaVersion)}] {
				t.Fatalf("window %d: event of source %d v%d before its schema change", w.SCN, ev.Source, ev.SchemaVersion)
			}
			if ev.Timestamp > w.Timestamp || ev.Timestamp < time.Now().Add(-time.Hour).UnixNano() {
				t.Fatalf("window %d at %d has an event at %d", w.SCN, w.Timestamp, ev.Timestamp)
			}
			e, ok := reg.Get(ev.Source, ev.SchemaVersion)
			if !ok {
				t.Fatalf("event of unknown source %d version %d", ev.Source, ev.SchemaVersion)
			}
			rows := st[e.Name]
			if rows == nil {
				rows = map[string]map[string]any{}
				st[e.Name] = rows
			}
			k := string(ev.Key)
			var row, before map[string]any
			var err error
			if ev.Op != event.OpDelete {
				if row, err = e.Codec.Decode(ev.Payload); err != nil {
					t.Fatalf("window %d: %v", w.SCN, err)
				}
				checkKey(t, &e.Table, ev.Key, row)
			}
			if ev.HasBefore {
				if before, err = e.Codec.Decode(ev.Before); err != nil {
					t.Fatalf("window %d: before: %v", w.SCN, err)
				}
				checkKey(t, &e.Table, ev.Key, before)
			}
			switch ev.Op {
			case event.OpInsert:
				if _, dup := rows[k]; dup {
					t.Fatalf("window %d: insert of existing key %v", w.SCN, before)
				}
				rows[k] = row
			case event.OpUpdate, event.OpDelete:
				if !ev.HasBefore {
					t.Fatalf("window %d: %v without before-image", w.SCN, ev.Op)
				}
				if cur, ok := rows[k]; !ok {
					t.Fatalf("window %d: %v of missing key %x", w.SCN, ev.Op, ev.Key)
				} else if !sameRow(cur, before) {
					t.Fatalf("window %d: %v before-image %v != materialised %v", w.SCN, ev.Op, before, cur)
				}
				if ev.Op == event.OpDelete {
					delete(rows, k)
				} else {
					rows[k] = row
				}
			}
		}
	}
}

// sameRow compares rows the way a consumer would: before-images of rows
// captured under an older version lack columns added since.
func sameRow(cur, before map[string]any) bool {
	for k, v := range before {
		if fmt.Sprint(cur[k]) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

// checkKey decodes an event key and compares it with the row's key columns.
func checkKey(t testing.TB, tb *schema.Table, key []byte, row map[string]any) {
	t.Helper()
	got, err := event.DecodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(tb.Key) {
		t.Fatalf("key %v has %d components, want %d", got, len(got), len(tb.Key))
	}
	for i, k := range tb.Key {
		want := row[schema.FieldName(k)]
		if f, ok := want.(float64); ok {
			want = strconv.FormatFloat(f, 'g', -1, 64)
		}
		if fmt.Sprint(got[i]) != fmt.Sprint(want) {
			t.Fatalf("key component %s = %v, row has %v", k, got[i], want)
		}
	}
}

// tableRows reads a table the way a consumer's copy should look: every
// column converted to the Go value its Avro type decodes to.
func tableRows(t testing.TB, db *sql.DB, tb schema.Table) map[string]map[string]any {
	t.Helper()
	sel := ""
	for i, c := range tb.Columns {
		if i > 0 {
			sel += ", "
		}
		if c.Name == rowidColumn {
			sel += "_rowid_" // tests do not shadow this one
		} else {
			sel += quoteIdent(c.Name)
		}
	}
	rows, err := db.Query(`SELECT ` + sel + ` FROM ` + quoteIdent(tb.Name[len("main."):]))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]map[string]any{}
	for rows.Next() {
		vals := make([]any, len(tb.Columns))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		row := map[string]any{}
		for i, c := range tb.Columns {
			row[schema.FieldName(c.Name)] = goValue(t, c, vals[i])
		}
		var key []byte
		for _, k := range tb.Key {
			switch v := row[schema.FieldName(k)].(type) {
			case int64:
				key = event.AppendKeyInt(key, v)
			case string:
				key = event.AppendKeyString(key, v)
			case []byte:
				key = event.AppendKeyBytes(key, v)
			case nil:
				key = event.AppendKeyNull(key)
			default:
				t.Fatalf("key value %T", v)
			}
		}
		out[string(key)] = row
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func goValue(t testing.TB, c schema.Column, v any) any {
	if v == nil {
		return nil
	}
	switch string(c.Avro) {
	case `"long"`:
		return v.(int64)
	case `"double"`:
		if i, ok := v.(int64); ok {
			return float64(i)
		}
		return v.(float64)
	case `"boolean"`:
		return v.(int64) != 0
	case `"bytes"`:
		if b := v.([]byte); b != nil {
			return b
		}
		return []byte{}
	case `"string"`:
		switch x := v.(type) {
		case int64:
			return strconv.FormatInt(x, 10)
		case float64:
			return strconv.FormatFloat(x, 'g', -1, 64)
		case []byte:
			return string(x)
		}
		return v.(string)
	}
	t.Fatalf("column %s has Avro %s", c.Name, c.Avro)
	return nil
}

// floatBits is a go-cmp comparer that tells -0.0 from 0.0.
func floatBits(a, b float64) bool { return math.Float64bits(a) == math.Float64bits(b) }

// fillMissing adds the columns of tb that rows captured under older
// versions lack, as NULL: what a consumer that upgrades rows does.
func fillMissing(rows map[string]map[string]any, tb schema.Table) {
	for _, row := range rows {
		for _, c := range tb.Columns {
			if _, ok := row[schema.FieldName(c.Name)]; !ok {
				row[schema.FieldName(c.Name)] = nil
			}
		}
	}
}
