package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"

	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/internal/dbtest"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/source/sqlite"
)

// databusBin is the CLI built once for the subprocess tests.
var databusBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "databus-e2e-")
	if err != nil {
		panic(err)
	}
	databusBin = filepath.Join(dir, "databus")
	build := exec.Command("go", "build", "-o", databusBin, "../cmd/databus")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building databus:", err)
		os.Exit(1)
	}
	code := dbtest.Run(m) // also removes the template data directories of private servers
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("database/sql.(*DB).connectionOpener")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

const testSchema = `
CREATE TABLE acct (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL, note BLOB, txn INTEGER NOT NULL);
CREATE TABLE tag (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, val REAL, txn INTEGER NOT NULL, PRIMARY KEY (k1, k2));`

var testTables = []string{"acct", "tag"}

// newDB creates a SQLite database with the test tables and returns its path
// and a writer pool.
func newDB(t *testing.T) (string, *sql.DB) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	if _, err := db.Exec(testSchema); err != nil {
		t.Fatal(err)
	}
	return path, db
}

// writer makes mixed inserts, updates and deletes over both tables, in
// multi-statement transactions. Every row image a transaction writes carries
// its transaction number in column txn, so tests can check that a
// transaction never spans two windows.
type writer struct {
	db   *sql.DB
	rng  *rand.Rand
	next int64 // next transaction number
}

func newWriter(db *sql.DB, seed uint64) *writer {
	return &writer{db: db, rng: rand.New(rand.NewPCG(seed, seed+1)), next: 1}
}

func (w *writer) txn(ctx context.Context) error {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	n := w.txnNo()
	for i := 1 + w.rng.IntN(5); i > 0; i-- {
		id := w.rng.IntN(200)
		k1, k2 := fmt.Sprintf("k%d", w.rng.IntN(10)), w.rng.IntN(20)-10
		var err error
		switch w.rng.IntN(6) {
		case 0, 1:
			note := make([]byte, w.rng.IntN(40))
			for j := range note {
				note[j] = byte(w.rng.IntN(256))
			}
			_, err = tx.ExecContext(ctx, `INSERT INTO acct(id, owner, balance, note, txn) VALUES (?, ?, ?, ?, ?)
				ON CONFLICT(id) DO UPDATE SET balance = balance + excluded.balance, note = excluded.note, txn = excluded.txn`,
				id, fmt.Sprintf("owner-%d 🚀", id), w.rng.Int64N(1000)-500, note, n)
		case 2:
			_, err = tx.ExecContext(ctx, `UPDATE acct SET balance = (balance * 2) % 1000003, txn = ? WHERE id % 7 = ?`, n, w.rng.IntN(7))
		case 3:
			_, err = tx.ExecContext(ctx, `DELETE FROM acct WHERE id = ?`, id)
		case 4:
			_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO tag(k1, k2, val, txn) VALUES (?, ?, ?, ?)`, k1, k2, w.rng.Float64(), n)
		case 5:
			if w.rng.IntN(2) == 0 {
				_, err = tx.ExecContext(ctx, `DELETE FROM tag WHERE k1 = ?`, k1)
			} else {
				_, err = tx.ExecContext(ctx, `UPDATE tag SET k2 = k2 + 100, txn = ? WHERE k1 = ? AND k2 = ?`, n, k1, k2)
			}
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (w *writer) txnNo() int64 { n := w.next; w.next++; return n }

// run writes n transactions.
func (w *writer) run(ctx context.Context, n int) error {
	for i := 0; i < n; i++ {
		if err := w.txn(ctx); err != nil {
			return fmt.Errorf("transaction %d: %w", i, err)
		}
	}
	return nil
}

// tableState is a table's rows keyed by the rendering of their key.
type tableState map[string]map[string]any

// dbState reads the tables as the consumer should have materialised them.
func dbState(t *testing.T, db *sql.DB) map[string]tableState {
	t.Helper()
	out := map[string]tableState{}
	for _, tbl := range testTables {
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
		rows.Close()
		out["main."+tbl] = st
	}
	return out
}

// materializer is a handler that applies windows to an in-memory copy of
// the tables and records what it saw.
type materializer struct {
	t *testing.T

	mu       sync.Mutex
	tables   map[string]tableState
	scns     []uint64           // windows applied, in order
	txnWins  map[int64][]uint64 // transaction number → windows its row images came in
	events   int
	failures func(w *client.Window) error // optional fault injection, called before applying
	rolled   []uint64
}

func newMaterializer(t *testing.T) *materializer {
	return &materializer{t: t, tables: map[string]tableState{"main.acct": {}, "main.tag": {}}, txnWins: map[int64][]uint64{}}
}

func (m *materializer) OnWindow(ctx context.Context, w *client.Window) error {
	if m.failures != nil {
		if err := m.failures(w); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n := len(m.scns); n > 0 && w.SCN <= m.scns[n-1] {
		m.t.Errorf("window %d arrived after window %d", w.SCN, m.scns[n-1])
	}
	m.scns = append(m.scns, w.SCN)
	for _, e := range w.Events {
		m.events++
		if e.SCN != w.SCN {
			m.t.Errorf("event of scn %d inside window %d", e.SCN, w.SCN)
		}
		kv, err := e.KeyValues()
		if err != nil {
			return err
		}
		st := m.tables[e.Source]
		key := fmt.Sprint(kv...)
		if e.Op == event.OpDelete {
			delete(st, key)
			continue
		}
		row, err := e.Row()
		if err != nil {
			return err
		}
		st[key] = row
		if n, ok := row["txn"].(int64); ok {
			if ws := m.txnWins[n]; len(ws) == 0 || ws[len(ws)-1] != w.SCN {
				m.txnWins[n] = append(ws, w.SCN)
			}
		}
	}
	return nil
}

func (m *materializer) OnRollback(_ context.Context, scn uint64, _ error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rolled = append(m.rolled, scn)
}

func (m *materializer) snapshot() (map[string]tableState, []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]tableState{}
	for name, st := range m.tables {
		c := tableState{}
		for k, v := range st {
			c[k] = v
		}
		out[name] = c
	}
	return out, append([]uint64(nil), m.scns...)
}

// checkWhole fails the test if a transaction's row images came in more
// than one window.
func (m *materializer) checkWhole(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	for n, ws := range m.txnWins {
		if len(ws) > 1 {
			t.Errorf("transaction %d was split across windows %v", n, ws)
		}
	}
}

// waitEqual polls until the materialised copy equals the database, and
// fails with the difference at the deadline.
func waitEqual(t *testing.T, db *sql.DB, m *materializer, timeout time.Duration) {
	t.Helper()
	want := dbState(t, db)
	deadline := time.Now().Add(timeout)
	for {
		got, _ := m.snapshot()
		d := cmp.Diff(want, got, cmpopts.EquateEmpty())
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("materialised copy differs from the database (-db +consumer):\n%s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startRelay runs an in-process relay over a SQLite database.
func startRelay(t *testing.T, dbPath string, maxBytes relay.ByteSize) *relay.Relay {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, err := sqlite.New(sqlite.Config{Path: dbPath, Tables: testTables, PollInterval: 2 * time.Millisecond}, log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: t.TempDir()}
	cfg.Buffer.MaxBytes = maxBytes
	r, err := relay.New(cfg, src, log, prometheus.NewRegistry())
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
	case <-time.After(20 * time.Second):
		t.Fatal("relay did not open its source")
	}
	return r
}

func relayURL(r *relay.Relay) string { return "http://" + r.Addr() }

// running is a client running in the background until the test ends.
type running struct {
	*client.Client
	cancel context.CancelFunc
	done   chan struct{}
	err    error // Run's result, set before done is closed
}

// runClient starts a client in the background; t.Cleanup stops it.
func runClient(t *testing.T, relays []string, h client.Handler, opts ...client.Option) *running {
	t.Helper()
	opts = append([]client.Option{client.WithWait(200 * time.Millisecond), client.WithRetry(5, time.Millisecond, 20*time.Millisecond),
		client.WithRelayRetry(0, 5*time.Millisecond, 200*time.Millisecond)}, opts...)
	c, err := client.New(relays, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Client: c, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = c.Run(ctx)
	}()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop cancels the client and returns Run's error, nil for a cancel.
func (r *running) stop() error {
	r.cancel()
	<-r.done
	if errors.Is(r.err, context.Canceled) {
		return nil
	}
	return r.err
}

// wait returns Run's error if the client stops by itself within d.
func (r *running) wait(d time.Duration) (error, bool) {
	select {
	case <-r.done:
		return r.err, true
	case <-time.After(d):
		return nil, false
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}
