package bootstrap

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/bootstrap/store/sqlitestore"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
	"github.com/databus-go/databus/source/sqlite"
)

func TestMain(m *testing.M) {
	code := dbtest.Run(m)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: level}))
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// --- the SQLite source ---

const sqliteSchema = `
CREATE TABLE acct (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, note BLOB, txn INTEGER NOT NULL);
CREATE TABLE tag (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, val REAL, txn INTEGER NOT NULL, PRIMARY KEY (k1, k2));`

var sqliteTables = []string{"acct", "tag"}

// newSQLiteDB creates the application database with the test tables.
func newSQLiteDB(t *testing.T) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)&_pragma=synchronous(OFF)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(sqliteSchema); err != nil {
		t.Fatal(err)
	}
	return path, db
}

// startRelay runs an in-process relay over src until the test ends.
func startRelay(t testing.TB, src source.Source) *relay.Relay {
	t.Helper()
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: t.TempDir(), ReleaseInterval: 50 * time.Millisecond}
	cfg.Buffer.MaxBytes = 64 << 20
	r, err := relay.New(cfg, src, testLogger(t, slog.LevelWarn), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && ctx.Err() == nil {
			t.Errorf("relay: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("relay stopped before opening its source: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not open its source")
	}
	return r
}

func startSQLiteRelay(t testing.TB, path string) *relay.Relay {
	t.Helper()
	src, err := sqlite.New(sqlite.Config{Path: path, Tables: sqliteTables, PollInterval: 2 * time.Millisecond, HeartbeatInterval: 100 * time.Millisecond},
		testLogger(t, slog.LevelWarn))
	if err != nil {
		t.Fatal(err)
	}
	return startRelay(t, src)
}

func relayURL(r *relay.Relay) string { return "http://" + r.Addr() }

// sqliteWriter makes mixed inserts, updates and deletes (whole-table
// deletes included) over both tables, in multi-statement transactions.
type sqliteWriter struct {
	db  *sql.DB
	rng *rand.Rand
	n   int64
}

func newSQLiteWriter(db *sql.DB, seed uint64) *sqliteWriter {
	return &sqliteWriter{db: db, rng: rand.New(rand.NewPCG(seed, seed+1))}
}

func (w *sqliteWriter) txn(ctx context.Context) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	w.n++
	for i := 1 + w.rng.IntN(4); i > 0; i-- {
		id := w.rng.IntN(150)
		k1, k2 := fmt.Sprintf("k%d", w.rng.IntN(8)), w.rng.IntN(20)-10
		switch w.rng.IntN(12) {
		case 0, 1, 2, 3:
			note := make([]byte, w.rng.IntN(30))
			for j := range note {
				note[j] = byte(w.rng.IntN(256))
			}
			var nv any = note
			if len(note) == 0 {
				nv = nil
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO acct(id, owner, balance, note, txn) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT(id) DO UPDATE SET balance = balance + excluded.balance, note = excluded.note, txn = excluded.txn`,
				id, fmt.Sprintf("owner-%d ✓", id), w.rng.Int64N(1000)-500, nv, w.n)
		case 4:
			_, err = tx.ExecContext(ctx, `UPDATE acct SET balance = (balance * 3) % 1000003, txn = ? WHERE id % 5 = ?`, w.n, w.rng.IntN(5))
		case 5, 6:
			_, err = tx.ExecContext(ctx, `DELETE FROM acct WHERE id = ?`, id)
		case 7, 8, 9:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO tag(k1, k2, val, txn) VALUES (?, ?, ?, ?)`, k1, k2, w.rng.Float64(), w.n)
		case 10:
			_, err = tx.ExecContext(ctx, `UPDATE tag SET k2 = k2 + 100, txn = ? WHERE k1 = ? AND k2 = ?
				AND NOT EXISTS (SELECT 1 FROM tag WHERE k1 = ? AND k2 = ?)`, w.n, k1, k2, k1, k2+100) // a key change
		case 11:
			if w.rng.IntN(8) == 0 {
				_, err = tx.ExecContext(ctx, `DELETE FROM tag`) // the whole table
			} else {
				_, err = tx.ExecContext(ctx, `DELETE FROM tag WHERE k1 = ?`, k1)
			}
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (w *sqliteWriter) run(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		if err := w.txn(ctx); err != nil {
			return fmt.Errorf("transaction %d: %w", i, err)
		}
	}
	return nil
}

// tableState is a table's rows by the rendering of their key; row values
// are as database/sql scans them (SQLite) or normalised (see normalize).
type tableState map[string]map[string]any

// sqliteState reads the test tables as the store should hold them.
func sqliteState(t *testing.T, db *sql.DB) map[string]tableState {
	t.Helper()
	out := map[string]tableState{}
	for _, tbl := range sqliteTables {
		rows, err := db.Query("SELECT * FROM " + tbl)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		st := tableState{}
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			row := map[string]any{}
			for i, c := range cols {
				row[c] = vals[i]
			}
			var key []any
			if tbl == "acct" {
				key = []any{row["id"]}
			} else {
				key = []any{row["k1"], row["k2"]}
			}
			st[fmt.Sprint(key...)] = row
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		rows.Close()
		out["main."+tbl] = st
	}
	return out
}

// --- the store ---

func openStore(t testing.TB, path string) *sqlitestore.Store {
	t.Helper()
	st, err := sqlitestore.Open(path, sqlitestore.Options{Sync: sqlitestore.SyncNormal})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// storeState decodes the store's snapshot at its head into tables, by
// logical source name; tables lists the names to report (possibly empty).
func storeState(t testing.TB, st store.Store, tables []string) (map[string]tableState, uint64) {
	t.Helper()
	ctx := context.Background()
	s, err := st.State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	schemas, err := st.Schemas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	reg := schema.NewRegistry()
	for _, tb := range schemas {
		if _, err := reg.Put(tb); err != nil {
			t.Fatal(err)
		}
	}
	out := map[string]tableState{}
	for _, n := range tables {
		out[n] = tableState{}
	}
	q := store.SnapshotQuery{AsOf: s.Head, MaxRows: 5000, MaxBytes: 16 << 20}
	for {
		page, err := st.Snapshot(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for b := page.Frames; len(b) > 0; {
			e, n, err := event.Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			b = b[n:]
			if e.Kind != event.KindData || e.Op != event.OpInsert || e.HasBefore || e.SCN > s.Head {
				t.Fatalf("snapshot frame %v %v before=%v scn %d (head %d)", e.Kind, e.Op, e.HasBefore, e.SCN, s.Head)
			}
			entry, ok := reg.Get(e.Source, e.SchemaVersion)
			if !ok {
				t.Fatalf("snapshot row of source %d version %d: the store has no such schema", e.Source, e.SchemaVersion)
			}
			st, ok := out[entry.Name]
			if !ok {
				continue
			}
			row, err := entry.Codec.Decode(e.Payload)
			if err != nil {
				t.Fatal(err)
			}
			kv, err := event.DecodeKey(e.Key)
			if err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprint(kv...)
			if _, dup := st[k]; dup {
				t.Fatalf("snapshot holds key %s of %s twice", k, entry.Name)
			}
			st[k] = row
		}
		if page.Next == nil {
			return out, s.Head
		}
		q.After = page.Next
	}
}

// storeLog returns the store's log windows (after, upTo], whole.
func storeLog(t testing.TB, st store.Store, after, upTo uint64) []byte {
	t.Helper()
	var out []byte
	for after < upTo {
		page, err := st.Log(context.Background(), store.LogQuery{After: after, UpTo: upTo, MaxBytes: 16 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if page.Windows == 0 {
			t.Fatalf("store log: no window after %d up to %d", after, upTo)
		}
		out = append(out, page.Frames...)
		after = page.Last
	}
	return out
}

// relayStream returns the windows the relay serves (after, upTo], whole,
// as a plain binary /v1/stream client receives them.
func relayStream(t testing.TB, base string, after, upTo uint64) []byte {
	t.Helper()
	var out []byte
	for after < upTo {
		v := url.Values{}
		v.Set("checkpoint", checkpoint.At(after).String())
		v.Set("maxBytes", strconv.Itoa(16<<20))
		v.Set("wait", "1s")
		v.Set("format", "binary")
		resp, err := http.Get(base + "/v1/stream?" + v.Encode())
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("relay stream after %d: %v %s: %s", after, err, resp.Status, body)
		}
		for len(body) > 0 {
			scn, n := windowAt(t, body)
			if scn > upTo {
				return out
			}
			out = append(out, body[:n]...)
			body = body[n:]
			after = scn
		}
	}
	return out
}

// windowAt returns the SCN and length of the window at the start of b.
func windowAt(t testing.TB, b []byte) (uint64, int) {
	t.Helper()
	off := 0
	for {
		if off >= len(b) {
			t.Fatal("stream ends inside a window")
		}
		h, n := event.PeekHeader(b[off:])
		off += n
		if h.Kind == event.KindEndOfWindow {
			return h.SCN, off
		}
	}
}

// windowSCNs lists the SCNs of the windows in b.
func windowSCNs(t testing.TB, b []byte) []uint64 {
	var out []uint64
	for len(b) > 0 {
		scn, n := windowAt(t, b)
		out = append(out, scn)
		b = b[n:]
	}
	return out
}

// compareLog checks that the store's log (lw, head] is byte for byte what
// the relay serves for the same range.
func compareLog(t testing.TB, st store.Store, base string) {
	t.Helper()
	s, err := st.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := storeLog(t, st, s.LowWatermark, s.Head)
	want := relayStream(t, base, s.LowWatermark, s.Head)
	if !bytes.Equal(got, want) {
		gs, ws := windowSCNs(t, got), windowSCNs(t, want)
		t.Fatalf("the store's log (%d bytes, %d windows) differs from the relay's stream (%d bytes, %d windows) over (%d, %d]; first SCNs %v vs %v",
			len(got), len(gs), len(want), len(ws), s.LowWatermark, s.Head, head(gs, 10), head(ws, 10))
	}
	if uint64(len(windowSCNs(t, got))) != s.Windows {
		t.Errorf("store state says %d windows, its log serves %d", s.Windows, len(windowSCNs(t, got)))
	}
}

func head[T any](s []T, n int) []T {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// waitSame polls until the store's snapshot equals want(), and fails with
// the difference at the deadline.
func waitSame(t testing.TB, st store.Store, want func() map[string]tableState, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		w := want()
		names := make([]string, 0, len(w))
		for n := range w {
			names = append(names, n)
		}
		got, _ := storeState(t, st, names)
		diff := cmp.Diff(w, got, cmpopts.EquateEmpty())
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store's snapshot differs from the source (-source +store):\n%s", diff)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- the producer ---

// running is a Producer running in the background.
type running struct {
	*Producer
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func testConfig(relays ...string) Config {
	return Config{Relays: relays, PurgeInterval: time.Hour}
}

func startProducer(t testing.TB, cfg Config, st store.Store, chunks source.ChunkReader) *running {
	t.Helper()
	p, err := NewProducer(cfg, st, chunks, testLogger(t, testLevel), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return runProducer(t, p)
}

func runProducer(t testing.TB, p *Producer) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Producer: p, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = p.Run(ctx)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels Run and returns its error (nil for the cancel itself).
func (r *running) stop() error {
	r.cancel()
	<-r.done
	if errors.Is(r.err, context.Canceled) {
		return nil
	}
	return r.err
}

// faultyStore fails the Apply calls that fail says so, and passes the
// rest to the real store underneath: a fault-injection wrapper, not a
// stand-in.
type faultyStore struct {
	store.Store
	mu      sync.Mutex
	applies int
	fail    func(n int, b *store.Batch) bool // n counts Apply calls from 1
	failed  int
}

var errInjected = errors.New("injected apply failure")

func (f *faultyStore) Apply(ctx context.Context, b *store.Batch) error {
	f.mu.Lock()
	f.applies++
	bad := f.fail != nil && f.fail(f.applies, b)
	if bad {
		f.failed++
	}
	f.mu.Unlock()
	if bad {
		return errInjected
	}
	return f.Store.Apply(ctx, b)
}

func (f *faultyStore) failures() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

func sortedNames(m map[string]tableState) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// metricValue reads a counter's or gauge's value.
func metricValue(c prometheus.Collector) float64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		panic(fmt.Sprintf("metricValue: %v, %d families", err, len(mfs)))
	}
	m := mfs[0].GetMetric()[0]
	if m.GetCounter() != nil {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

var testLevel = slog.LevelWarn

// histogramSum reads the sum of a histogram's observations.
func histogramSum(c prometheus.Collector) float64 {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
		panic(fmt.Sprintf("histogramSum: %v, %d families", err, len(mfs)))
	}
	return mfs[0].GetMetric()[0].GetHistogram().GetSampleSum()
}
